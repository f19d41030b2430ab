//! The parameters of the analytics API, checked: ranges, granularities, metrics,
//! dimensions, time zones. Each failure names the parameter it is about, so the
//! server answers a 400 that says which one.

use std::fmt;

use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, parse_timestamp};

use crate::rollup::{RollupValues, hour_of};
use crate::store::{Dimension, Sums};
use crate::zone::Zone;

/// A parameter that does not parse or does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self { param, message: message.into() }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.param, self.message)
    }
}

impl std::error::Error for ParamError {}

/// A checked range of whole UTC hours, `[from_ms, to_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// Parses `from` and `to` (RFC 3339 or Unix seconds; `to` defaults to now and
/// `from` to `default_span_ms` before `to`), rounds them out to whole hours and
/// checks that `from < to` and that the range is at most `max_span_ms`.
pub fn parse_range(
    from: Option<&str>,
    to: Option<&str>,
    now_ms: i64,
    default_span_ms: i64,
    max_span_ms: i64,
) -> Result<Range, ParamError> {
    let time = |param: &'static str, text: &str| {
        parse_timestamp(text).ok_or_else(|| ParamError::new(param, "must be an RFC 3339 time or Unix seconds"))
    };
    let to_ms = match to {
        Some(text) => time("to", text)?,
        None => now_ms,
    };
    let from_ms = match from {
        Some(text) => time("from", text)?,
        None => to_ms - default_span_ms,
    };
    if from_ms >= to_ms {
        return Err(ParamError::new("from", "must be before `to`"));
    }
    let (from_ms, to_ms) = (hour_of(from_ms), hour_of(to_ms + MS_PER_HOUR - 1));
    if to_ms - from_ms > max_span_ms {
        return Err(ParamError::new(
            "to",
            format!("the range is longer than the maximum of {} days", max_span_ms / MS_PER_DAY),
        ));
    }
    Ok(Range { from_ms, to_ms })
}

pub fn parse_zone(tz: Option<&str>) -> Result<Zone, ParamError> {
    match tz {
        None => Ok(Zone::utc()),
        Some(name) => Zone::parse(name).ok_or_else(|| ParamError::new("tz", format!("unknown time zone '{name}'"))),
    }
}

pub fn parse_dimension(param: &'static str, text: &str) -> Result<Dimension, ParamError> {
    Dimension::parse(text).ok_or_else(|| {
        let known: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
        ParamError::new(param, format!("unknown dimension '{text}' (one of {})", known.join(", ")))
    })
}

/// Hour or (local) day buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

pub fn parse_granularity(text: Option<&str>) -> Result<Granularity, ParamError> {
    match text {
        None | Some("hour") => Ok(Granularity::Hour),
        Some("day") => Ok(Granularity::Day),
        Some(other) => Err(ParamError::new("granularity", format!("must be hour or day, not '{other}'"))),
    }
}

pub fn parse_top(text: Option<&str>, default: usize) -> Result<usize, ParamError> {
    match text {
        None => Ok(default),
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ParamError::new("top", "must be an integer from 1 to 100")),
        },
    }
}

/// What a time series plots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SeriesMetric {
    Requests,
    InputTokens,
    OutputTokens,
    CachedTokens,
    TotalTokens,
    CostMicros,
    SavedMicros,
    /// The share of requests answered with a 4xx or 5xx status.
    ErrorRate,
    /// A latency quantile (0.5 for p50) in milliseconds.
    Latency(f64),
}

impl SeriesMetric {
    pub const NAMES: &'static str = "requests, input_tokens, output_tokens, cached_tokens, total_tokens, \
                                     cost_micros, saved_micros, error_rate, latency_p50, latency_p95, latency_p99";

    pub fn parse(text: &str) -> Result<Self, ParamError> {
        Ok(match text {
            "requests" => SeriesMetric::Requests,
            "input_tokens" => SeriesMetric::InputTokens,
            "output_tokens" => SeriesMetric::OutputTokens,
            "cached_tokens" => SeriesMetric::CachedTokens,
            "total_tokens" => SeriesMetric::TotalTokens,
            "cost_micros" => SeriesMetric::CostMicros,
            "saved_micros" => SeriesMetric::SavedMicros,
            "error_rate" => SeriesMetric::ErrorRate,
            "latency_p50" => SeriesMetric::Latency(0.5),
            "latency_p95" => SeriesMetric::Latency(0.95),
            "latency_p99" => SeriesMetric::Latency(0.99),
            other => {
                return Err(ParamError::new("metric", format!("unknown metric '{other}' (one of {})", Self::NAMES)));
            }
        })
    }

    /// The metric of summed values, for the additive metrics (`None` for rates and
    /// quantiles, which [`Bucket`] computes).
    pub fn additive(self, v: &RollupValues) -> Option<u64> {
        Some(match self {
            SeriesMetric::Requests => v.requests,
            SeriesMetric::InputTokens => v.input_tokens,
            SeriesMetric::OutputTokens => v.output_tokens,
            SeriesMetric::CachedTokens => v.cached_tokens,
            SeriesMetric::TotalTokens => v.total_tokens(),
            SeriesMetric::CostMicros => v.cost_micros,
            SeriesMetric::SavedMicros => v.saved_micros(),
            SeriesMetric::ErrorRate | SeriesMetric::Latency(_) => return None,
        })
    }

    /// The value columns its series reads: the metric's own, and the requests (the
    /// series of a non-additive metric are ranked by them; an error rate divides by
    /// them).
    pub fn sums(self) -> Sums {
        let own = match self {
            SeriesMetric::Requests | SeriesMetric::ErrorRate => Sums::REQUESTS,
            SeriesMetric::InputTokens
            | SeriesMetric::OutputTokens
            | SeriesMetric::CachedTokens
            | SeriesMetric::TotalTokens => Sums::TOKENS,
            SeriesMetric::CostMicros | SeriesMetric::SavedMicros => Sums::COST,
            SeriesMetric::Latency(_) => Sums::LATENCY,
        };
        own.union(Sums::REQUESTS)
    }
}

/// The values of one bucket of a series: everything summed, and the requests that
/// failed (for the error rate).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bucket {
    pub values: RollupValues,
    pub failed_requests: u64,
}

impl Bucket {
    pub fn add(&mut self, values: &RollupValues, status_class: Option<u16>) {
        self.values.merge(values);
        if status_class.is_some_and(|c| c >= 4) {
            self.failed_requests = self.failed_requests.saturating_add(values.requests);
        }
    }

    /// The metric's value (a JSON number), `None` where it is undefined (a rate or
    /// quantile of nothing).
    pub fn value(&self, metric: SeriesMetric) -> Option<f64> {
        match metric {
            SeriesMetric::ErrorRate => {
                (self.values.requests > 0).then(|| self.failed_requests as f64 / self.values.requests as f64)
            }
            SeriesMetric::Latency(q) => self.values.latency_quantile(q).map(|v| v as f64),
            additive => additive.additive(&self.values).map(|v| v as f64),
        }
    }
}

/// The value columns [`limit_metric_value`] reads for `metric`.
pub fn limit_metric_sums(metric: tollgate_core::Metric) -> Sums {
    match metric {
        tollgate_core::Metric::Requests => Sums::REQUESTS,
        tollgate_core::Metric::InputTokens
        | tollgate_core::Metric::OutputTokens
        | tollgate_core::Metric::TotalTokens => Sums::TOKENS,
        tollgate_core::Metric::CostMicros => Sums::COST,
    }
}

/// Which limit metric a quota counts, read from summed rollups.
pub fn limit_metric_value(metric: tollgate_core::Metric, v: &RollupValues) -> u64 {
    match metric {
        tollgate_core::Metric::Requests => v.requests,
        tollgate_core::Metric::InputTokens => v.input_tokens,
        tollgate_core::Metric::OutputTokens => v.output_tokens,
        tollgate_core::Metric::TotalTokens => v.total_tokens(),
        tollgate_core::Metric::CostMicros => v.cost_micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;
    const MAX: i64 = 90 * MS_PER_DAY;

    #[test]
    fn ranges_round_out_to_hours_and_are_checked() {
        let r = parse_range(Some("2026-01-01T10:30:00Z"), Some("2026-01-01T12:10:00Z"), NOW, MS_PER_DAY, MAX)
            .expect("range");
        assert_eq!(r.to_ms - r.from_ms, 3 * MS_PER_HOUR);
        let default = parse_range(None, None, NOW, MS_PER_DAY, MAX).expect("default");
        assert!(default.to_ms >= NOW && default.to_ms - default.from_ms <= MS_PER_DAY + MS_PER_HOUR);
        let reversed = parse_range(Some("2026-01-02T00:00:00Z"), Some("2026-01-01T00:00:00Z"), NOW, 0, MAX);
        assert_eq!(reversed.map_err(|e| e.param), Err("from"));
        let long = parse_range(Some("2025-01-01T00:00:00Z"), Some("2026-01-01T00:00:00Z"), NOW, 0, MAX);
        assert_eq!(long.map_err(|e| e.param), Err("to"));
        assert_eq!(parse_range(Some("yesterday"), None, NOW, 0, MAX).map_err(|e| e.param), Err("from"));
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(parse_zone(Some("Nowhere/City")).map_err(|e| e.param).err(), Some("tz"));
        assert_eq!(parse_dimension("group_by", "colour").map_err(|e| e.param), Err("group_by"));
        assert_eq!(parse_dimension("group_by", "model"), Ok(Dimension::Model));
        assert_eq!(SeriesMetric::parse("latency_p99"), Ok(SeriesMetric::Latency(0.99)));
        assert_eq!(SeriesMetric::parse("joy").map_err(|e| e.param), Err("metric"));
        assert_eq!(parse_granularity(Some("week")).map_err(|e| e.param), Err("granularity"));
        assert_eq!(parse_top(Some("0"), 5).map_err(|e| e.param), Err("top"));
    }

    #[test]
    fn a_metric_reads_the_same_from_its_sums_alone() {
        let mut v = RollupValues {
            requests: 10,
            input_tokens: 200,
            output_tokens: 30,
            cached_tokens: 40,
            cost_micros: 500,
            potential_cost_micros: 900,
            latency_count: 10,
            latency_sum_ms: 1_000,
            latency_max_ms: 400,
            ..RollupValues::default()
        };
        v.latency_buckets[3] = 6;
        v.latency_buckets[9] = 4;
        for name in SeriesMetric::NAMES.split(", ") {
            let metric = SeriesMetric::parse(name).expect("metric");
            assert_ne!(metric.sums(), Sums::ALL, "{name} sums what it reads, not everything");
            let kept = metric.sums().keep(&v);
            let (mut full, mut alone) = (Bucket::default(), Bucket::default());
            full.add(&v, Some(5));
            alone.add(&kept, Some(5));
            assert_eq!(alone.value(metric), full.value(metric), "{name}");
            assert_eq!(kept.requests, v.requests, "{name}: ranked by requests");
        }
        for metric in [
            tollgate_core::Metric::Requests,
            tollgate_core::Metric::InputTokens,
            tollgate_core::Metric::OutputTokens,
            tollgate_core::Metric::TotalTokens,
            tollgate_core::Metric::CostMicros,
        ] {
            let kept = limit_metric_sums(metric).keep(&v);
            assert_eq!(limit_metric_value(metric, &kept), limit_metric_value(metric, &v), "{metric:?}");
            assert_ne!(kept, v, "{metric:?} reads fewer columns");
        }
    }

    #[test]
    fn error_rate_counts_failed_requests() {
        let mut bucket = Bucket::default();
        let ok = RollupValues { requests: 3, ..RollupValues::default() };
        let failed = RollupValues { requests: 1, ..RollupValues::default() };
        bucket.add(&ok, Some(2));
        bucket.add(&failed, Some(5));
        assert_eq!(bucket.value(SeriesMetric::ErrorRate), Some(0.25));
        assert_eq!(Bucket::default().value(SeriesMetric::ErrorRate), None);
        assert_eq!(bucket.value(SeriesMetric::Requests), Some(4.0));
    }
}
