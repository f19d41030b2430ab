//! The admin API under `/api/v1`: plans and keys here; the ledger's listing in
//! [`ledger`](crate::routes::ledger), projects and their settings in
//! [`projects`](crate::routes::projects), admin tokens in
//! [`tokens`](crate::routes::tokens). Handlers validate, ask the domain, and hand
//! records to the stores.
//!
//! Tenant isolation lives in [`Admin::check_project`]: a token scoped to one project
//! gets 404 for anything of another project, exactly as if it did not exist. What a
//! scoped token may do to its own keys (plans, overrides) is
//! [`check_key_policy`](crate::routes::projects::check_key_policy).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxumJson, Router};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use tollgate_core::calendar::to_rfc3339;
use tollgate_core::limit::{is_slug, validate_limits};
use tollgate_core::{ApiKey, DEFAULT_PLAN, KeyRecord, KeyState, LimitSpec, Plan};
use tollgate_store::KeyQuery;

use crate::app::{AppState, random_bytes};
use crate::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path, Query};
use crate::http::timestamp_field;
use crate::routes::projects::check_key_policy;
use tollgate_gateway::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(crate::routes::projects::routes())
        .merge(crate::routes::tokens::routes())
        .merge(crate::routes::provider_keys::routes())
        .route("/api/v1/plans", get(list_plans).post(create_plan))
        .route("/api/v1/plans/{name}", get(get_plan).put(replace_plan).patch(update_plan).delete(delete_plan))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/verify", post(crate::routes::verify::verify))
        .route("/api/v1/keys/{id}", get(get_key).patch(update_key).delete(delete_key))
        .route("/api/v1/keys/{id}/revoke", post(revoke_key))
        .route("/api/v1/keys/{id}/regenerate", post(regenerate_key))
        .route("/api/v1/usage", get(crate::routes::ledger::list_usage))
        .route("/api/v1/usage/export", get(crate::routes::export::usage_export))
        .route("/api/v1/analytics/export", get(crate::routes::export::rollup_export))
        .route("/api/v1/analytics/summary", get(crate::routes::analytics::summary))
        .route("/api/v1/analytics/timeseries", get(crate::routes::analytics::timeseries))
        .route("/api/v1/analytics/forecast", get(crate::routes::analytics::forecast))
        .route("/api/v1/analytics/anomalies", get(crate::routes::analytics::anomalies))
        .route("/api/v1/usage/events", post(crate::routes::usage::ingest_events))
        .route("/api/v1/usage/status", get(crate::routes::usage::status))
        .route("/api/v1/anonymous/attach", post(crate::routes::usage::attach_anonymous))
}

type ApiResult<T> = Result<T, ApiError>;

// ----- plans -----

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanBody {
    /// Required on `POST`; on `PUT` it may only repeat the path's.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    limits: Vec<LimitSpec>,
    /// An IANA zone name for the plan's day and month windows; absent or null: the
    /// project's zone, else UTC.
    #[serde(default)]
    time_zone: Option<String>,
}

/// Parses an optional zone name from a request body, naming `field` when it is unknown.
pub(crate) fn checked_zone(field: &'static str, name: Option<&str>) -> ApiResult<Option<tollgate_core::Zone>> {
    name.map(|n| tollgate_core::Zone::parse(n).map_err(|e| ApiError::invalid_field(field, e))).transpose()
}

fn checked_plan(name: String, body: PlanBody) -> ApiResult<Plan> {
    if !is_slug(&name) {
        return Err(ApiError::invalid_field("name", "must be 1-64 characters of a-z, 0-9, '-' or '_'"));
    }
    validate_limits(&body.limits).map_err(|e| ApiError::invalid_field("limits", e))?;
    let time_zone = checked_zone("time_zone", body.time_zone.as_deref())?;
    Ok(Plan { name, description: body.description, limits: body.limits, time_zone })
}

/// A limit as answers show it: every field of the limit (its subject and scope too),
/// and its name (`requests_per_minute`, ...).
#[derive(Serialize, utoipa::ToSchema)]
pub struct NamedLimit {
    pub metric: tollgate_core::Metric,
    pub window: tollgate_core::Window,
    pub limit: u64,
    /// Absent: `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<tollgate_core::SubjectKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub name: String,
}

impl NamedLimit {
    pub fn of(spec: &LimitSpec) -> Self {
        Self {
            metric: spec.metric,
            window: spec.window,
            limit: spec.limit,
            subject: (!spec.subject.is_key()).then_some(spec.subject),
            provider: spec.provider.as_deref().map(str::to_owned),
            model: spec.model.as_deref().map(str::to_owned),
            endpoint: spec.endpoint.as_deref().map(str::to_owned),
            name: spec.name(),
        }
    }
}

/// A plan as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanView {
    pub name: String,
    pub description: Option<String>,
    pub limits: Vec<NamedLimit>,
    /// The IANA zone of the plan's day and month windows (null: the project's, else UTC).
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<tollgate_core::Zone>,
}

/// Every item of a listing.
#[derive(Serialize, utoipa::ToSchema)]
pub struct DataList<T: utoipa::ToSchema> {
    pub data: Vec<T>,
}

fn plan_view(p: &Plan) -> PlanView {
    PlanView {
        name: p.name.clone(),
        description: p.description.clone(),
        limits: p.limits.iter().map(NamedLimit::of).collect(),
        time_zone: p.time_zone.clone(),
    }
}

#[utoipa::path(get, path = "/api/v1/plans", tag = "plans",
    responses((status = 200, description = "Every plan", body = DataList<PlanView>)))]
async fn list_plans(State(state): State<AppState>, _admin: Admin) -> ApiResult<AxumJson<DataList<PlanView>>> {
    let plans = state.catalog.list_plans().await?;
    Ok(AxumJson(DataList { data: plans.iter().map(plan_view).collect() }))
}

#[utoipa::path(get, path = "/api/v1/plans/{name}", tag = "plans",
    params(("name" = String, Path, description = "The plan's name")),
    responses((status = 200, description = "The plan", body = PlanView)))]
async fn get_plan(
    State(state): State<AppState>,
    _admin: Admin,
    Path(name): Path<String>,
) -> ApiResult<AxumJson<PlanView>> {
    let plan = state.catalog.get_plan(&name).await?.ok_or(ApiError::NotFound { what: "plan", id: name })?;
    Ok(AxumJson(plan_view(&plan)))
}

#[utoipa::path(post, path = "/api/v1/plans", tag = "plans", request_body = PlanBody,
    responses((status = 201, description = "The plan was created", body = PlanView),
              (status = 409, description = "A plan of that name exists", body = ErrorBody)))]
async fn create_plan(
    State(state): State<AppState>,
    admin: Admin,
    Json(mut body): Json<PlanBody>,
) -> ApiResult<Response> {
    admin.require_operator()?;
    let name = body.name.take().ok_or_else(|| ApiError::invalid_field("name", "is required"))?;
    let plan = checked_plan(name, body)?;
    if !state.catalog.insert_plan_if_absent(plan.clone()).await? {
        return Err(ApiError::Conflict(format!("plan '{}' already exists; use PUT to change it", plan.name)));
    }
    state.plans.put(plan.clone());
    Ok((StatusCode::CREATED, AxumJson(plan_view(&plan))).into_response())
}

#[utoipa::path(put, path = "/api/v1/plans/{name}", tag = "plans", request_body = PlanBody,
    params(("name" = String, Path, description = "The plan's name")),
    responses((status = 200, description = "The plan, replaced (or created)", body = PlanView)))]
async fn replace_plan(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Json(body): Json<PlanBody>,
) -> ApiResult<AxumJson<PlanView>> {
    admin.require_operator()?;
    if body.name.as_ref().is_some_and(|n| n != &name) {
        return Err(ApiError::invalid_field("name", "does not match the plan in the path"));
    }
    let plan = checked_plan(name, body)?;
    state.catalog.put_plan(plan.clone()).await?;
    state.plans.put(plan.clone());
    Ok(AxumJson(plan_view(&plan)))
}

/// `PATCH /api/v1/plans/{name}`: changes some limits and keeps the others. Each of
/// `limits` replaces the plan's limit in the same slot (metric, window, subject and
/// scope) or is added; `remove` drops limits by name (`requests_per_minute`);
/// `description` replaces the description (`null` clears it). `PUT` still replaces
/// the whole plan.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanPatch {
    /// A new description; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Value>,
    #[serde(default)]
    limits: Vec<LimitSpec>,
    #[serde(default)]
    remove: Vec<String>,
    /// An IANA zone name; null: the project's zone (else UTC).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    time_zone: Option<Value>,
}

#[utoipa::path(patch, path = "/api/v1/plans/{name}", tag = "plans", request_body = PlanPatch,
    params(("name" = String, Path, description = "The plan's name")),
    responses((status = 200, description = "The plan, changed", body = PlanView)))]
async fn update_plan(
    State(state): State<AppState>,
    admin: Admin,
    Path(name): Path<String>,
    Json(patch): Json<PlanPatch>,
) -> ApiResult<AxumJson<PlanView>> {
    admin.require_operator()?;
    let mut plan = state.catalog.get_plan(&name).await?.ok_or(ApiError::NotFound { what: "plan", id: name })?;
    for gone in &patch.remove {
        let before = plan.limits.len();
        plan.limits.retain(|l| &l.name() != gone);
        if plan.limits.len() == before {
            return Err(ApiError::invalid_field("remove", format!("the plan has no limit named '{gone}'")));
        }
    }
    for limit in patch.limits {
        match plan.limits.iter_mut().find(|l| l.slot() == limit.slot()) {
            Some(existing) => *existing = limit,
            None => plan.limits.push(limit),
        }
    }
    match patch.description {
        None => {}
        Some(Value::Null) => plan.description = None,
        Some(Value::String(d)) => plan.description = Some(d),
        Some(_) => return Err(ApiError::invalid_field("description", "must be a string or null")),
    }
    match patch.time_zone {
        None => {}
        Some(Value::Null) => plan.time_zone = None,
        Some(Value::String(zone)) => plan.time_zone = checked_zone("time_zone", Some(&zone))?,
        Some(_) => return Err(ApiError::invalid_field("time_zone", "must be an IANA zone name or null")),
    }
    validate_limits(&plan.limits).map_err(|e| ApiError::invalid_field("limits", e))?;
    state.catalog.put_plan(plan.clone()).await?;
    state.plans.put(plan.clone());
    Ok(AxumJson(plan_view(&plan)))
}

#[utoipa::path(delete, path = "/api/v1/plans/{name}", tag = "plans",
    params(("name" = String, Path, description = "The plan's name")),
    responses((status = 204, description = "The plan was deleted")))]
async fn delete_plan(State(state): State<AppState>, admin: Admin, Path(name): Path<String>) -> ApiResult<StatusCode> {
    admin.require_operator()?;
    if !state.catalog.delete_plan(&name).await? {
        return Err(ApiError::NotFound { what: "plan", id: name });
    }
    state.plans.remove(&name);
    Ok(StatusCode::NO_CONTENT)
}

// ----- keys -----

/// Distinguishes a field that is absent (leave it) from one set to null (clear it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateKey {
    project: String,
    /// Default `free`.
    #[serde(default)]
    plan: Option<String>,
    /// At most 200 characters.
    #[serde(default)]
    #[schema(max_length = 200)]
    name: Option<String>,
    /// Free-form JSON, at most 16 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// RFC 3339 or Unix seconds, in the future; null: never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::http::TimestampInput>)]
    expires_at: Option<Value>,
    #[serde(default)]
    limits: Option<Vec<LimitSpec>>,
}

fn check_name(name: &Option<String>) -> ApiResult<()> {
    if name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::invalid_field("name", "must be at most 200 characters"));
    }
    Ok(())
}

fn check_metadata(metadata: &Map<String, Value>) -> ApiResult<()> {
    let size = serde_json::to_vec(metadata).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > 16 * 1024 {
        return Err(ApiError::invalid_field("metadata", "must be at most 16 KiB of JSON"));
    }
    Ok(())
}

/// Whether a key or an admin token works now.
#[derive(Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    Active,
    Revoked,
    Expired,
}

impl From<KeyState> for CredentialStatus {
    fn from(s: KeyState) -> Self {
        match s {
            KeyState::Active => Self::Active,
            KeyState::Revoked => Self::Revoked,
            KeyState::Expired => Self::Expired,
        }
    }
}

/// A key as the API shows it (never its secret, but once when made).
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyView {
    /// The public id, also the start of the secret.
    pub id: String,
    pub project: String,
    pub name: Option<String>,
    pub plan: String,
    pub status: CredentialStatus,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Per-key limit overrides.
    pub limits: Vec<LimitSpec>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

/// A key just made or given a new secret: the secret is shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyWithSecret {
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret (`tg_...`): only its hash is kept.
    pub key: String,
    /// On regeneration: until when the old secret still works (null: it stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_key_valid_until: Option<Option<String>>,
}

/// A page of keys; `next_after` is the `after` of the next page (null: the last).
#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub data: Vec<KeyView>,
    pub next_after: Option<String>,
}

fn key_view(key: &KeyRecord, now: i64) -> KeyView {
    KeyView {
        id: key.id.clone(),
        project: key.project_id.clone(),
        name: key.name.clone(),
        plan: key.plan.clone(),
        status: key.state(now).into(),
        metadata: key.metadata.clone(),
        limits: key.limit_overrides.clone(),
        created_at: to_rfc3339(key.created_at_ms),
        expires_at: key.expires_at_ms.map(to_rfc3339),
        revoked_at: key.revoked_at_ms.map(to_rfc3339),
    }
}

async fn check_plan_exists(state: &AppState, plan: &str) -> ApiResult<()> {
    if state.plans.get(plan).is_none() && state.catalog.get_plan(plan).await?.is_none() {
        return Err(ApiError::invalid_field("plan", format!("no plan named '{plan}'")));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys", request_body = CreateKey,
    responses((status = 201, description = "The key, with its secret shown once", body = KeyWithSecret)))]
async fn create_key(State(state): State<AppState>, admin: Admin, Json(body): Json<CreateKey>) -> ApiResult<Response> {
    admin.check_project(&body.project, "project", &body.project)?;
    if state.catalog.get_project(&body.project).await?.is_none() {
        return Err(ApiError::invalid_field("project", format!("no project named '{}'", body.project)));
    }
    let plan = body.plan.unwrap_or_else(|| DEFAULT_PLAN.to_owned());
    check_plan_exists(&state, &plan).await?;
    check_name(&body.name)?;
    let metadata = body.metadata.unwrap_or_default();
    check_metadata(&metadata)?;
    let overrides = body.limits.unwrap_or_default();
    validate_limits(&overrides).map_err(|e| ApiError::invalid_field("limits", e))?;
    check_key_policy(&state, &admin, &body.project, &plan, true, &overrides).await?;
    let now = now_ms();
    let expires_at_ms = match &body.expires_at {
        Some(v) => timestamp_field("expires_at", v)?,
        None => None,
    };
    if expires_at_ms.is_some_and(|t| t <= now) {
        return Err(ApiError::invalid_field("expires_at", "must be in the future"));
    }
    let key = ApiKey::generate(&random_bytes()?).ok_or_else(|| ApiError::internal("key generation"))?;
    let record = KeyRecord {
        id: key.public_id().to_owned(),
        project_id: body.project,
        name: body.name,
        plan,
        metadata,
        limit_overrides: overrides,
        created_at_ms: now,
        expires_at_ms,
        revoked_at_ms: None,
        version: 1,
    };
    let record = state.catalog.create_key(record, key.hash()).await?;
    let view =
        KeyWithSecret { view: key_view(&record, now), key: key.expose().to_owned(), previous_key_valid_until: None };
    Ok((StatusCode::CREATED, AxumJson(view)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListKeys {
    /// Only this project's keys (a project token: its own).
    #[serde(default)]
    project: Option<String>,
    /// The `next_after` of the previous page.
    #[serde(default)]
    after: Option<String>,
    /// Keys per page, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/keys", tag = "keys", params(ListKeys),
    responses((status = 200, description = "A page of keys, by id", body = KeyList)))]
async fn list_keys(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ListKeys>,
) -> ApiResult<AxumJson<KeyList>> {
    let project = admin.project_filter(q.project)?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::invalid_field("limit", "must be between 1 and 1000"));
    }
    let keys = state.catalog.list_keys(KeyQuery { project_id: project, after_id: q.after, limit }).await?;
    let now = now_ms();
    let next = (keys.len() == limit).then(|| keys.last().map(|k| k.id.clone())).flatten();
    let data = keys.iter().map(|k| key_view(k, now)).collect();
    Ok(AxumJson(KeyList { data, next_after: next }))
}

pub(crate) async fn load_key(state: &AppState, admin: &Admin, id: &str) -> ApiResult<KeyRecord> {
    let key = state.catalog.get_key(id).await?.ok_or_else(|| ApiError::NotFound { what: "key", id: id.to_owned() })?;
    admin.check_project(&key.project_id, "key", id)?;
    Ok(key)
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses((status = 200, description = "The key", body = KeyView)))]
async fn get_key(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<AxumJson<KeyView>> {
    let key = load_key(&state, &admin, &id).await?;
    Ok(AxumJson(key_view(&key, now_ms())))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateKey {
    #[serde(default)]
    plan: Option<String>,
    /// null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    name: Option<Value>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    /// RFC 3339 or Unix seconds; null: never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<crate::http::TimestampInput>)]
    expires_at: Option<Value>,
    #[serde(default)]
    limits: Option<Vec<LimitSpec>>,
}

#[utoipa::path(patch, path = "/api/v1/keys/{id}", tag = "keys", request_body = UpdateKey,
    params(("id" = String, Path, description = "The key's public id")),
    responses((status = 200, description = "The key, changed", body = KeyView)))]
async fn update_key(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<UpdateKey>,
) -> ApiResult<AxumJson<KeyView>> {
    let mut key = load_key(&state, &admin, &id).await?;
    let plan_changed = body.plan.as_ref().is_some_and(|p| p != &key.plan);
    let policy_applies = plan_changed || body.limits.is_some();
    if let Some(plan) = body.plan {
        check_plan_exists(&state, &plan).await?;
        key.plan = plan;
    }
    match body.name {
        None => {}
        Some(Value::Null) => key.name = None,
        Some(Value::String(s)) => {
            key.name = Some(s);
            check_name(&key.name)?;
        }
        Some(_) => return Err(ApiError::invalid_field("name", "must be a string or null")),
    }
    if let Some(metadata) = body.metadata {
        check_metadata(&metadata)?;
        key.metadata = metadata;
    }
    if let Some(v) = &body.expires_at {
        key.expires_at_ms = timestamp_field("expires_at", v)?;
    }
    if let Some(limits) = body.limits {
        validate_limits(&limits).map_err(|e| ApiError::invalid_field("limits", e))?;
        key.limit_overrides = limits;
    }
    if policy_applies {
        check_key_policy(&state, &admin, &key.project_id, &key.plan, plan_changed, &key.limit_overrides).await?;
    }
    let key = state.catalog.update_key(key).await?;
    Ok(AxumJson(key_view(&key, now_ms())))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses((status = 200, description = "The key, revoked (idempotent); it stays readable with status \
        `revoked`, and its usage stays in the ledger", body = KeyView)))]
async fn delete_key(state: State<AppState>, admin: Admin, id: Path<String>) -> ApiResult<AxumJson<KeyView>> {
    revoke_key(state, admin, id).await
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "keys",
    params(("id" = String, Path, description = "The key's public id")),
    responses((status = 200, description = "The key, revoked (idempotent)", body = KeyView)))]
async fn revoke_key(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<KeyView>> {
    let mut key = load_key(&state, &admin, &id).await?;
    let now = now_ms();
    if key.revoked_at_ms.is_none() {
        key.revoked_at_ms = Some(now);
        key = state.catalog.update_key(key).await?;
    }
    Ok(AxumJson(key_view(&key, now)))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Regenerate {
    /// Seconds during which the old secret keeps working (0: stops at once; at most 30 days).
    #[serde(default)]
    #[schema(maximum = 2592000)]
    grace_period_secs: u64,
}

#[utoipa::path(post, path = "/api/v1/keys/{id}/regenerate", tag = "keys",
    request_body(content = Option<Regenerate>, description = "Optional; no body: no grace period"),
    params(("id" = String, Path, description = "The key's public id")),
    responses((status = 200, description = "The key with its new secret, shown once", body = KeyWithSecret),
              (status = 409, description = "The key is revoked", body = ErrorBody)))]
async fn regenerate_key(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<AxumJson<KeyWithSecret>> {
    // The body is optional: no body means no grace period.
    let options: Regenerate = crate::http::extract::optional_object(&body)?;
    let key = load_key(&state, &admin, &id).await?;
    let grace = options.grace_period_secs;
    if grace > 30 * 24 * 3600 {
        return Err(ApiError::invalid_field("grace_period_secs", "must be at most 30 days"));
    }
    let now = now_ms();
    if key.state(now) == KeyState::Revoked {
        return Err(ApiError::Conflict(format!("key '{id}' is revoked; create a new key instead")));
    }
    let new_key =
        ApiKey::with_public_id(&key.id, &random_bytes()?).ok_or_else(|| ApiError::internal("key generation"))?;
    let old_valid_until = (grace > 0).then(|| now + grace as i64 * 1000);
    let record = state.catalog.rotate_key_secret(&key.id, new_key.hash(), old_valid_until).await?;
    Ok(AxumJson(KeyWithSecret {
        view: key_view(&record, now),
        key: new_key.expose().to_owned(),
        previous_key_valid_until: Some(old_valid_until.map(to_rfc3339)),
    }))
}
