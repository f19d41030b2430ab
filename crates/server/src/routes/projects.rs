//! Projects and their operator-only settings under `/api/v1/projects`, and the policy
//! a project-scoped admin token's key changes must follow: only the plans the
//! operator allows the project, and no limit raised beyond the plan or the
//! project's `max_overrides`.
//!
//! Project-wide limits (`limits`, subject `project`) are charged on every request of
//! every key of the project, whatever its plan (`tollgate_core::limit_items`), so a
//! new key cannot escape them.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as AxumJson, Router};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use tollgate_core::calendar::to_rfc3339;
use tollgate_core::limit::{is_slug, validate_limits};
use tollgate_core::{LimitSpec, Project, ProjectSettings, SubjectKind};

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path};
use crate::routes::admin::{DataList, NamedLimit};
use tollgate_gateway::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects", get(list_projects).post(create_project))
        .route("/api/v1/projects/{id}", get(get_project).patch(update_project))
}

type ApiResult<T> = Result<T, ApiError>;

/// Distinguishes a field that is absent (leave it) from one set to null (clear it).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A project as `POST` and `PATCH` take it: absent fields are left as they are (the
/// defaults on create). `id` is required on create; on `PATCH` it may only repeat
/// the path's.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProjectBody {
    /// 1-64 characters of a-z, 0-9, '-' or '_'; required on create.
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    id: Option<String>,
    /// At most 200 characters (default: the id).
    #[serde(default)]
    #[schema(max_length = 200)]
    name: Option<String>,
    /// Plans a project token may put the project's keys on (operator only).
    #[serde(default)]
    allowed_plans: Option<Vec<String>>,
    /// The most a project token may raise a key's limits to (operator only).
    #[serde(default)]
    max_overrides: Option<Vec<LimitSpec>>,
    /// Project-wide limits (subject `project`, the default here). Raw, so that an
    /// omitted `subject` can default to `project`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<LimitSpec>>)]
    limits: Option<Vec<Value>>,
    /// The `OpenAI-Organization` header sent upstream for this project; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    openai_organization: Option<Value>,
    /// The `OpenAI-Project` header sent upstream for this project; null clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    openai_project: Option<Value>,
    /// An IANA zone name; null clears it (UTC).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    time_zone: Option<Value>,
    /// The response cache: `enabled`, `ttl_secs`, `deterministic_only`, `hits_count`,
    /// `semantic` (the semantic cache for chat requests, default false) and
    /// `semantic_threshold` (the least cosine similarity of a semantic hit, above 0 and
    /// at most 1, default 0.95); members given replace those stored (docs/caching.md).
    #[serde(default)]
    cache: Option<Value>,
    /// Whose provider key the project's requests use when it stored none of its own for
    /// the provider: `operator` (the default) or `never` (refused,
    /// `provider_key_required`). Operator only.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    byok_fallback: Option<Value>,
}

fn check_project_name(name: &str) -> ApiResult<()> {
    if name.len() > 200 {
        return Err(ApiError::invalid_field("name", "must be at most 200 characters"));
    }
    Ok(())
}

/// An upstream header value the operator sets: null clears it.
fn header_setting(field: &str, value: &Value) -> ApiResult<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s)
            if !s.is_empty()
                && s.len() <= 256
                && s.bytes().all(|b| b.is_ascii_graphic())
                && HeaderValue::from_str(s).is_ok() =>
        {
            Ok(Some(s.clone()))
        }
        _ => Err(ApiError::invalid_field(field, "must be null or 1-256 visible ASCII characters")),
    }
}

/// Applies the settings fields a body sets to `settings`, validating each.
async fn apply_settings(state: &AppState, settings: &mut ProjectSettings, body: ProjectBody) -> ApiResult<()> {
    if let Some(plans) = body.allowed_plans {
        if plans.len() > 64 {
            return Err(ApiError::invalid_field("allowed_plans", "may name at most 64 plans"));
        }
        let mut unique: Vec<String> = Vec::with_capacity(plans.len());
        for plan in plans {
            if !is_slug(&plan) {
                return Err(ApiError::invalid_field("allowed_plans", format!("'{plan}' is not a plan name")));
            }
            if state.plans.get(&plan).is_none() && state.catalog.get_plan(&plan).await?.is_none() {
                return Err(ApiError::invalid_field("allowed_plans", format!("no plan named '{plan}'")));
            }
            if !unique.contains(&plan) {
                unique.push(plan);
            }
        }
        settings.allowed_plans = unique;
    }
    if let Some(limits) = body.max_overrides {
        validate_limits(&limits).map_err(|e| ApiError::invalid_field("max_overrides", e))?;
        settings.max_overrides = limits;
    }
    if let Some(raw) = body.limits {
        let mut limits = Vec::with_capacity(raw.len());
        for (index, mut value) in raw.into_iter().enumerate() {
            if let Value::Object(map) = &mut value {
                map.entry("subject").or_insert_with(|| Value::String("project".into()));
            }
            let spec: LimitSpec = serde_json::from_value(value)
                .map_err(|e| ApiError::invalid_field("limits", format!("limits[{index}]: {e}")))?;
            if spec.subject != SubjectKind::Project {
                return Err(ApiError::invalid_field(
                    "limits",
                    format!("limits[{index}]: a project limit counts the whole project: its subject is 'project'"),
                ));
            }
            limits.push(spec);
        }
        validate_limits(&limits).map_err(|e| ApiError::invalid_field("limits", e))?;
        settings.limits = limits;
    }
    if let Some(v) = &body.openai_organization {
        settings.openai_organization = header_setting("openai_organization", v)?;
    }
    if let Some(v) = &body.openai_project {
        settings.openai_project = header_setting("openai_project", v)?;
    }
    match &body.time_zone {
        None => {}
        Some(Value::Null) => settings.time_zone = None,
        Some(Value::String(name)) => settings.time_zone = crate::routes::admin::checked_zone("time_zone", Some(name))?,
        Some(_) => return Err(ApiError::invalid_field("time_zone", "must be null or an IANA zone name")),
    }
    if let Some(cache) = body.cache {
        settings.cache = cache_setting(&settings.cache, cache)?;
    }
    if let Some(value) = &body.byok_fallback {
        settings.byok_fallback = value.as_str().and_then(tollgate_core::ByokFallback::parse).ok_or_else(|| {
            ApiError::invalid_field("byok_fallback", "must be \"operator\" (the operator's key) or \"never\"")
        })?;
    }
    Ok(())
}

/// The project's cache settings with the members of `patch` applied (an object;
/// `hits_count` members likewise), checked.
fn cache_setting(current: &tollgate_core::CacheSettings, patch: Value) -> ApiResult<tollgate_core::CacheSettings> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::invalid_field("cache", "must be an object"));
    };
    let mut merged = match serde_json::to_value(current) {
        Ok(Value::Object(map)) => map,
        _ => return Err(ApiError::internal("the stored cache settings do not serialize")),
    };
    if let Some(threshold) = patch.get("semantic_threshold")
        && !threshold.as_f64().is_some_and(|t| t > 0.0 && t <= 1.0)
    {
        return Err(ApiError::invalid_field(
            "cache.semantic_threshold",
            "must be a cosine similarity above 0 and at most 1 (default 0.95)",
        ));
    }
    for (name, value) in patch {
        match (name.as_str(), value, merged.get_mut("hits_count")) {
            ("hits_count", Value::Object(counts), Some(Value::Object(stored))) => stored.extend(counts),
            (_, value, _) => {
                merged.insert(name, value);
            }
        }
    }
    let settings: tollgate_core::CacheSettings =
        serde_json::from_value(Value::Object(merged)).map_err(|e| ApiError::invalid_field("cache", e.to_string()))?;
    if settings.ttl_secs == 0 || settings.ttl_secs > tollgate_core::MAX_CACHE_TTL_SECS {
        return Err(ApiError::invalid_field(
            "cache.ttl_secs",
            format!("must be from 1 to {}", tollgate_core::MAX_CACHE_TTL_SECS),
        ));
    }
    Ok(settings)
}

/// A project and its settings as the API shows them.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub allowed_plans: Vec<String>,
    pub max_overrides: Vec<NamedLimit>,
    pub limits: Vec<NamedLimit>,
    pub openai_organization: Option<String>,
    pub openai_project: Option<String>,
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<tollgate_core::Zone>,
    /// The response cache's settings, the semantic cache's included (docs/caching.md).
    #[schema(value_type = Object)]
    pub cache: tollgate_core::CacheSettings,
    /// `operator` or `never`: whose provider key a request uses when the project has
    /// none of its own for the provider (docs/providers.md, "Bring your own key").
    pub byok_fallback: String,
}

pub fn project_view(p: &Project) -> ProjectView {
    let s = &p.settings;
    ProjectView {
        id: p.id.clone(),
        name: p.name.clone(),
        created_at: to_rfc3339(p.created_at_ms),
        allowed_plans: s.allowed_plans.clone(),
        max_overrides: s.max_overrides.iter().map(NamedLimit::of).collect(),
        limits: s.limits.iter().map(NamedLimit::of).collect(),
        openai_organization: s.openai_organization.clone(),
        openai_project: s.openai_project.clone(),
        time_zone: s.time_zone.clone(),
        cache: s.cache.clone(),
        byok_fallback: s.byok_fallback.as_str().to_owned(),
    }
}

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body = ProjectBody,
    responses((status = 201, description = "The project was created", body = ProjectView),
              (status = 409, description = "A project with that id exists", body = ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    admin: Admin,
    Json(mut body): Json<ProjectBody>,
) -> ApiResult<Response> {
    admin.require_operator()?;
    let id = body.id.take().ok_or_else(|| ApiError::invalid_field("id", "is required"))?;
    if !is_slug(&id) {
        return Err(ApiError::invalid_field("id", "must be 1-64 characters of a-z, 0-9, '-' or '_'"));
    }
    let name = body.name.take().unwrap_or_else(|| id.clone());
    check_project_name(&name)?;
    let mut project = Project::new(id, name, now_ms());
    apply_settings(&state, &mut project.settings, body).await?;
    let project = state.catalog.create_project(project).await?;
    state.plans.put_project(project.clone());
    Ok((StatusCode::CREATED, AxumJson(project_view(&project))).into_response())
}

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects",
    responses((status = 200, description = "Every project this token may see", body = DataList<ProjectView>)))]
async fn list_projects(State(state): State<AppState>, admin: Admin) -> ApiResult<AxumJson<DataList<ProjectView>>> {
    let projects = state.catalog.list_projects().await?;
    let data = projects
        .iter()
        .filter(|p| admin.0.project_id.as_ref().is_none_or(|own| own == &p.id))
        .map(project_view)
        .collect();
    Ok(AxumJson(DataList { data }))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, description = "The project", body = ProjectView)))]
async fn get_project(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<ProjectView>> {
    admin.check_project(&id, "project", &id)?;
    let project = state.catalog.get_project(&id).await?.ok_or(ApiError::NotFound { what: "project", id })?;
    Ok(AxumJson(project_view(&project)))
}

/// `PATCH /api/v1/projects/{id}`: operator only (a project token reading its own
/// project is fine; changing what it is allowed is not).
#[utoipa::path(patch, path = "/api/v1/projects/{id}", tag = "projects", request_body = ProjectBody,
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, description = "The project, changed", body = ProjectView)))]
async fn update_project(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(mut body): Json<ProjectBody>,
) -> ApiResult<AxumJson<ProjectView>> {
    admin.check_project(&id, "project", &id)?;
    admin.require_operator()?;
    if body.id.take().is_some_and(|given| given != id) {
        return Err(ApiError::invalid_field("id", "does not match the project in the path"));
    }
    let mut project =
        state.catalog.get_project(&id).await?.ok_or_else(|| ApiError::NotFound { what: "project", id: id.clone() })?;
    if let Some(name) = body.name.take() {
        check_project_name(&name)?;
        project.name = name;
    }
    apply_settings(&state, &mut project.settings, body).await?;
    let project = state.catalog.update_project(project).await?;
    state.plans.put_project(project.clone());
    Ok(AxumJson(project_view(&project)))
}

/// What a project-scoped token may do to a key of `project_id`: put it on a plan the
/// operator allows the project (checked when the plan changes), and set overrides
/// that raise no limit beyond the plan's or the project's `max_overrides` (checked
/// whenever the plan or the overrides change). The operator may do anything.
pub async fn check_key_policy(
    state: &AppState,
    admin: &Admin,
    project_id: &str,
    plan: &str,
    plan_changed: bool,
    overrides: &[LimitSpec],
) -> ApiResult<()> {
    if admin.is_operator() {
        return Ok(());
    }
    let project = state
        .catalog
        .get_project(project_id)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: "project", id: project_id.to_owned() })?;
    let settings = &project.settings;
    if plan_changed && !settings.allows_plan(plan) {
        return Err(ApiError::Forbidden(format!(
            "plan '{plan}' is not one this project may assign (allowed: {}); only the operator can put a key on it",
            if settings.allowed_plans.is_empty() { "none".to_owned() } else { settings.allowed_plans.join(", ") }
        )));
    }
    let limits = match state.plans.get(plan) {
        Some(p) => p.limits.clone(),
        None => state.catalog.get_plan(plan).await?.map(|p| p.limits).unwrap_or_default(),
    };
    settings.check_overrides(&limits, overrides).map_err(|e| ApiError::Forbidden(format!("limits: {e}")))
}
