//! The time zone of calendar windows: a day quota resets at local midnight, a month
//! quota on the first of the month at local midnight.
//!
//! A [`Zone`] is UTC (the default, no allocation, pure arithmetic) or an IANA zone
//! from the time zone database compiled into the binary (jiff's bundled tzdb, so a
//! deployment's `/usr/share/zoneinfo` does not change answers). Window bounds are
//! computed here, in Rust, for every backend: the Redis scripts receive them as
//! numbers and do no calendar arithmetic of their own.
//!
//! Days in a zone with daylight saving are 23 or 25 hours long on the switch days;
//! where local midnight does not exist (a switch at 00:00), the day starts at the
//! first instant after the gap. Bounds are always whole quarter hours in UTC for
//! every zone in use today, which the ledger replay's 15-minute buckets rely on.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::calendar::{self, MS_PER_DAY, MS_PER_SECOND};
use crate::limit::Window;

/// The longest zone name accepted (the longest in the tz database is 32).
const MAX_NAME: usize = 64;

/// UTC or an IANA time zone. Cheap to clone (an `Arc`); compares by name.
#[derive(Clone, Default)]
pub struct Zone(Option<Arc<Named>>);

struct Named {
    name: Box<str>,
    tz: jiff::tz::TimeZone,
}

/// Why a zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown time zone {0:?}: use an IANA name such as \"Europe/Paris\" or \"UTC\"")]
pub struct UnknownZone(pub String);

impl Zone {
    pub const UTC: Zone = Zone(None);

    /// Looks `name` up in the bundled tz database. `UTC`, `Etc/UTC` and `Z` give
    /// [`Zone::UTC`].
    pub fn parse(name: &str) -> Result<Zone, UnknownZone> {
        let name = name.trim();
        if matches!(name, "UTC" | "Etc/UTC" | "Z" | "utc") {
            return Ok(Zone::UTC);
        }
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(UnknownZone(name.chars().take(MAX_NAME).collect()));
        }
        let tz = jiff::tz::db().get(name).map_err(|_| UnknownZone(name.to_owned()))?;
        let canonical = tz.iana_name().unwrap_or(name);
        Ok(Zone(Some(Arc::new(Named { name: canonical.into(), tz }))))
    }

    pub fn name(&self) -> &str {
        self.0.as_ref().map_or("UTC", |n| &n.name)
    }

    pub fn is_utc(&self) -> bool {
        self.0.is_none()
    }

    /// `[start, end)` of the calendar window of `window` (day or month) containing
    /// `ms`, in this zone. Minute and hour are treated as days, so the function is
    /// total.
    pub fn bounds(&self, window: Window, ms: i64) -> (i64, i64) {
        let Some(named) = &self.0 else { return utc_bounds(window, ms) };
        let offset_ms = offset_ms(&named.tz, ms);
        let local_days = (ms + offset_ms).div_euclid(MS_PER_DAY);
        let (start_days, end_days) = match window {
            Window::Month => {
                let (y, m, _) = calendar::civil_from_days(local_days);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (calendar::days_from_civil(y, m, 1), calendar::days_from_civil(ny, nm, 1))
            }
            Window::Day | Window::Minute | Window::Hour => (local_days, local_days + 1),
        };
        let start = local_midnight(&named.tz, start_days).unwrap_or_else(|| utc_bounds(window, ms).0);
        let end = local_midnight(&named.tz, end_days).unwrap_or_else(|| utc_bounds(window, ms).1);
        // Never an empty or inverted window, whatever the database says.
        if start <= ms && ms < end { (start, end) } else { utc_bounds(window, ms) }
    }

    /// The window before and the window after the one containing `ms`, as four
    /// consecutive edges `[e0, e1, e2, e3]`: `[e1, e2)` contains `ms`. For a backend
    /// that decides on a clock of its own (Redis's `TIME`), so that it can pick the
    /// window its clock is in when it differs a little from the caller's.
    pub fn edges(&self, window: Window, ms: i64) -> [i64; 4] {
        let (start, end) = self.bounds(window, ms);
        let (before, _) = self.bounds(window, start - 1);
        let (_, after) = self.bounds(window, end);
        [before, start, end, after]
    }

    /// Whether usage at `at_ms` still counts in `window` as it stands at `now_ms`
    /// (see [`counts_now`](crate::counter::counts_now)), in this zone.
    pub fn counts_now(&self, window: Window, at_ms: i64, now_ms: i64) -> bool {
        let at_ms = at_ms.min(now_ms);
        match window.sliding_ms() {
            Some(length) => at_ms > now_ms - length,
            None => at_ms >= self.bounds(window, now_ms).0,
        }
    }
}

fn utc_bounds(window: Window, ms: i64) -> (i64, i64) {
    match window {
        Window::Month => (calendar::month_start(ms), calendar::next_month_start(ms)),
        Window::Day | Window::Minute | Window::Hour => {
            let start = calendar::day_start(ms);
            (start, start + MS_PER_DAY)
        }
    }
}

/// The zone's UTC offset at the instant `ms`, in milliseconds (0 outside jiff's range).
fn offset_ms(tz: &jiff::tz::TimeZone, ms: i64) -> i64 {
    jiff::Timestamp::from_millisecond(ms).map(|ts| i64::from(tz.to_offset(ts).seconds()) * MS_PER_SECOND).unwrap_or(0)
}

/// The first instant of the local day `days` (since 1970-01-01) in `tz`: local
/// midnight, or the end of the gap when midnight falls in a daylight-saving gap.
fn local_midnight(tz: &jiff::tz::TimeZone, days: i64) -> Option<i64> {
    let (y, m, d) = calendar::civil_from_days(days);
    let date = jiff::civil::Date::new(i16::try_from(y).ok()?, i8::try_from(m).ok()?, i8::try_from(d).ok()?).ok()?;
    let ts = tz.to_ambiguous_timestamp(date.to_datetime(jiff::civil::Time::midnight())).compatible().ok()?;
    Some(ts.as_millisecond())
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.name == b.name,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl std::hash::Hash for Zone {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({})", self.name())
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Zone {
    type Err = UnknownZone;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Zone::parse(s)
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Zone::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{parse_timestamp, to_rfc3339};

    fn at(text: &str) -> i64 {
        parse_timestamp(text).unwrap()
    }

    fn bounds(zone: &str, window: Window, text: &str) -> (String, String) {
        let (s, e) = Zone::parse(zone).unwrap().bounds(window, at(text));
        (to_rfc3339(s), to_rfc3339(e))
    }

    #[test]
    fn utc_is_the_default_and_matches_the_plain_arithmetic() {
        assert!(Zone::default().is_utc());
        assert_eq!(Zone::parse("Etc/UTC").unwrap(), Zone::UTC);
        let t = at("2026-02-28T23:59:59.999Z");
        assert_eq!(Zone::UTC.bounds(Window::Month, t), (calendar::month_start(t), calendar::next_month_start(t)));
    }

    #[test]
    fn local_midnight_in_a_half_hour_zone() {
        // Kolkata is UTC+05:30 all year: its day starts at 18:30 UTC the day before.
        assert_eq!(
            bounds("Asia/Kolkata", Window::Day, "2026-12-01T20:00:00Z"),
            ("2026-12-01T18:30:00.000Z".into(), "2026-12-02T18:30:00.000Z".into())
        );
        assert_eq!(
            bounds("Asia/Kolkata", Window::Month, "2026-11-30T19:00:00Z"),
            ("2026-11-30T18:30:00.000Z".into(), "2026-12-31T18:30:00.000Z".into())
        );
    }

    #[test]
    fn daylight_saving_days_are_23_and_25_hours() {
        // New York springs forward on 2026-03-08 and falls back on 2026-11-01.
        assert_eq!(
            bounds("America/New_York", Window::Day, "2026-03-08T12:00:00Z"),
            ("2026-03-08T05:00:00.000Z".into(), "2026-03-09T04:00:00.000Z".into())
        );
        assert_eq!(
            bounds("America/New_York", Window::Day, "2026-11-01T12:00:00Z"),
            ("2026-11-01T04:00:00.000Z".into(), "2026-11-02T05:00:00.000Z".into())
        );
        // A zone behind UTC is still in the previous month at 05:00 UTC on the 1st.
        assert_eq!(
            bounds("America/Los_Angeles", Window::Month, "2026-12-01T05:00:00Z"),
            ("2026-11-01T07:00:00.000Z".into(), "2026-12-01T08:00:00.000Z".into())
        );
    }

    #[test]
    fn a_midnight_gap_starts_the_day_after_it() {
        // Santiago skips 00:00-01:00 local on its spring-forward day (2026-09-06).
        let (start, end) = Zone::parse("America/Santiago").unwrap().bounds(Window::Day, at("2026-09-06T12:00:00Z"));
        assert_eq!(to_rfc3339(start), "2026-09-06T04:00:00.000Z");
        assert_eq!(end - start, 23 * crate::calendar::MS_PER_HOUR);
    }

    #[test]
    fn edges_are_consecutive_windows() {
        let zone = Zone::parse("Europe/Paris").unwrap();
        let t = at("2026-10-25T12:00:00Z");
        let [e0, e1, e2, e3] = zone.edges(Window::Day, t);
        assert!(e0 < e1 && e1 <= t && t < e2 && e2 < e3);
        assert_eq!(zone.bounds(Window::Day, e0), (e0, e1));
        assert_eq!(zone.bounds(Window::Day, e2), (e2, e3));
    }

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        let zone: Zone = serde_json::from_str("\"Asia/Tokyo\"").unwrap();
        assert_eq!(serde_json::to_string(&zone).unwrap(), "\"Asia/Tokyo\"");
        assert_eq!(zone.name(), "Asia/Tokyo");
        assert!(serde_json::from_str::<Zone>("\"Mars/Olympus_Mons\"").is_err());
        assert!(Zone::parse("").is_err());
        assert!(Zone::parse(&"A".repeat(1000)).is_err());
        assert!(Zone::parse("../../etc/passwd").is_err());
    }
}
