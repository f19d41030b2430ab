//! Hours far from their usual level.
//!
//! The baseline of an hour is the same hour of the week over the previous `weeks`
//! weeks: its median `m` and median absolute deviation `MAD`. The score is the
//! robust z-score `(observed - m) / σ` with `σ = max(1.4826 × MAD, √max(m, 1))`: the
//! square root is the noise of a count around `m` (Poisson), so a perfectly steady
//! baseline (MAD 0) does not make every wobble infinite. An hour is an anomaly when
//! `|score| >= threshold` and the larger of observed and baseline is at least
//! `min_volume`, so three requests instead of one is never an alarm. Drops (negative
//! scores) are reported too: an outage looks like one.
//!
//! A subject is scored only against weeks it existed in: the weeks before its
//! first recorded hour in the series are no baseline (zeros there would make every
//! busy hour of a new key or project an anomaly), and an hour with fewer than
//! [`MIN_BASELINE_WEEKS`] weeks of baseline is not scored.

use std::collections::BTreeMap;

use serde::Serialize;
use tollgate_core::calendar::MS_PER_HOUR;

use crate::forecast::median_mad;

const MS_PER_WEEK: i64 = 7 * 24 * MS_PER_HOUR;

/// The fewest weeks of baseline an hour is scored against (fewer when `weeks` is
/// smaller): one week alone has no spread, so any change would score as noise-free.
pub const MIN_BASELINE_WEEKS: i64 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalySettings {
    pub weeks: i64,
    pub threshold: f64,
    pub min_volume: u64,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        Self { weeks: 4, threshold: 4.0, min_volume: 50 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Anomaly {
    pub hour_ms: i64,
    pub observed: u64,
    /// The median of the same hour over the previous weeks.
    pub baseline: f64,
    pub mad: f64,
    pub score: f64,
}

/// The anomalous hours in `[from_ms, to_ms)` of an hourly series (absent hours are
/// zero); `hourly` must cover `weeks` weeks before `from_ms`. Its first hour is taken
/// as the subject's first: earlier weeks are no baseline (see the module's docs).
pub fn detect(hourly: &BTreeMap<i64, u64>, from_ms: i64, to_ms: i64, settings: &AnomalySettings) -> Vec<Anomaly> {
    let Some(first) = hourly.keys().next().map(|h| crate::rollup::hour_of(*h)) else { return Vec::new() };
    let value = |h: i64| hourly.get(&h).copied().unwrap_or(0);
    let weeks = settings.weeks.max(1);
    let least = weeks.min(MIN_BASELINE_WEEKS);
    let mut found = Vec::new();
    let mut history = Vec::with_capacity(usize::try_from(weeks).unwrap_or(0));
    let mut hour = crate::rollup::hour_of(from_ms);
    while hour < to_ms {
        let observed = value(hour);
        history.clear();
        history.extend((1..=weeks).map(|k| hour - k * MS_PER_WEEK).filter(|h| *h >= first).map(|h| value(h) as f64));
        if (history.len() as i64) < least {
            hour += MS_PER_HOUR;
            continue;
        }
        let (baseline, mad) = median_mad(&history);
        let sigma = (1.4826 * mad).max(baseline.max(1.0).sqrt());
        let score = (observed as f64 - baseline) / sigma;
        let volume = (observed as f64).max(baseline);
        if score.abs() >= settings.threshold && volume >= settings.min_volume as f64 {
            found.push(Anomaly { hour_ms: hour, observed, baseline, mad, score: (score * 100.0).round() / 100.0 });
        }
        hour += MS_PER_HOUR;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: i64 = 1_793_577_600_000;

    fn weeks_of(value: impl Fn(i64) -> u64, weeks: i64) -> BTreeMap<i64, u64> {
        (0..weeks * 168).map(|i| START + i * MS_PER_HOUR).map(|h| (h, value(h))).collect()
    }

    fn last_week(settings: &AnomalySettings, hourly: &BTreeMap<i64, u64>) -> Vec<Anomaly> {
        detect(hourly, START + 4 * MS_PER_WEEK, START + 5 * MS_PER_WEEK, settings)
    }

    #[test]
    fn a_spike_is_found_with_its_baseline_and_score() {
        let spike = START + 4 * MS_PER_WEEK + 30 * MS_PER_HOUR;
        let noisy = |h: i64| 200 + ((h / MS_PER_HOUR) % 7) as u64 * 5;
        let hourly = weeks_of(|h| if h == spike { 2_000 } else { noisy(h) }, 5);
        let found = last_week(&AnomalySettings::default(), &hourly);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].hour_ms, spike);
        assert_eq!(found[0].observed, 2_000);
        assert!(found[0].score > 10.0);
    }

    #[test]
    fn a_steady_or_diurnal_series_has_none() {
        let diurnal = |h: i64| if (9..17).contains(&((h / MS_PER_HOUR) % 24)) { 5_000 } else { 40 };
        assert!(last_week(&AnomalySettings::default(), &weeks_of(diurnal, 5)).is_empty());
    }

    #[test]
    fn small_numbers_are_no_alarm() {
        // One request an hour, then three: three times the baseline, but tiny.
        let at = START + 4 * MS_PER_WEEK + 3 * MS_PER_HOUR;
        let hourly = weeks_of(|h| if h == at { 3 } else { 1 }, 5);
        assert!(last_week(&AnomalySettings::default(), &hourly).is_empty());
        // The same shape at a volume that matters is found.
        let hourly = weeks_of(|h| if h == at { 3_000 } else { 1_000 }, 5);
        assert_eq!(last_week(&AnomalySettings::default(), &hourly).len(), 1);
    }

    #[test]
    fn a_new_subject_is_scored_only_against_the_weeks_it_existed() {
        // A key that started one week before the range: busy hours, no spike. Against
        // four weeks of which three are zeros, every busy hour would be an anomaly.
        let started = START + 3 * MS_PER_WEEK;
        let busy = |h: i64| if h >= started { 400 + ((h / MS_PER_HOUR) % 5) as u64 * 10 } else { 0 };
        let new_key: BTreeMap<i64, u64> = weeks_of(busy, 5).into_iter().filter(|(h, _)| *h >= started).collect();
        assert!(last_week(&AnomalySettings::default(), &new_key).is_empty(), "one week of baseline: not scored");
        // Two weeks of history: scored, and a spike is found.
        let started = START + 2 * MS_PER_WEEK;
        let spike = START + 4 * MS_PER_WEEK + 40 * MS_PER_HOUR;
        let two_weeks: BTreeMap<i64, u64> = weeks_of(|h| if h == spike { 5_000 } else { busy(h).max(400) }, 5)
            .into_iter()
            .filter(|(h, _)| *h >= started)
            .collect();
        let found = last_week(&AnomalySettings::default(), &two_weeks);
        assert_eq!(found.iter().map(|a| a.hour_ms).collect::<Vec<_>>(), vec![spike], "{found:?}");
        // With one week asked for, one week is enough.
        let one = AnomalySettings { weeks: 1, ..AnomalySettings::default() };
        let spiky_new: BTreeMap<i64, u64> =
            new_key.iter().map(|(h, v)| (*h, if *h == spike { 5_000 } else { *v })).collect();
        assert_eq!(last_week(&one, &spiky_new).iter().map(|a| a.hour_ms).collect::<Vec<_>>(), vec![spike]);
        assert!(detect(&BTreeMap::new(), START, START + MS_PER_WEEK, &one).is_empty());
    }

    #[test]
    fn an_outage_is_a_negative_anomaly() {
        let at = START + 4 * MS_PER_WEEK + 50 * MS_PER_HOUR;
        let hourly = weeks_of(|h| if h == at { 0 } else { 500 }, 5);
        let found = last_week(&AnomalySettings::default(), &hourly);
        assert_eq!(found.len(), 1);
        assert!(found[0].score < -4.0);
    }
}
