//! Admin tokens under `/api/v1`: create (with an optional name and expiry), list,
//! get and revoke. A token is shown once, when made; afterwards only its id and its
//! first characters (`prefix`) are ever shown, and only its hash is stored.
//!
//! The operator makes tokens; a project-scoped token may list and revoke the tokens
//! of its own project (404 for any other), so a leaked one can be shut off from
//! within the project.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxumJson, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_core::calendar::to_rfc3339;
use tollgate_core::{AdminToken, KeyState};
use tollgate_store::AdminTokenRecord;

use crate::app::{AppState, random_bytes};
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::http::timestamp_field;
use tollgate_gateway::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/tokens", post(create_project_token))
        .route("/api/v1/admin-tokens", get(list_tokens).post(create_token))
        .route("/api/v1/admin-tokens/{id}", get(get_token).delete(revoke_token))
        .route("/api/v1/admin-tokens/{id}/revoke", post(revoke_token))
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// Only on `POST /api/v1/admin-tokens`: the project (absent or null: an operator token).
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    expires_at: Option<Value>,
}

/// An optional JSON body: none (or only whitespace) is the defaults.
fn optional_body(body: &[u8]) -> ApiResult<CreateToken> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(CreateToken::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

pub fn token_view(t: &AdminTokenRecord, now: i64) -> Value {
    let status = match t.state(now) {
        KeyState::Active => "active",
        KeyState::Revoked => "revoked",
        KeyState::Expired => "expired",
    };
    json!({
        "id": t.id,
        "project": t.project_id,
        "name": t.name,
        "prefix": t.prefix,
        "status": status,
        "created_at": to_rfc3339(t.created_at_ms),
        "expires_at": t.expires_at_ms.map(to_rfc3339),
        "revoked_at": t.revoked_at_ms.map(to_rfc3339),
    })
}

async fn issue(state: &AppState, project: Option<String>, body: CreateToken) -> ApiResult<Response> {
    if body.name.as_ref().is_some_and(|n| n.len() > 200) {
        return Err(ApiError::invalid_field("name", "must be at most 200 characters"));
    }
    let now = now_ms();
    let expires_at_ms = match &body.expires_at {
        Some(v) => timestamp_field("expires_at", v)?,
        None => None,
    };
    if expires_at_ms.is_some_and(|t| t <= now) {
        return Err(ApiError::invalid_field("expires_at", "must be in the future"));
    }
    if let Some(id) = &project
        && state.catalog.get_project(id).await?.is_none()
    {
        return Err(ApiError::NotFound { what: "project", id: id.clone() });
    }
    let token = AdminToken::generate(&random_bytes()?).ok_or_else(|| ApiError::internal("token generation"))?;
    let record = AdminTokenRecord {
        id: AdminTokenRecord::id_for(&token.hash()),
        project_id: project,
        name: body.name,
        prefix: Some(token.prefix().to_owned()),
        created_at_ms: now,
        expires_at_ms,
        revoked_at_ms: None,
    };
    let record = state.catalog.create_admin_token(record, token.hash()).await?;
    let mut view = token_view(&record, now);
    view["token"] = Value::String(token.expose().to_owned());
    view["note"] = Value::String("Store this token now: it is shown once and only its hash is kept.".into());
    Ok((StatusCode::CREATED, AxumJson(view)).into_response())
}

/// `POST /api/v1/projects/{id}/tokens`: a token scoped to one project (operator only).
async fn create_project_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    admin.require_operator()?;
    let body = optional_body(&body)?;
    if body.project.as_ref().is_some_and(|p| p != &id) {
        return Err(ApiError::invalid_field("project", "does not match the project in the path"));
    }
    issue(&state, Some(id), body).await
}

/// `POST /api/v1/admin-tokens`: an operator token, or one scoped to `project`.
async fn create_token(State(state): State<AppState>, admin: Admin, body: axum::body::Bytes) -> ApiResult<Response> {
    admin.require_operator()?;
    let mut body = optional_body(&body)?;
    let project = body.project.take();
    issue(&state, project, body).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListTokens {
    #[serde(default)]
    project: Option<String>,
}

async fn list_tokens(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ListTokens>,
) -> ApiResult<AxumJson<Value>> {
    let project = admin.project_filter(q.project)?;
    let tokens = state.catalog.list_admin_tokens(project.as_deref()).await?;
    let now = now_ms();
    Ok(AxumJson(json!({ "data": tokens.iter().map(|t| token_view(t, now)).collect::<Vec<_>>() })))
}

/// The token `id`, if this admin may see it: the operator sees every token, a
/// project token those of its project (404 otherwise, as if it did not exist).
async fn load_token(state: &AppState, admin: &Admin, id: &str) -> ApiResult<AdminTokenRecord> {
    let not_found = || ApiError::NotFound { what: "admin token", id: id.to_owned() };
    let token = state.catalog.get_admin_token(id).await?.ok_or_else(not_found)?;
    match (&admin.0.project_id, &token.project_id) {
        (None, _) => Ok(token),
        (Some(own), Some(theirs)) if own == theirs => Ok(token),
        _ => Err(not_found()),
    }
}

async fn get_token(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<AxumJson<Value>> {
    let token = load_token(&state, &admin, &id).await?;
    Ok(AxumJson(token_view(&token, now_ms())))
}

async fn revoke_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<Value>> {
    load_token(&state, &admin, &id).await?;
    let now = now_ms();
    let token = state
        .catalog
        .revoke_admin_token(&id, now)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: "admin token", id: id.clone() })?;
    Ok(AxumJson(token_view(&token, now)))
}
