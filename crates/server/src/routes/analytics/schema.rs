//! The shapes of the analytics answers and parameters, for the OpenAPI document only.
//!
//! The handlers in `routes/analytics.rs` build their JSON with `json!`; these types
//! describe it for `crate::openapi`, and the OpenAPI tests check real answers against
//! them.

use tollgate_core::{Metric, SubjectKind, Window};

/// The filters of an analytics query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct FilterParams {
    /// Start of the range (RFC 3339 or Unix seconds; default: the endpoint's span before `to`).
    from: Option<String>,
    /// End of the range (RFC 3339 or Unix seconds; default: now).
    to: Option<String>,
    /// Only this project (a project token: its own).
    project: Option<String>,
    /// Only this key.
    key: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    endpoint: Option<String>,
}

/// How many groups to show before folding the rest into "other".
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct TopParam {
    /// 1 to 100 (default 5).
    #[param(pattern = "^[0-9]{1,3}$")]
    top: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct SeriesParams {
    /// What to plot (default `requests`).
    #[param(
        pattern = "^(requests|input_tokens|output_tokens|cached_tokens|total_tokens|cost_micros|saved_micros|error_rate|latency_p50|latency_p95|latency_p99)$"
    )]
    metric: Option<String>,
    /// `hour` (the default; at most 31 days) or `day` (local days in `tz`).
    #[param(pattern = "^(hour|day)$")]
    granularity: Option<String>,
    /// An IANA zone for the buckets' edges (default UTC).
    tz: Option<String>,
    /// One series per value of this dimension (the top N, then "other").
    #[param(pattern = "^(project|key|model|provider|endpoint|status_class|cache|counted)$")]
    group_by: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct ForecastParams {
    /// The project whose project-wide quotas to forecast (or give `key`).
    project: Option<String>,
    /// The key whose quotas to forecast (or give `project`).
    key: Option<String>,
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct AnomalyParams {
    /// What to watch (default `requests`).
    #[param(pattern = "^(requests|input_tokens|output_tokens|total_tokens|cost_micros)$")]
    metric: Option<String>,
    /// Per project (the default) or per key.
    #[param(pattern = "^(project|key)$")]
    by: Option<String>,
    /// Weeks of history to compare with, 1 to 12 (default 4).
    #[param(pattern = "^[0-9]{1,2}$")]
    weeks: Option<String>,
    /// Robust score above which an hour is flagged, above 0 and at most 1000 (default 4).
    threshold: Option<String>,
    /// Hours below this volume are never flagged (a whole number).
    #[param(pattern = "^[0-9]{1,19}$")]
    min_volume: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct LatencyStats {
    avg: Option<u64>,
    p50: Option<u64>,
    p95: Option<u64>,
    p99: Option<u64>,
    max: Option<u64>,
}

/// Totals of a range.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Totals {
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cached_tokens: u64,
    total_tokens: u64,
    cost_micros: u64,
    /// What the cost would have been without the cache.
    potential_cost_micros: u64,
    saved_micros: u64,
    /// The share of requests answered 4xx or 5xx (null: no requests).
    error_rate: Option<f64>,
    latency_ms: LatencyStats,
}

/// One of the top values of a dimension, or (with `other: true`) the rest folded.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct TopGroup {
    value: Option<String>,
    other: Option<bool>,
    requests: u64,
    total_tokens: u64,
    cost_micros: u64,
    saved_micros: u64,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct TopGroups {
    model: Vec<TopGroup>,
    key: Vec<TopGroup>,
    provider: Vec<TopGroup>,
    endpoint: Vec<TopGroup>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Summary {
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    project: Option<String>,
    key: Option<String>,
    totals: Totals,
    top: TopGroups,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Point {
    /// The bucket's start, in the query's zone.
    #[schema(format = DateTime)]
    t: String,
    /// Null where the metric has no value (a rate or a quantile of no requests).
    value: Option<f64>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Series {
    /// `total`, a value of `group_by`, or `other`.
    name: String,
    points: Vec<Point>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Timeseries {
    metric: String,
    granularity: String,
    tz: String,
    group_by: Option<String>,
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    series: Vec<Series>,
}

/// One quota's forecast for its current calendar window.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct QuotaForecast {
    name: String,
    metric: Metric,
    window: Window,
    subject: SubjectKind,
    limit: u64,
    used: u64,
    used_percent: Option<f64>,
    /// Expected at the window's end.
    projected: u64,
    projected_percent: Option<f64>,
    time_zone: String,
    #[schema(format = DateTime)]
    window_start: String,
    #[schema(format = DateTime)]
    window_end: String,
    /// When the quota is expected to run out within the window (null: it is not).
    #[schema(format = DateTime)]
    exhausts_at: Option<String>,
    observed_per_hour: Option<f64>,
    seasonal: bool,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Forecast {
    project: String,
    key: Option<String>,
    #[schema(format = DateTime)]
    now: String,
    quotas: Vec<QuotaForecast>,
}

/// An hour far from the same hour of recent weeks; `project` or `key` (as `by` says)
/// names the subject.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AnomalyView {
    project: Option<String>,
    key: Option<String>,
    #[schema(format = DateTime)]
    hour: String,
    observed: u64,
    baseline: Option<f64>,
    mad: Option<f64>,
    score: Option<f64>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Anomalies {
    metric: String,
    by: String,
    #[schema(format = DateTime)]
    from: String,
    #[schema(format = DateTime)]
    to: String,
    weeks: i64,
    threshold: f64,
    min_volume: u64,
    anomalies: Vec<AnomalyView>,
}
