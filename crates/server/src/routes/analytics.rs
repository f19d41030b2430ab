//! The analytics API under `/api/v1/analytics`: `summary`, `timeseries`, `forecast`
//! and `anomalies`, all read from the hourly rollups (never raw ledger rows), scoped
//! by the admin token like every admin route (a project token sees its project
//! only). Handlers check parameters (a 400 naming the one at fault) and shape JSON;
//! the maths is `tollgate_analytics`'.

use std::collections::{BTreeMap, HashMap};

use axum::Json as AxumJson;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_analytics::anomaly::{self, AnomalySettings};
use tollgate_analytics::forecast::{self, ForecastInput, HISTORY_WEEKS};
use tollgate_analytics::query::{
    self, Bucket, Granularity, ParamError, SeriesMetric, limit_metric_sums, limit_metric_value, parse_dimension,
    parse_range,
};
use tollgate_analytics::store::{Dimension, RollupFilter, RollupQuery, Sums};
use tollgate_analytics::zone::{bucket_index, bucket_starts};
use tollgate_analytics::{RollupGroup, RollupValues};
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, to_rfc3339};
use tollgate_core::limit::effective_limits;
use tollgate_core::{LimitSpec, Metric, SubjectKind, Window};
use tollgate_gateway::now_ms;

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::Query;

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> Self {
        ApiError::invalid_field(e.param, e.message)
    }
}

type ApiResult<T> = Result<T, ApiError>;

const MS_PER_WEEK: i64 = 7 * MS_PER_DAY;

mod schema;
pub(crate) use schema::*;

/// The filters every analytics query takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    tz: Option<String>,
    #[serde(default)]
    top: Option<String>,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    granularity: Option<String>,
    #[serde(default)]
    group_by: Option<String>,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    weeks: Option<String>,
    #[serde(default)]
    threshold: Option<String>,
    #[serde(default)]
    min_volume: Option<String>,
}

impl Params {
    /// Only a project and a key (the export's scope).
    pub fn for_export(project: Option<String>, key: Option<String>) -> Self {
        Self { project, key, ..Self::default() }
    }
}

/// The rollup filter the token and the parameters allow. A key outside the token's
/// project is "not found", as everywhere.
pub async fn scoped_filter(state: &AppState, admin: &Admin, p: &Params) -> ApiResult<RollupFilter> {
    let mut project_id = admin.project_filter(p.project.clone())?;
    if let Some(key_id) = &p.key {
        let key = state
            .catalog
            .get_key(key_id)
            .await?
            .ok_or_else(|| ApiError::NotFound { what: "key", id: key_id.clone() })?;
        admin.check_project(&key.project_id, "key", key_id)?;
        if project_id.as_ref().is_some_and(|p| *p != key.project_id) {
            return Err(ApiError::invalid_field("key", format!("key '{key_id}' is not in that project")));
        }
        // The key's project narrows nothing (a key is in one project) but lets the
        // stores read the key's rows as one range (tables keyed by project, key, hour).
        project_id = Some(key.project_id);
    }
    Ok(RollupFilter {
        project_id,
        key_id: p.key.clone(),
        model: p.model.clone(),
        provider: p.provider.clone(),
        endpoint: p.endpoint.clone(),
        counted: None,
    })
}

fn range(state: &AppState, p: &Params, default_span_ms: i64) -> ApiResult<query::Range> {
    range_at_most(state, p, default_span_ms, state.config.analytics.max_range_ms)
}

/// Queries that hold one value per hour (and subject) in memory: at most this long.
const MAX_HOURLY_SPAN_MS: i64 = 31 * MS_PER_DAY;

fn range_at_most(state: &AppState, p: &Params, default_span_ms: i64, max_ms: i64) -> ApiResult<query::Range> {
    let max = max_ms.min(state.config.analytics.max_range_ms);
    Ok(parse_range(p.from.as_deref(), p.to.as_deref(), now_ms(), default_span_ms, max)?)
}

fn totals_view(bucket: &Bucket) -> Value {
    let v = &bucket.values;
    let avg = (v.latency_count > 0).then(|| v.latency_sum_ms / v.latency_count);
    json!({
        "requests": v.requests,
        "input_tokens": v.input_tokens,
        "output_tokens": v.output_tokens,
        "cached_tokens": v.cached_tokens,
        "total_tokens": v.total_tokens(),
        "cost_micros": v.cost_micros,
        "potential_cost_micros": v.potential_cost_micros,
        "saved_micros": v.saved_micros(),
        "error_rate": bucket.value(SeriesMetric::ErrorRate),
        "latency_ms": {
            "avg": avg,
            "p50": v.latency_quantile(0.5),
            "p95": v.latency_quantile(0.95),
            "p99": v.latency_quantile(0.99),
            "max": (v.latency_count > 0).then_some(v.latency_max_ms),
        },
    })
}

fn group_view(name: &str, v: &RollupValues) -> Value {
    json!({
        "value": name,
        "requests": v.requests,
        "total_tokens": v.total_tokens(),
        "cost_micros": v.cost_micros,
        "saved_micros": v.saved_micros(),
    })
}

/// Sorts groups by cost, then requests, then name; keeps `top` and folds the rest
/// into "other".
fn top_n(groups: Vec<(String, RollupValues)>, top: usize) -> (Vec<(String, RollupValues)>, Option<RollupValues>) {
    let mut groups = groups;
    groups.sort_by(|a, b| {
        (b.1.cost_micros, b.1.requests).cmp(&(a.1.cost_micros, a.1.requests)).then_with(|| a.0.cmp(&b.0))
    });
    if groups.len() <= top {
        return (groups, None);
    }
    let rest = groups.split_off(top);
    let mut other = RollupValues::default();
    rest.iter().for_each(|(_, v)| other.merge(v));
    (groups, Some(other))
}

/// `GET /api/v1/analytics/summary`: totals of a range (cost saved, error rate,
/// latency percentiles) and the top models, keys, providers and endpoints.
#[utoipa::path(get, path = "/api/v1/analytics/summary", tag = "analytics", params(FilterParams, TopParam),
    responses((status = 200, description = "Totals and top groups of the range (default: 30 days)", body = Summary)))]
pub async fn summary(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<Params>,
) -> ApiResult<AxumJson<Value>> {
    reject_unused(&p, &["metric", "granularity", "group_by", "by", "weeks", "threshold", "min_volume", "tz"])?;
    let filter = scoped_filter(&state, &admin, &p).await?;
    let range = range(&state, &p, 30 * MS_PER_DAY)?;
    let top = query::parse_top(p.top.as_deref(), 5)?;
    // One query per part, each narrow enough for a projection of the rollup
    // (analytics::projection): the totals per status class (with the latency
    // histogram), then the groups of each dimension shown.
    let base = RollupQuery {
        from_ms: range.from_ms,
        to_ms: range.to_ms,
        filter,
        by_hour: false,
        group_by: vec![Dimension::StatusClass],
        latency_buckets: true,
        sums: Sums::ALL,
    };
    let mut totals = Bucket::default();
    for g in state.analytics.rollup_groups(base.clone()).await? {
        totals.add(&g.values, g.dims.first().and_then(|c| c.parse().ok()));
    }
    let mut tops = serde_json::Map::new();
    for dim in [Dimension::Model, Dimension::Key, Dimension::Provider, Dimension::Endpoint] {
        let query = RollupQuery { group_by: vec![dim], latency_buckets: false, ..base.clone() };
        let groups: Vec<(String, RollupValues)> = state
            .analytics
            .rollup_groups(query)
            .await?
            .into_iter()
            .map(|g| (g.dims.into_iter().next().unwrap_or_default(), g.values))
            .collect();
        let (kept, other) = top_n(groups, top);
        let mut list: Vec<Value> = kept.iter().map(|(n, v)| group_view(n, v)).collect();
        if let Some(other) = other {
            list.push(json!({ "other": true, "requests": other.requests, "total_tokens": other.total_tokens(),
                              "cost_micros": other.cost_micros, "saved_micros": other.saved_micros() }));
        }
        tops.insert(dim.as_str().to_owned(), Value::Array(list));
    }
    Ok(AxumJson(json!({
        "from": to_rfc3339(range.from_ms),
        "to": to_rfc3339(range.to_ms),
        "project": base.filter.project_id,
        "key": base.filter.key_id,
        "totals": totals_view(&totals),
        "top": tops,
    })))
}

/// Parameters an endpoint does not take are refused by name rather than ignored.
fn reject_unused(p: &Params, names: &[&'static str]) -> ApiResult<()> {
    for &name in names {
        let set = match name {
            "metric" => p.metric.is_some(),
            "granularity" => p.granularity.is_some(),
            "group_by" => p.group_by.is_some(),
            "by" => p.by.is_some(),
            "weeks" => p.weeks.is_some(),
            "threshold" => p.threshold.is_some(),
            "min_volume" => p.min_volume.is_some(),
            "tz" => p.tz.is_some(),
            "top" => p.top.is_some(),
            "from" => p.from.is_some(),
            "to" => p.to.is_some(),
            "model" => p.model.is_some(),
            "provider" => p.provider.is_some(),
            "endpoint" => p.endpoint.is_some(),
            _ => false,
        };
        if set {
            return Err(ApiError::invalid_field(name, "is not a parameter of this endpoint"));
        }
    }
    Ok(())
}

/// `GET /api/v1/analytics/timeseries`: one metric per hour or local day, in total or
/// per value of one dimension (the top N plus "other").
#[utoipa::path(get, path = "/api/v1/analytics/timeseries", tag = "analytics",
    params(FilterParams, SeriesParams, TopParam),
    responses((status = 200, description = "One metric per bucket, per series", body = Timeseries)))]
pub async fn timeseries(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<Params>,
) -> ApiResult<AxumJson<Value>> {
    reject_unused(&p, &["by", "weeks", "threshold", "min_volume"])?;
    let metric = SeriesMetric::parse(p.metric.as_deref().unwrap_or("requests"))?;
    let granularity = query::parse_granularity(p.granularity.as_deref())?;
    let zone = query::parse_zone(p.tz.as_deref())?;
    let group_by = p.group_by.as_deref().map(|g| parse_dimension("group_by", g)).transpose()?;
    let top = query::parse_top(p.top.as_deref(), 5)?;
    let filter = scoped_filter(&state, &admin, &p).await?;
    let default_span = if granularity == Granularity::Day { 30 * MS_PER_DAY } else { MS_PER_DAY };
    let range = if granularity == Granularity::Hour {
        range_at_most(&state, &p, default_span, MAX_HOURLY_SPAN_MS)?
    } else {
        range(&state, &p, default_span)?
    };
    let days = granularity == Granularity::Day;
    // Local days: from the start of the local day holding `from`.
    let starts = bucket_starts(&zone, range.from_ms, range.to_ms, days);
    let from_ms = starts.first().copied().unwrap_or(range.from_ms).min(range.from_ms);
    let mut dims = Vec::new();
    dims.extend(group_by);
    if metric == SeriesMetric::ErrorRate {
        dims.push(Dimension::StatusClass);
    }
    let groups = state
        .analytics
        .rollup_groups(RollupQuery {
            from_ms,
            to_ms: range.to_ms,
            filter,
            by_hour: true,
            group_by: dims,
            latency_buckets: matches!(metric, SeriesMetric::Latency(_)),
            sums: metric.sums(),
        })
        .await?;
    let class_of = |g: &RollupGroup| {
        if metric == SeriesMetric::ErrorRate { g.dims.last().and_then(|c| c.parse::<u16>().ok()) } else { None }
    };
    // Which series each group lands in: the top N values of the dimension (by the
    // metric's total when additive, else by requests), the rest in "other".
    let series_names: Vec<String> = match group_by {
        None => vec!["total".to_owned()],
        Some(_) => {
            let mut totals: HashMap<&str, u64> = HashMap::new();
            for g in &groups {
                let weight = metric.additive(&g.values).unwrap_or(g.values.requests);
                *totals.entry(g.dims[0].as_str()).or_default() += weight;
            }
            let mut ranked: Vec<(&str, u64)> = totals.into_iter().collect();
            ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            let mut names: Vec<String> = ranked.iter().take(top).map(|(n, _)| (*n).to_owned()).collect();
            if ranked.len() > top {
                names.push("other".to_owned());
            }
            names
        }
    };
    // The top values by name; "other" (when there is one) is the last series.
    let shown = if series_names.len() > top { top } else { series_names.len() };
    let index_of: HashMap<&str, usize> =
        series_names.iter().take(shown).enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let other = (series_names.len() > shown).then(|| series_names.len() - 1);
    let mut buckets = vec![vec![Bucket::default(); starts.len()]; series_names.len()];
    for g in &groups {
        let Some(hour) = g.hour_ms else { continue };
        let Some(b) = bucket_index(&starts, hour) else { continue };
        let s = match group_by {
            None => 0,
            Some(_) => match index_of.get(g.dims[0].as_str()).copied().or(other) {
                Some(i) => i,
                None => continue,
            },
        };
        buckets[s][b].add(&g.values, class_of(g));
    }
    let series: Vec<Value> = series_names
        .iter()
        .zip(buckets)
        .map(|(name, row)| {
            let points: Vec<Value> = starts
                .iter()
                .zip(row)
                .map(|(t, bucket)| json!({ "t": zone.rfc3339(*t), "value": bucket.value(metric) }))
                .collect();
            json!({ "name": name, "points": points })
        })
        .collect();
    Ok(AxumJson(json!({
        "metric": p.metric.as_deref().unwrap_or("requests"),
        "granularity": if days { "day" } else { "hour" },
        "tz": zone.name(),
        "group_by": group_by.map(Dimension::as_str),
        "from": zone.rfc3339(from_ms),
        "to": zone.rfc3339(range.to_ms),
        "series": series,
    })))
}

/// The calendar window holding `now`, in the limit's zone (quotas only).
fn window_bounds(window: Window, now: i64, zone: &tollgate_core::Zone) -> Option<(i64, i64)> {
    match window {
        Window::Day | Window::Month => Some(zone.bounds(window, now)),
        Window::Minute | Window::Hour => None,
    }
}

/// `GET /api/v1/analytics/forecast?key=` or `?project=`: for each quota (day and
/// month limits of the key, or the project-wide ones of the project's plans), what
/// is used, what the window is projected to end at, and when it runs out.
#[utoipa::path(get, path = "/api/v1/analytics/forecast", tag = "analytics", params(ForecastParams),
    responses((status = 200, description = "Each day and month quota's use and projection", body = Forecast)))]
pub async fn forecast(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<Params>,
) -> ApiResult<AxumJson<Value>> {
    reject_unused(
        &p,
        &[
            "from",
            "to",
            "model",
            "provider",
            "endpoint",
            "metric",
            "granularity",
            "group_by",
            "by",
            "weeks",
            "threshold",
            "min_volume",
            "top",
            "tz",
        ],
    )?;
    let now = now_ms();
    let (project_id, key_id, specs) = match (&p.key, &p.project) {
        (Some(key_id), None) => {
            let key = state
                .catalog
                .get_key(key_id)
                .await?
                .ok_or_else(|| ApiError::NotFound { what: "key", id: key_id.clone() })?;
            admin.check_project(&key.project_id, "key", key_id)?;
            let specs = key_quota_specs(&state, &key).await?;
            (key.project_id.clone(), Some(key_id.clone()), specs)
        }
        (None, Some(project)) => {
            admin.check_project(project, "project", project)?;
            let Some(found) = state.catalog.get_project(project).await? else {
                return Err(ApiError::NotFound { what: "project", id: project.clone() });
            };
            let project_zone = found.settings.time_zone.clone().unwrap_or_default();
            let specs = project_quota_specs(&state, project, &project_zone).await?;
            (project.clone(), None, specs)
        }
        _ => return Err(ApiError::invalid_field("key", "give exactly one of ?key= or ?project=")),
    };
    let mut quotas = Vec::new();
    for q in quota_forecasts(&state, &project_id, key_id.as_deref(), specs, now).await? {
        let QuotaProjection { spec, zone, window_start_ms: start, window_end_ms: end, forecast: f } = q;
        let percent = |n: u64| {
            if spec.limit == 0 { Value::Null } else { json!((n as f64 * 1000.0 / spec.limit as f64).round() / 10.0) }
        };
        quotas.push(json!({
            "name": spec.name(),
            "metric": spec.metric,
            "window": spec.window,
            "subject": spec.subject,
            "limit": spec.limit,
            "used": f.used,
            "used_percent": percent(f.used),
            "projected": f.projected,
            "projected_percent": percent(f.projected),
            "time_zone": zone.name(),
            "window_start": to_rfc3339(start),
            "window_end": to_rfc3339(end),
            "exhausts_at": f.exhausts_at_ms.map(to_rfc3339),
            "observed_per_hour": f.observed_per_hour.map(|v| (v * 100.0).round() / 100.0),
            "seasonal": f.seasonal,
        }));
    }
    Ok(AxumJson(json!({ "project": project_id, "key": key_id, "now": to_rfc3339(now), "quotas": quotas })))
}

/// The quotas a key's forecast covers: its plan's day and month limits on the key
/// and its project (with the key's overrides), each with the zone it counts in (the
/// plan's, else the project's; project-wide limits the project's).
pub async fn key_quota_specs(
    state: &AppState,
    key: &tollgate_core::KeyRecord,
) -> ApiResult<Vec<(LimitSpec, tollgate_core::Zone)>> {
    let plan = state
        .catalog
        .get_plan(&key.plan)
        .await?
        .ok_or_else(|| ApiError::PlanUnavailable(format!("plan '{}' of key '{}' is missing", key.plan, key.id)))?;
    let project_zone = project_zone(state, &key.project_id).await?;
    let zone = plan.time_zone.clone().unwrap_or_else(|| project_zone.clone());
    Ok(effective_limits(&plan.limits, &key.limit_overrides)
        .into_iter()
        .filter(|s| matches!(s.subject, SubjectKind::Key | SubjectKind::Project))
        .map(|s| {
            // Project-wide limits count in the project's zone.
            let z = if s.subject == SubjectKind::Project { project_zone.clone() } else { zone.clone() };
            (s, z)
        })
        .collect())
}

/// The project-wide quotas of the plans a project's keys use, in the project's zone.
pub async fn project_quota_specs(
    state: &AppState,
    project: &str,
    project_zone: &tollgate_core::Zone,
) -> ApiResult<Vec<(LimitSpec, tollgate_core::Zone)>> {
    let keys = state
        .catalog
        .list_keys(tollgate_store::KeyQuery { project_id: Some(project.to_owned()), after_id: None, limit: 1000 })
        .await?;
    let mut specs: Vec<(LimitSpec, tollgate_core::Zone)> = Vec::new();
    let mut plans_seen = std::collections::HashSet::new();
    for key in keys {
        if !plans_seen.insert(key.plan.clone()) {
            continue;
        }
        if let Some(plan) = state.catalog.get_plan(&key.plan).await? {
            for spec in plan.limits.into_iter().filter(|s| s.subject == SubjectKind::Project) {
                if !specs.iter().any(|(s, _)| s.slot() == spec.slot() && s.limit == spec.limit) {
                    specs.push((spec, project_zone.clone()));
                }
            }
        }
    }
    Ok(specs)
}

/// One quota's forecast, in its calendar window.
#[derive(Clone, Debug)]
pub struct QuotaProjection {
    pub spec: LimitSpec,
    pub zone: tollgate_core::Zone,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub forecast: forecast::Forecast,
}

/// The forecast of each day and month quota of `specs` (minute and hour limits are
/// skipped): a key's (`key_id`) or a project's, from the hourly rollups. The
/// forecast endpoint and forecast alert rules both use it.
pub async fn quota_forecasts(
    state: &AppState,
    project_id: &str,
    key_id: Option<&str>,
    specs: Vec<(LimitSpec, tollgate_core::Zone)>,
    now: i64,
) -> ApiResult<Vec<QuotaProjection>> {
    let mut out = Vec::new();
    for (spec, zone) in specs {
        let Some((start, end)) = window_bounds(spec.window, now, &zone) else { continue };
        let history_from = tollgate_analytics::rollup::hour_of(start.min(now - HISTORY_WEEKS * MS_PER_WEEK));
        let filter = RollupFilter {
            project_id: Some(project_id.to_owned()),
            key_id: if spec.subject == SubjectKind::Key { key_id.map(str::to_owned) } else { None },
            model: spec.model.as_deref().map(str::to_owned),
            provider: spec.provider.as_deref().map(str::to_owned),
            endpoint: spec.endpoint.as_deref().map(str::to_owned),
            counted: Some(true),
        };
        let groups = state
            .analytics
            .rollup_groups(RollupQuery {
                from_ms: history_from,
                to_ms: now + MS_PER_HOUR,
                filter,
                by_hour: true,
                group_by: vec![],
                latency_buckets: false,
                sums: limit_metric_sums(spec.metric),
            })
            .await?;
        let hourly: BTreeMap<i64, u64> =
            groups.iter().filter_map(|g| Some((g.hour_ms?, limit_metric_value(spec.metric, &g.values)))).collect();
        let f = forecast::forecast(&ForecastInput {
            window_start_ms: start,
            window_end_ms: end,
            now_ms: now,
            limit: spec.limit,
            hourly: &hourly,
            known_from_ms: history_from,
        });
        out.push(QuotaProjection { spec, zone, window_start_ms: start, window_end_ms: end, forecast: f });
    }
    Ok(out)
}

/// The project's zone (UTC when unset or the project is gone).
async fn project_zone(state: &AppState, project_id: &str) -> ApiResult<tollgate_core::Zone> {
    Ok(state.catalog.get_project(project_id).await?.and_then(|p| p.settings.time_zone).unwrap_or_default())
}

/// `GET /api/v1/analytics/anomalies`: hours of a range where a project's (or
/// key's) requests, tokens or cost are far from the same hour of recent weeks.
#[utoipa::path(get, path = "/api/v1/analytics/anomalies", tag = "analytics", params(FilterParams, AnomalyParams),
    responses((status = 200, description = "Anomalous hours of the range (default: the last day), strongest first",
        body = Anomalies)))]
pub async fn anomalies(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<Params>,
) -> ApiResult<AxumJson<Value>> {
    reject_unused(&p, &["granularity", "group_by", "top", "tz"])?;
    let metric_name = p.metric.as_deref().unwrap_or("requests");
    let metric = match metric_name {
        "requests" => Metric::Requests,
        "input_tokens" => Metric::InputTokens,
        "output_tokens" => Metric::OutputTokens,
        "total_tokens" => Metric::TotalTokens,
        "cost_micros" => Metric::CostMicros,
        other => {
            return Err(ApiError::invalid_field(
                "metric",
                format!(
                    "unknown metric '{other}' (one of requests, input_tokens, output_tokens, total_tokens, cost_micros)"
                ),
            ));
        }
    };
    let by = match p.by.as_deref().unwrap_or("project") {
        "project" => Dimension::Project,
        "key" => Dimension::Key,
        other => return Err(ApiError::invalid_field("by", format!("must be project or key, not '{other}'"))),
    };
    let weeks = match p.weeks.as_deref() {
        None => 4,
        Some(w) => match w.parse::<i64>() {
            Ok(n) if (1..=12).contains(&n) => n,
            _ => return Err(ApiError::invalid_field("weeks", "must be an integer from 1 to 12")),
        },
    };
    let threshold = match p.threshold.as_deref() {
        None => DEFAULT_ANOMALY_THRESHOLD,
        Some(t) => match t.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && v <= 1_000.0 => v,
            _ => return Err(ApiError::invalid_field("threshold", "must be a number above 0 (at most 1000)")),
        },
    };
    let default_volume = default_min_volume(metric);
    let min_volume = match p.min_volume.as_deref() {
        None => default_volume,
        Some(v) => v.parse::<u64>().map_err(|_| ApiError::invalid_field("min_volume", "must be a whole number"))?,
    };
    let filter = scoped_filter(&state, &admin, &p).await?;
    let range = range_at_most(&state, &p, MS_PER_DAY, MAX_HOURLY_SPAN_MS)?;
    let settings = AnomalySettings { weeks, threshold, min_volume };
    let mut found = hourly_anomalies(&state, filter, metric, by, range.from_ms, range.to_ms, &settings).await?;
    found.sort_by(|a, b| b.1.score.abs().total_cmp(&a.1.score.abs()).then_with(|| a.1.hour_ms.cmp(&b.1.hour_ms)));
    let list: Vec<Value> = found
        .iter()
        .map(|(subject, a)| {
            json!({
                by.as_str(): subject, "hour": to_rfc3339(a.hour_ms), "observed": a.observed,
                "baseline": a.baseline, "mad": a.mad, "score": a.score,
            })
        })
        .collect();
    Ok(AxumJson(json!({
        "metric": metric_name, "by": by.as_str(), "from": to_rfc3339(range.from_ms), "to": to_rfc3339(range.to_ms),
        "weeks": weeks, "threshold": threshold, "min_volume": min_volume, "anomalies": list,
    })))
}

/// The anomalies endpoint's default `min_volume` for a metric.
pub fn default_min_volume(metric: Metric) -> u64 {
    match metric {
        Metric::Requests => 50,
        Metric::CostMicros => 50_000,
        _ => 50_000,
    }
}

/// The anomalies endpoint's default `threshold` (robust z-score).
pub const DEFAULT_ANOMALY_THRESHOLD: f64 = 4.0;

/// The anomalous hours of `[from_ms, to_ms)` per project or key (`by`) of `filter`,
/// from the hourly rollups: the anomalies endpoint and anomaly alert rules both use it.
pub async fn hourly_anomalies(
    state: &AppState,
    filter: RollupFilter,
    metric: Metric,
    by: Dimension,
    from_ms: i64,
    to_ms: i64,
    settings: &AnomalySettings,
) -> ApiResult<Vec<(String, anomaly::Anomaly)>> {
    let history_from = from_ms - settings.weeks * MS_PER_WEEK;
    let groups = state
        .analytics
        .rollup_groups(RollupQuery {
            from_ms: history_from,
            to_ms,
            filter,
            by_hour: true,
            group_by: vec![by],
            latency_buckets: false,
            sums: limit_metric_sums(metric),
        })
        .await?;
    let mut per_subject: BTreeMap<String, BTreeMap<i64, u64>> = BTreeMap::new();
    for g in groups {
        if let (Some(hour), Some(subject)) = (g.hour_ms, g.dims.into_iter().next()) {
            *per_subject.entry(subject).or_default().entry(hour).or_default() += limit_metric_value(metric, &g.values);
        }
    }
    Ok(per_subject
        .iter()
        .flat_map(|(subject, hourly)| {
            anomaly::detect(hourly, from_ms, to_ms, settings).into_iter().map(|a| (subject.clone(), a))
        })
        .collect())
}
