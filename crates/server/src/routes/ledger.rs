//! The usage ledger as the admin API lists it (`GET /api/v1/usage`): raw records,
//! newest first, paged by cursor, scoped like every admin route. Streaming exports are
//! in [`export`](crate::routes::export), aggregates in [`analytics`](crate::routes::analytics).

use axum::Json as AxumJson;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use tollgate_core::calendar::{parse_timestamp, to_rfc3339};
use tollgate_core::{UsageQuery, UsageRecord};

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::Query;

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListUsage {
    /// Only this project's records (a project token: its own).
    #[serde(default)]
    project: Option<String>,
    /// Only this key's records.
    #[serde(default)]
    key: Option<String>,
    /// From this time on: RFC 3339 or Unix seconds.
    #[serde(default)]
    from: Option<String>,
    /// Before this time: RFC 3339 or Unix seconds.
    #[serde(default)]
    to: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
}

/// One ledger record: a request, a reported usage event, a refusal row or a transfer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageRecordView {
    pub id: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    pub project: String,
    pub key_id: String,
    pub endpoint: String,
    pub provider: String,
    pub model: Option<String>,
    /// The HTTP status of the answer (499: the client went away before one).
    pub status: u16,
    /// Whether it counts against limits.
    pub counted: bool,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
    pub uncached_cost_micros: u64,
    pub usage_source: tollgate_core::UsageSource,
    /// What a cache did: `miss`, `partial` (cached prompt tokens or a cheaper price) or
    /// `hit` (nothing charged, something saved).
    pub cache: String,
    pub price_version: Option<String>,
    pub price_estimated: bool,
    pub client_ip: Option<String>,
    pub anonymous_id: Option<String>,
    pub upstream_request_id: Option<String>,
    pub latency_ms: u64,
}

/// A page of ledger records, newest first; `next_cursor` gives the next (null: the last).
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageList {
    pub data: Vec<UsageRecordView>,
    pub next_cursor: Option<String>,
}

pub(crate) fn usage_view(r: &UsageRecord) -> UsageRecordView {
    UsageRecordView {
        id: r.id.clone(),
        timestamp: to_rfc3339(r.ts_ms),
        project: r.project_id.clone(),
        key_id: r.key_id.clone(),
        endpoint: r.endpoint.clone(),
        provider: r.provider.clone(),
        model: r.model.clone(),
        status: r.status,
        counted: r.counted,
        requests: r.requests,
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        total_tokens: r.prompt_tokens + r.completion_tokens,
        cached_tokens: r.cached_tokens,
        cost_micros: r.cost_micros,
        uncached_cost_micros: r.uncached_cost_micros,
        usage_source: r.usage_source,
        cache: tollgate_analytics::rollup::CacheOutcome::of(r).as_str().to_owned(),
        price_version: r.price_version.clone(),
        price_estimated: r.price_estimated,
        client_ip: r.client_ip.clone(),
        anonymous_id: r.anonymous_id.clone(),
        upstream_request_id: r.upstream_request_id.clone(),
        latency_ms: r.latency_ms,
    }
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (ts, id) = c.split_once('.')?;
    Some((ts.parse().ok()?, id.to_owned()))
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage", params(ListUsage),
    responses((status = 200, description = "A page of ledger records, newest first", body = UsageList)))]
pub(crate) async fn list_usage(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ListUsage>,
) -> ApiResult<AxumJson<UsageList>> {
    let project_id = admin.project_filter(q.project)?;
    if let Some(key_id) = &q.key
        && admin.0.project_id.is_some()
    {
        crate::routes::admin::load_key(&state, &admin, key_id).await?;
    }
    let time = |field: &str, v: &Option<String>| -> ApiResult<Option<i64>> {
        v.as_deref()
            .map(|s| {
                parse_timestamp(s).ok_or_else(|| ApiError::invalid_field(field, "must be RFC 3339 or Unix seconds"))
            })
            .transpose()
    };
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid_field("limit", "must be between 1 and 1000"));
    }
    let cursor = match q.cursor.as_deref() {
        None => None,
        Some(c) => {
            Some(parse_cursor(c).ok_or_else(|| ApiError::invalid_field("cursor", "is not a cursor this API gave"))?)
        }
    };
    let query = UsageQuery {
        project_id,
        key_id: q.key,
        from_ms: time("from", &q.from)?,
        to_ms: time("to", &q.to)?,
        cursor,
        limit,
    };
    let records = state.ledger.query(query).await?;
    let next = (records.len() == limit).then(|| records.last().map(|r| format!("{}.{}", r.ts_ms, r.id))).flatten();
    Ok(AxumJson(UsageList { data: records.iter().map(usage_view).collect(), next_cursor: next }))
}
