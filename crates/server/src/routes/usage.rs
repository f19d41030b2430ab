//! Usage reported from elsewhere (`POST /api/v1/usage/events`), limit status
//! (`GET /api/v1/usage/status`) and carrying an anonymous visitor's usage over to
//! the key they signed up with (`POST /api/v1/anonymous/attach`).

use std::sync::Arc;

use axum::Json as AxumJson;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_MINUTE, to_rfc3339};
use tollgate_core::{Amounts, Decision, KeyRecord, UsageRecord, UsageSource};

use tollgate_core::{Authed, Traffic};
use tollgate_gateway::auth::KeyRefusal;
use tollgate_gateway::now_ms;

use crate::app::AppState;
use crate::auth::{Admin, bearer};
use crate::http::error::ApiError;
use crate::http::extract::{Json, Query};
use crate::http::timestamp_field;

/// Most events one call may carry.
pub const MAX_EVENTS: usize = 1_000;
/// How far back an event may be dated (a little over a month, so late reports of the
/// previous month still land).
const MAX_EVENT_AGE_MS: i64 = 35 * MS_PER_DAY;
const MAX_TOKENS: u64 = 1_000_000_000;
/// Largest `cost_micros` of one event ($1,000,000).
const MAX_EVENT_COST_MICROS: u64 = 1_000_000_000_000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventsBody {
    /// 1 to 1000 events; each is checked on its own.
    #[schema(value_type = Vec<Event>, min_items = 1, max_items = 1000)]
    events: Vec<Value>,
}

/// One unit of usage reported from elsewhere; idempotent by `id`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Event {
    /// 1-128 visible ASCII characters, unique per event.
    id: String,
    key_id: String,
    /// When it happened (within the last 35 days); default now.
    #[serde(default)]
    #[schema(value_type = Option<crate::http::TimestampInput>)]
    timestamp: Option<Value>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    model: Option<String>,
    /// Requests it stands for (default 1).
    #[serde(default)]
    #[schema(maximum = 1000000)]
    requests: Option<u64>,
    #[serde(default)]
    #[schema(maximum = 1000000000)]
    prompt_tokens: u64,
    #[serde(default)]
    #[schema(maximum = 1000000000)]
    completion_tokens: u64,
    /// At most `prompt_tokens`.
    #[serde(default)]
    #[schema(maximum = 1000000000)]
    cached_tokens: u64,
    /// When absent, priced from the model with the price table.
    #[serde(default)]
    #[schema(maximum = 1000000000000u64)]
    cost_micros: Option<u64>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(default)]
    client_ip: Option<String>,
}

/// What became of each event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct IngestResult {
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    results: Vec<EventResult>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct EventResult {
    index: u64,
    /// The event's `id` as sent (null when it had none).
    id: Value,
    #[schema(pattern = "^(accepted|duplicate|rejected)$")]
    status: String,
    /// Why a rejected event was rejected; `param` names the field.
    error: Option<EventError>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct EventError {
    message: String,
    param: Option<String>,
    #[schema(rename = "type")]
    kind: String,
}

/// A limit's use in its current window.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct LimitUsage {
    name: String,
    metric: tollgate_core::Metric,
    window: tollgate_core::Window,
    subject: tollgate_core::SubjectKind,
    used: u64,
    limit: u64,
    remaining: u64,
    percent: f64,
    #[schema(format = DateTime)]
    reset: String,
}

/// The overall state: the highest percentage decides (80: warning, 90: critical, 100: exceeded).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UsageState {
    Ok,
    Warning,
    Critical,
    Exceeded,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyStatus {
    key_id: String,
    project: String,
    plan: String,
    state: UsageState,
    limits: Vec<LimitUsage>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ProjectStatus {
    project: String,
    state: UsageState,
    keys: Vec<KeyStatus>,
}

/// A key's status (`?key=`, or called with the key) or a project's (`?project=`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub(crate) enum StatusAnswer {
    Key(KeyStatus),
    Project(ProjectStatus),
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct AttachResult {
    key_id: String,
    anonymous_id: String,
    /// Records newly carried over (0 when attached before).
    records_attached: u64,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_micros: u64,
}

struct Checked {
    record: UsageRecord,
    authed: Authed,
    traffic: Traffic,
}

/// Reads one event, naming the field at fault in `param` (docs/api.md): a wrong type
/// by its path, a missing or unknown field by its name, anything else `null`.
fn parse_event(raw: Value) -> Result<Event, ApiError> {
    serde_path_to_error::deserialize::<_, Event>(raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let named = |prefix: &str| {
            let rest = inner.strip_prefix(prefix)?;
            Some(rest.split('`').next()?.to_owned())
        };
        let field = if path != "." && !path.is_empty() {
            Some(path)
        } else {
            named("missing field `").or_else(|| named("unknown field `"))
        };
        match field {
            Some(field) => ApiError::invalid_field(&field, inner),
            None => ApiError::bad_request(inner),
        }
    })
}

async fn check_event(state: &AppState, admin: &Admin, raw: Value, now: i64) -> Result<Checked, ApiError> {
    let event: Event = parse_event(raw)?;
    if event.id.is_empty() || event.id.len() > 128 || !event.id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field("id", "must be 1-128 visible ASCII characters"));
    }
    // Clock skew of a few minutes is accepted, but the event is recorded at the
    // server's time: nothing a client sends moves a counter into the future.
    let ts_ms = match &event.timestamp {
        None => now,
        Some(value) => timestamp_field("timestamp", value)?.unwrap_or(now),
    };
    if ts_ms < now - MAX_EVENT_AGE_MS || ts_ms > now + 5 * MS_PER_MINUTE {
        return Err(ApiError::invalid_field("timestamp", "must be within the last 35 days and not in the future"));
    }
    let ts_ms = ts_ms.min(now);
    for (field, value) in [
        ("prompt_tokens", event.prompt_tokens),
        ("completion_tokens", event.completion_tokens),
        ("cached_tokens", event.cached_tokens),
    ] {
        if value > MAX_TOKENS {
            return Err(ApiError::invalid_field(field, format!("must be at most {MAX_TOKENS}")));
        }
    }
    if event.cost_micros.is_some_and(|c| c > MAX_EVENT_COST_MICROS) {
        return Err(ApiError::invalid_field("cost_micros", format!("must be at most {MAX_EVENT_COST_MICROS}")));
    }
    if event.cached_tokens > event.prompt_tokens {
        return Err(ApiError::invalid_field("cached_tokens", "cannot exceed prompt_tokens"));
    }
    let requests = event.requests.unwrap_or(1);
    if requests > 1_000_000 {
        return Err(ApiError::invalid_field("requests", "must be at most 1,000,000"));
    }
    let client_ip = match &event.client_ip {
        None => None,
        Some(ip) => Some(ip.parse().map_err(|_| ApiError::invalid_field("client_ip", "is not an IP address"))?),
    };
    let key = state
        .catalog
        .get_key(&event.key_id)
        .await?
        .ok_or_else(|| ApiError::invalid_field("key_id", format!("no key '{}'", event.key_id)))?;
    admin
        .check_project(&key.project_id, "key", &event.key_id)
        .map_err(|_| ApiError::invalid_field("key_id", format!("no key '{}'", event.key_id)))?;
    let authed = resolve(state, key).await?;
    let key = &authed.key;
    let model = event.model.unwrap_or_default();
    let (cost_micros, uncached_cost_micros, price_version, price_estimated) = match event.cost_micros {
        Some(c) => (c, c, None, false),
        None if model.is_empty() => (0, 0, None, false),
        None => {
            let lookup = state.settings.prices.price(&model);
            let cost = lookup.price.cost(event.prompt_tokens, event.cached_tokens, event.completion_tokens);
            (cost.micros, cost.uncached_micros, Some(state.settings.prices.version().to_owned()), !lookup.known)
        }
    };
    let traffic = Traffic {
        provider: event.provider.unwrap_or_default(),
        model: model.clone(),
        endpoint: event.endpoint.unwrap_or_else(|| "events".to_owned()),
        client_ip,
        anonymous_id: event.anonymous_id,
    };
    let record = UsageRecord {
        id: event.id,
        ts_ms,
        project_id: key.project_id.clone(),
        key_id: key.id.clone(),
        endpoint: traffic.endpoint.clone(),
        provider: traffic.provider.clone(),
        model: (!model.is_empty()).then_some(model),
        status: 200,
        counted: true,
        requests,
        prompt_tokens: event.prompt_tokens,
        completion_tokens: event.completion_tokens,
        cached_tokens: event.cached_tokens,
        cost_micros,
        uncached_cost_micros,
        usage_source: UsageSource::Ingested,
        price_version,
        price_estimated,
        client_ip: traffic.client_ip.map(|ip| ip.to_string()),
        anonymous_id: traffic.anonymous_id.clone(),
        latency_ms: 0,
        upstream_request_id: None,
    };
    Ok(Checked { record, authed, traffic })
}

/// `POST /api/v1/usage/events`: each event is checked on its own; valid ones are
/// stored (idempotent by id) and charged against the limits, invalid ones get their
/// own error. A replayed event is reported as a duplicate and charged nothing.
#[utoipa::path(post, path = "/api/v1/usage/events", tag = "usage", request_body = EventsBody,
    responses((status = 200, description = "Each event accepted, a duplicate (charged nothing) or rejected", body = IngestResult)))]
pub async fn ingest_events(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<EventsBody>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let started = std::time::Instant::now();
    let response = ingest(&state, admin, body).await.into_response();
    let m = &state.metrics;
    let route = tollgate_gateway::metrics::Route::UsageEvents;
    m.request(route, response.status().as_u16(), m.no_model(), started.elapsed(), std::time::Duration::ZERO);
    response
}

async fn ingest(state: &AppState, admin: Admin, body: EventsBody) -> Result<AxumJson<Value>, ApiError> {
    if body.events.is_empty() || body.events.len() > MAX_EVENTS {
        return Err(ApiError::invalid_field("events", format!("must hold 1 to {MAX_EVENTS} events")));
    }
    let now = now_ms();
    let mut results: Vec<Value> = Vec::with_capacity(body.events.len());
    let mut valid = Vec::new();
    for (index, raw) in body.events.into_iter().enumerate() {
        let id = raw.get("id").cloned().unwrap_or(Value::Null);
        match check_event(state, &admin, raw, now).await {
            Ok(checked) => {
                results.push(json!({ "index": index, "id": id, "status": "accepted" }));
                valid.push((index, checked));
            }
            Err(e) => {
                let (message, param) = match &e {
                    ApiError::BadRequest { message, param } => (message.clone(), param.clone()),
                    other => (other.to_string(), None),
                };
                results.push(json!({
                    "index": index, "id": id, "status": "rejected",
                    "error": { "message": message, "param": param, "type": "invalid_request_error" }
                }));
            }
        }
    }
    // Ids repeated inside one call count once, like replays across calls.
    let records: Vec<UsageRecord> = valid.iter().map(|(_, c)| c.record.clone()).collect();
    let fresh = if records.is_empty() { Vec::new() } else { state.ledger.append_new(records).await? };
    let (mut accepted, mut duplicates) = (0, 0);
    for ((index, checked), is_new) in valid.iter().zip(fresh) {
        if !is_new {
            results[*index]["status"] = Value::from("duplicate");
            duplicates += 1;
            continue;
        }
        accepted += 1;
        // A late event counts only in the windows it falls in, and is charged now:
        // charging it at its own time would move live counters (a sliding window
        // would be cleared by a time ahead, a day counter moved to tomorrow).
        let r = &checked.record;
        let mut items = state.limits_for(&checked.authed, &checked.traffic);
        items.retain(|item| item.counts_now(r.ts_ms, now));
        state.limiter.apply(&r.project_id, &items, r.amounts(), now).await?;
    }
    let rejected = results.len() - accepted - duplicates;
    Ok(AxumJson(json!({
        "accepted": accepted, "duplicates": duplicates, "rejected": rejected, "results": results
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// With an admin token: this key's status.
    #[serde(default)]
    key: Option<String>,
    /// With an admin token: every key of this project.
    #[serde(default)]
    project: Option<String>,
}

/// The overall state for a set of limits: the highest percentage decides.
fn overall(decision: &Decision) -> &'static str {
    let worst = decision.statuses.iter().map(|s| percent(s.used, s.spec.limit)).fold(0.0, f64::max);
    if worst >= 100.0 {
        "exceeded"
    } else if worst >= 90.0 {
        "critical"
    } else if worst >= 80.0 {
        "warning"
    } else {
        "ok"
    }
}

fn percent(used: u64, limit: u64) -> f64 {
    if limit == 0 { 100.0 } else { (used as f64 * 100.0 / limit as f64 * 10.0).round() / 10.0 }
}

async fn key_status(state: &AppState, authed: &Authed, now: i64) -> Result<Value, ApiError> {
    let traffic = Traffic { endpoint: String::new(), ..Traffic::default() };
    // Status shows the key's own limits over all traffic, scoped ones included.
    let items: Vec<_> = tollgate_core::limit_items(authed, &traffic, None);
    let scoped: Vec<_> = tollgate_core::limit::effective_limits(&authed.plan.limits, &authed.key.limit_overrides)
        .into_iter()
        .filter(|spec| !spec.is_unscoped() && spec.subject == tollgate_core::SubjectKind::Key)
        .map(|spec| tollgate_core::LimitItem::new(format!("key:{}", authed.key.id), spec).in_zone(authed.plan_zone()))
        .collect();
    let all: Vec<_> = items.into_iter().chain(scoped).collect();
    let decision = state.limiter.peek(&authed.key.project_id, &all, Amounts::default(), now).await?;
    let limits: Vec<Value> = decision
        .statuses
        .iter()
        .map(|s| {
            json!({
                "name": s.spec.name(), "metric": s.spec.metric, "window": s.spec.window,
                "subject": s.spec.subject, "used": s.used, "limit": s.spec.limit, "remaining": s.remaining,
                "percent": percent(s.used, s.spec.limit), "reset": to_rfc3339(s.reset_at_ms),
            })
        })
        .collect();
    Ok(json!({
        "key_id": authed.key.id, "project": authed.key.project_id, "plan": authed.plan.name,
        "state": overall(&decision), "limits": limits,
    }))
}

async fn resolve(state: &AppState, key: KeyRecord) -> Result<Authed, ApiError> {
    let (key_id, plan) = (key.id.clone(), key.plan.clone());
    state
        .plans
        .resolve_loading(state.catalog.as_ref(), Arc::new(key))
        .await?
        .ok_or(KeyRefusal::PlanMissing { key_id, plan })
        .map_err(ApiError::from)
}

/// `GET /api/v1/usage/status`: with an admin token, for `?key=` or `?project=`; with
/// a tollgate key as the bearer, for that key itself.
#[utoipa::path(get, path = "/api/v1/usage/status", tag = "usage", params(StatusQuery),
    security(("admin_token" = []), ("api_key" = [])),
    responses((status = 200, description = "Each limit's use and the overall state", body = StatusAnswer)))]
pub async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let token = bearer(&headers).unwrap_or_default();
    if token.starts_with(tollgate_core::key::KEY_PREFIX) {
        let authed = state.authenticate(token, now).await.map_err(ApiError::from)?;
        return Ok(AxumJson(key_status(&state, &authed, now).await?).into_response());
    }
    let admin = crate::auth::admin_from_headers(&state, &headers).await?;
    match (q.key, q.project) {
        (Some(id), None) => {
            let key = state.catalog.get_key(&id).await?.ok_or(ApiError::NotFound { what: "key", id: id.clone() })?;
            admin.check_project(&key.project_id, "key", &id)?;
            let authed = resolve(&state, key).await?;
            Ok(AxumJson(key_status(&state, &authed, now).await?).into_response())
        }
        (None, Some(project)) => {
            admin.check_project(&project, "project", &project)?;
            if state.catalog.get_project(&project).await?.is_none() {
                return Err(ApiError::NotFound { what: "project", id: project });
            }
            let keys = state
                .catalog
                .list_keys(tollgate_store::KeyQuery { project_id: Some(project.clone()), after_id: None, limit: 1000 })
                .await?;
            let mut statuses = Vec::with_capacity(keys.len());
            let mut worst = "ok";
            let rank = |s: &str| ["ok", "warning", "critical", "exceeded"].iter().position(|x| *x == s).unwrap_or(0);
            for key in keys {
                let authed = resolve(&state, key).await?;
                let status = key_status(&state, &authed, now).await?;
                if let Some(s) = status["state"].as_str()
                    && rank(s) > rank(worst)
                {
                    worst = if rank(s) == 3 {
                        "exceeded"
                    } else if rank(s) == 2 {
                        "critical"
                    } else {
                        "warning"
                    };
                }
                statuses.push(status);
            }
            Ok(AxumJson(json!({ "project": project, "state": worst, "keys": statuses })).into_response())
        }
        _ => Err(ApiError::bad_request("give exactly one of ?key= or ?project= (or call with a tollgate key)")),
    }
}

/// Records of one visitor read per page when attaching them.
const ATTACH_PAGE: usize = 500;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachBody {
    anonymous_id: String,
    key_id: String,
}

/// `POST /api/v1/anonymous/attach`: the visitor signed up and got `key_id`; their
/// usage of the current windows (this month's ledger records made under
/// `anonymous_id` in the key's project) is charged to the key's own limits as well,
/// so signing up does not reset their day. The copies are recorded as transfers
/// (`usage_source: "transferred"`) and never charge project or IP limits again.
/// Idempotent: attaching twice charges once.
#[utoipa::path(post, path = "/api/v1/anonymous/attach", tag = "usage", request_body = AttachBody,
    responses((status = 200, description = "The visitor's usage of the current windows, charged to the key", body = AttachResult)))]
pub async fn attach_anonymous(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<AttachBody>,
) -> Result<AxumJson<Value>, ApiError> {
    let key = state
        .catalog
        .get_key(&body.key_id)
        .await?
        .ok_or(ApiError::NotFound { what: "key", id: body.key_id.clone() })?;
    admin.check_project(&key.project_id, "key", &body.key_id)?;
    let now = now_ms();
    let authed = resolve(&state, key).await?;
    state.ledger.flush().await?;
    // The current month in any zone a limit may be in (apply drops what is older).
    let since = tollgate_store::totals::earliest_month_start(now).min(now - tollgate_core::calendar::MS_PER_HOUR);
    let mut totals = Amounts::default();
    let mut attached = 0;
    // Only this visitor's records (an index on project, anonymous id and time), a
    // page at a time.
    let mut after = None;
    loop {
        let page = state
            .ledger
            .anonymous_records(&authed.key.project_id, &body.anonymous_id, since, after.take(), ATTACH_PAGE)
            .await?;
        let full = page.len() == ATTACH_PAGE;
        after = page.last().map(|r| (r.ts_ms, r.id.clone()));
        let moved: Vec<UsageRecord> = page
            .into_iter()
            .filter(|r| r.counted && r.key_id != authed.key.id)
            .map(|r| UsageRecord {
                id: format!("attach:{}:{}", authed.key.id, r.id),
                key_id: authed.key.id.clone(),
                endpoint: tollgate_core::TRANSFER_ENDPOINT.to_owned(),
                usage_source: UsageSource::Transferred,
                anonymous_id: None,
                client_ip: None,
                ..r
            })
            .collect();
        let fresh = if moved.is_empty() { Vec::new() } else { state.ledger.append_new(moved.clone()).await? };
        for (record, is_new) in moved.iter().zip(fresh) {
            if !is_new {
                continue;
            }
            // The key's own limits only: project and IP counters already hold this usage.
            let items = tollgate_core::record_items(&authed, record, None);
            state.limiter.apply(&record.project_id, &items, record.amounts(), record.ts_ms).await?;
            let a = record.amounts();
            totals.requests += a.requests;
            totals.input_tokens += a.input_tokens;
            totals.output_tokens += a.output_tokens;
            totals.cost_micros += a.cost_micros;
            attached += 1;
        }
        if !full {
            break;
        }
    }
    Ok(AxumJson(json!({
        "key_id": authed.key.id, "anonymous_id": body.anonymous_id, "records_attached": attached,
        "requests": totals.requests, "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens, "cost_micros": totals.cost_micros,
    })))
}
