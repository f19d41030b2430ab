//! IANA time zones (jiff, with its time zone database compiled in, so a zone name
//! means the same on every machine), and the local calendar over UTC hours.
//!
//! Rollups are per UTC hour; a local day is the set of hours that start within it.
//! For zones whose offset is a whole number of hours (almost all) that is exact; for
//! the few with a half or quarter hour offset an hour is counted in the local day it
//! starts in.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};
use tollgate_core::calendar::MS_PER_HOUR;

/// A checked time zone.
#[derive(Clone, Debug)]
pub struct Zone {
    name: String,
    tz: TimeZone,
}

impl Zone {
    pub fn utc() -> Self {
        Self { name: "UTC".to_owned(), tz: TimeZone::UTC }
    }

    /// An IANA name (`Europe/Paris`, `UTC`), or `None` if unknown.
    pub fn parse(name: &str) -> Option<Self> {
        if name.is_empty() || name.len() > 64 {
            return None;
        }
        let tz = TimeZone::get(name).ok()?;
        Some(Self { name: name.to_owned(), tz })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn zoned(&self, ms: i64) -> Option<Zoned> {
        Some(Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone()))
    }

    /// The start (UTC ms) of the local day holding `ms`.
    pub fn day_start(&self, ms: i64) -> i64 {
        self.zoned(ms).and_then(|z| z.start_of_day().ok()).map_or(ms, |z| z.timestamp().as_millisecond())
    }

    /// The start of the local day after the one holding `ms` (23 or 25 hours later
    /// across a daylight-saving change).
    pub fn next_day_start(&self, ms: i64) -> i64 {
        self.zoned(ms)
            .and_then(|z| z.start_of_day().ok())
            .and_then(|z| z.checked_add(1.day()).ok())
            .and_then(|z| z.start_of_day().ok())
            .map_or(ms + 24 * MS_PER_HOUR, |z| z.timestamp().as_millisecond())
    }

    /// The start of the local month holding `ms`.
    pub fn month_start(&self, ms: i64) -> i64 {
        self.zoned(ms)
            .and_then(|z| z.first_of_month().ok())
            .and_then(|z| z.start_of_day().ok())
            .map_or(ms, |z| z.timestamp().as_millisecond())
    }

    /// The start of the local month after the one holding `ms`.
    pub fn next_month_start(&self, ms: i64) -> i64 {
        self.zoned(ms)
            .and_then(|z| z.first_of_month().ok())
            .and_then(|z| z.checked_add(1.month()).ok())
            .and_then(|z| z.start_of_day().ok())
            .map_or(ms + 31 * 24 * MS_PER_HOUR, |z| z.timestamp().as_millisecond())
    }

    /// The local date and time of `ms` in RFC 3339 with its offset.
    pub fn rfc3339(&self, ms: i64) -> String {
        match self.zoned(ms) {
            Some(z) => z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
            None => ms.to_string(),
        }
    }
}

/// The starts of the buckets covering `[from_ms, to_ms)`: UTC hours, or local days.
pub fn bucket_starts(zone: &Zone, from_ms: i64, to_ms: i64, days: bool) -> Vec<i64> {
    let mut starts = Vec::new();
    if days {
        let mut at = zone.day_start(from_ms);
        while at < to_ms {
            starts.push(at);
            let next = zone.next_day_start(at);
            if next <= at {
                break;
            }
            at = next;
        }
    } else {
        let mut at = crate::rollup::hour_of(from_ms);
        while at < to_ms {
            starts.push(at);
            at += MS_PER_HOUR;
        }
    }
    starts
}

/// The index in `starts` (ascending) of the bucket holding `ms`, if any.
pub fn bucket_index(starts: &[i64], ms: i64) -> Option<usize> {
    let i = starts.partition_point(|&s| s <= ms);
    i.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::calendar::parse_timestamp;

    fn at(text: &str) -> i64 {
        parse_timestamp(text).expect("timestamp")
    }

    #[test]
    fn names_are_checked() {
        assert!(Zone::parse("Europe/Paris").is_some());
        assert!(Zone::parse("UTC").is_some());
        assert!(Zone::parse("Mars/Olympus").is_none());
        assert!(Zone::parse("").is_none());
    }

    #[test]
    fn local_days_follow_the_offset_and_daylight_saving() {
        let paris = Zone::parse("Europe/Paris").expect("zone");
        // 23:30 UTC on 14 June is 01:30 in Paris on the 15th.
        assert_eq!(paris.day_start(at("2026-06-14T23:30:00Z")), at("2026-06-14T22:00:00Z"));
        // 29 March 2026 (spring forward) has 23 hours in Paris.
        let day = at("2026-03-28T23:00:00Z");
        assert_eq!(paris.next_day_start(day) - day, 23 * MS_PER_HOUR);
        assert_eq!(paris.month_start(at("2026-03-15T12:00:00Z")), at("2026-02-28T23:00:00Z"));
        assert_eq!(paris.next_month_start(at("2026-03-15T12:00:00Z")), at("2026-03-31T22:00:00Z"));
        let days = bucket_starts(&paris, at("2026-03-28T23:00:00Z"), at("2026-03-30T22:00:00Z"), true);
        assert_eq!(days, vec![at("2026-03-28T23:00:00Z"), at("2026-03-29T22:00:00Z")]);
        assert_eq!(bucket_index(&days, at("2026-03-29T21:59:00Z")), Some(0));
        assert_eq!(bucket_index(&days, at("2026-03-28T22:59:00Z")), None);
    }
}
