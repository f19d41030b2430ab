//! Where a quota will stand at the end of its window, and when it runs out.
//!
//! The method (also in docs/analytics.md):
//! 1. `used` is the sum of the window's hours so far.
//! 2. The *observed pace* is the mean of the window's complete hours after
//!    winsorising them at `median + 3 × 1.4826 × MAD` or their 95th percentile,
//!    whichever is larger ([`robust_mean`]): a constant rate gives that rate
//!    exactly, and one spike (or a few) is capped at the typical hour instead of
//!    lifting the pace of the whole remaining window.
//! 3. The *seasonal pace* of a future hour is the median of the same hour of the
//!    week over the [`HISTORY_WEEKS`] weeks before now (at least two of them known):
//!    it carries the diurnal and weekly shape, and the median ignores a spike.
//! 4. Each remaining hour is expected at the mean of the two paces (or whichever
//!    exists; with neither, at the window's average so far). `projected` is `used`
//!    plus the expected remaining hours (the current hour pro rata), and the
//!    exhaustion time is where the running sum crosses the limit, interpolated
//!    within its hour.
//!
//! Everything is in whole UTC hours: a calendar window starts on an hour in every
//! zone whose offset is whole hours.

use std::collections::BTreeMap;

use serde::Serialize;
use tollgate_core::calendar::MS_PER_HOUR;

use crate::rollup::hour_of;

/// Weeks of history the seasonal pace looks at.
pub const HISTORY_WEEKS: i64 = 4;
const MS_PER_WEEK: i64 = 7 * 24 * MS_PER_HOUR;

/// What a forecast needs.
#[derive(Clone, Debug)]
pub struct ForecastInput<'a> {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub now_ms: i64,
    pub limit: u64,
    /// The metric per UTC hour start; hours absent are zero.
    pub hourly: &'a BTreeMap<i64, u64>,
    /// The first hour `hourly` covers (hours before it are unknown, not zero).
    pub known_from_ms: i64,
}

/// The forecast of one quota.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    pub used: u64,
    pub limit: u64,
    /// Expected at the end of the window.
    pub projected: u64,
    /// When the running sum is expected to reach the limit (already reached:
    /// `now`), or `None` if not within the window.
    pub exhausts_at_ms: Option<i64>,
    /// The observed pace per hour (winsorised mean of the window's complete hours).
    pub observed_per_hour: Option<f64>,
    /// Whether a seasonal profile was available.
    pub seasonal: bool,
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// The median and the median absolute deviation.
pub fn median_mad(values: &[f64]) -> (f64, f64) {
    let mut sorted = values.to_vec();
    let m = median(&mut sorted);
    let mut deviations: Vec<f64> = values.iter().map(|v| (v - m).abs()).collect();
    (m, median(&mut deviations))
}

/// The winsorised mean: values above the cap count as the cap. The cap is the larger
/// of `median + 3 × 1.4826 × MAD` (the outlier fence) and the 95th percentile
/// (nearest rank, rounded down): the fence alone is zero whenever more than half the
/// hours are idle (a key that started this week, one used in office hours only), which
/// would cap every busy hour to nothing; the percentile keeps the bulk of the busy
/// hours and still caps the few highest (a spike) at the next value below them.
pub fn robust_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let (m, mad) = median_mad(values);
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() - 1) * 95 / 100;
    let cap = (m + 3.0 * 1.4826 * mad).max(sorted[rank]);
    Some(values.iter().map(|v| v.min(cap)).sum::<f64>() / values.len() as f64)
}

fn value_at(hourly: &BTreeMap<i64, u64>, hour: i64) -> f64 {
    hourly.get(&hour).copied().unwrap_or(0) as f64
}

/// The seasonal pace of `hour`: the median of the same hour-of-week over the last
/// [`HISTORY_WEEKS`] weeks before `current_hour` that are known.
fn seasonal(input: &ForecastInput<'_>, hour: i64, current_hour: i64) -> Option<f64> {
    let mut values = Vec::new();
    // The first week back that is complete (before the current hour).
    let mut k = ((hour - current_hour) / MS_PER_WEEK + 1).max(1);
    while values.len() < HISTORY_WEEKS as usize {
        let past = hour - k * MS_PER_WEEK;
        if past < input.known_from_ms {
            break;
        }
        values.push(value_at(input.hourly, past));
        k += 1;
    }
    (values.len() >= 2).then(|| median(&mut values))
}

pub fn forecast(input: &ForecastInput<'_>) -> Forecast {
    let (start, end, now) = (input.window_start_ms, input.window_end_ms, input.now_ms.min(input.window_end_ms));
    let used: u64 =
        input.hourly.range(hour_of(start)..=now).filter(|(h, _)| **h >= hour_of(start)).map(|(_, v)| *v).sum();
    let current_hour = hour_of(now);
    let complete: Vec<f64> = (0..)
        .map(|i| hour_of(start) + i * MS_PER_HOUR)
        .take_while(|h| *h < current_hour)
        .map(|h| value_at(input.hourly, h))
        .collect();
    let observed = robust_mean(&complete);
    let elapsed_hours = (now - start).max(1) as f64 / MS_PER_HOUR as f64;
    let average = used as f64 / elapsed_hours;
    let mut any_seasonal = false;
    let mut expected_of = |hour: i64| {
        let s = seasonal(input, hour, current_hour);
        any_seasonal |= s.is_some();
        match (observed, s) {
            (Some(o), Some(s)) => (o + s) / 2.0,
            (Some(o), None) => o,
            (None, Some(s)) => s,
            (None, None) => average,
        }
    };
    let limit = input.limit as f64;
    let mut running = used as f64;
    let mut exhausts_at_ms = (used >= input.limit).then_some(input.now_ms);
    let mut at = now;
    while at < end {
        let hour = hour_of(at);
        let next = (hour + MS_PER_HOUR).min(end);
        // The part of this hour still to come, at this hour's expected rate.
        let per_ms = expected_of(hour) / MS_PER_HOUR as f64;
        let add = per_ms * (next - at) as f64;
        if exhausts_at_ms.is_none() && running + add >= limit && per_ms > 0.0 {
            exhausts_at_ms = Some(at + ((limit - running) / per_ms).ceil() as i64);
        }
        running += add;
        at = next;
    }
    Forecast {
        used,
        limit: input.limit,
        projected: running.round() as u64,
        exhausts_at_ms,
        observed_per_hour: observed,
        seasonal: any_seasonal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * MS_PER_HOUR;
    /// A Monday, 00:00 UTC (2026-11-02).
    const START: i64 = 1_793_577_600_000;

    fn series(from: i64, to: i64, f: impl Fn(i64) -> u64) -> BTreeMap<i64, u64> {
        (0..).map(|i| from + i * MS_PER_HOUR).take_while(|h| *h < to).map(|h| (h, f(h))).collect()
    }

    fn month_input(hourly: &BTreeMap<i64, u64>, now: i64, limit: u64, known_from: i64) -> ForecastInput<'_> {
        ForecastInput {
            window_start_ms: START,
            window_end_ms: START + 30 * DAY,
            now_ms: now,
            limit,
            hourly,
            known_from_ms: known_from,
        }
    }

    #[test]
    fn a_constant_rate_predicts_exactly() {
        let now = START + 10 * DAY;
        // With no history (a new project), and with four weeks of the same rate.
        for known_from in [START, START - 28 * DAY] {
            let hourly = series(known_from, now, |_| 100);
            let f = forecast(&month_input(&hourly, now, 1_000_000, known_from));
            assert_eq!(f.used, 100 * 24 * 10);
            assert_eq!(f.projected, 100 * 24 * 30, "known from {known_from}");
            assert_eq!(f.exhausts_at_ms, None);
            // With history, the profile was used (and agreed).
            assert!(f.seasonal || known_from == START);
        }
        // A limit reached at day 20 at that pace.
        let hourly = series(START, now, |_| 100);
        let f = forecast(&month_input(&hourly, now, 100 * 24 * 20, START));
        assert_eq!(f.exhausts_at_ms, Some(START + 20 * DAY));
    }

    #[test]
    fn a_spike_does_not_make_the_projection_explode() {
        let now = START + 10 * DAY;
        let spike_hour = START + 3 * DAY + 5 * MS_PER_HOUR;
        let hourly = series(START - 28 * DAY, now, |h| if h == spike_hour { 100_000 } else { 100 });
        let f = forecast(&month_input(&hourly, now, u64::MAX, START - 28 * DAY));
        // The spike is counted once in what was used, and not extrapolated.
        assert_eq!(f.used, 100 * 24 * 10 - 100 + 100_000);
        assert_eq!(f.projected, f.used + 100 * 24 * 20);
        // A naive mean would have projected about three times the spike more.
        let naive = f.used as f64 / 240.0 * 720.0;
        assert!((f.projected as f64) < naive * 0.5, "{} vs naive {naive}", f.projected);
    }

    #[test]
    fn a_key_idle_most_hours_keeps_its_pace() {
        // Idle for two days, then 400 an hour for a day (a key that started this week):
        // most hours are zero, yet the pace is the window's average, not zero.
        let now = START + 3 * DAY;
        let hourly = series(START, now, |h| if h >= START + 2 * DAY { 400 } else { 0 });
        let f = forecast(&month_input(&hourly, now, 10_000, START));
        assert_eq!(f.used, 9_600);
        assert_eq!(f.observed_per_hour, Some(9_600.0 / 72.0));
        assert_eq!(f.projected, 9_600 * 10);
        assert_eq!(f.exhausts_at_ms, Some(now + 3 * MS_PER_HOUR));
        // Office hours only (8 of 24 hours busy): the same.
        let office = |h: i64| if (9..17).contains(&((h / MS_PER_HOUR) % 24)) { 1_000 } else { 0 };
        let hourly = series(START, START + 10 * DAY, office);
        let f = forecast(&month_input(&hourly, START + 10 * DAY, u64::MAX, START));
        assert_eq!(f.projected, 8_000 * 30);
        // A spike among few hours is still capped at the next value below it.
        assert_eq!(robust_mean(&[100.0, 100.0, 100.0, 100_000.0]), Some(100.0));
    }

    #[test]
    fn the_seasonal_profile_carries_the_daily_shape() {
        // Busy in UTC hours 9-17 (1000/h), quiet otherwise (10/h), for five weeks.
        let shape = |h: i64| if (9..17).contains(&((h / MS_PER_HOUR) % 24)) { 1_000 } else { 10 };
        let now = START + 9 * MS_PER_HOUR; // a day window, at 09:00
        let hourly = series(START - 28 * DAY, now, shape);
        let input = ForecastInput {
            window_start_ms: START,
            window_end_ms: START + DAY,
            now_ms: now,
            limit: u64::MAX,
            hourly: &hourly,
            known_from_ms: START - 28 * DAY,
        };
        let f = forecast(&input);
        let truth: u64 = (0..24).map(|i| shape(START + i * MS_PER_HOUR)).sum();
        // Only the quiet night was seen; the pace alone would expect 10/h for the day.
        // Blended with the profile, the projection lands within a factor of two.
        assert_eq!(f.used, 90);
        assert!(f.projected > truth / 2 && f.projected <= truth, "{} vs {truth}", f.projected);
    }

    #[test]
    fn an_exceeded_quota_is_exhausted_now_and_nothing_used_never_runs_out() {
        let now = START + DAY;
        let hourly = series(START, now, |_| 10);
        let f = forecast(&month_input(&hourly, now, 100, START));
        assert_eq!(f.exhausts_at_ms, Some(now));
        let empty = BTreeMap::new();
        let f = forecast(&month_input(&empty, now, 100, START));
        assert_eq!((f.used, f.projected, f.exhausts_at_ms), (0, 0, None));
    }
}
