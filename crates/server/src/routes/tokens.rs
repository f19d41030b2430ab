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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_core::AdminToken;
use tollgate_core::calendar::to_rfc3339;
use tollgate_store::AdminTokenRecord;

use crate::app::{AppState, random_bytes};
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::{Path, Query};
use crate::http::timestamp_field;
use crate::routes::admin::{CredentialStatus, DataList};
use tollgate_gateway::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/tokens", post(create_project_token))
        .route("/api/v1/admin-tokens", get(list_tokens).post(create_token))
        .route("/api/v1/admin-tokens/{id}", get(get_token).delete(delete_token))
        .route("/api/v1/admin-tokens/{id}/revoke", post(revoke_token))
}

type ApiResult<T> = Result<T, ApiError>;

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateToken {
    /// Only on `POST /api/v1/admin-tokens`: the project (absent or null: an operator token).
    #[serde(default)]
    project: Option<String>,
    /// At most 200 characters.
    #[serde(default)]
    name: Option<String>,
    /// RFC 3339 or Unix seconds, in the future; absent or null: never.
    #[serde(default)]
    #[schema(value_type = Option<crate::http::TimestampInput>)]
    expires_at: Option<Value>,
}

/// An optional JSON body: none (or only whitespace) is the defaults.
fn optional_body(body: &[u8]) -> ApiResult<CreateToken> {
    crate::http::extract::optional_object(body)
}

/// An admin token as the API shows it: its id and first characters, never the secret.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenView {
    pub id: String,
    /// The project it is scoped to (null: an operator token).
    pub project: Option<String>,
    pub name: Option<String>,
    /// The token's first characters, to recognise it.
    pub prefix: Option<String>,
    pub status: CredentialStatus,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

/// A token just made: the secret is shown this once.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenWithSecret {
    #[serde(flatten)]
    pub view: TokenView,
    pub token: String,
    pub note: String,
}

pub fn token_view(t: &AdminTokenRecord, now: i64) -> TokenView {
    TokenView {
        id: t.id.clone(),
        project: t.project_id.clone(),
        name: t.name.clone(),
        prefix: t.prefix.clone(),
        status: t.state(now).into(),
        created_at: to_rfc3339(t.created_at_ms),
        expires_at: t.expires_at_ms.map(to_rfc3339),
        revoked_at: t.revoked_at_ms.map(to_rfc3339),
    }
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
    let view = TokenWithSecret {
        view: token_view(&record, now),
        token: token.expose().to_owned(),
        note: "Store this token now: it is shown once and only its hash is kept.".into(),
    };
    Ok((StatusCode::CREATED, AxumJson(view)).into_response())
}

/// `POST /api/v1/projects/{id}/tokens`: a token scoped to one project (operator only).
#[utoipa::path(post, path = "/api/v1/projects/{id}/tokens", tag = "admin tokens",
    request_body(content = Option<CreateToken>, description = "Optional: a name and an expiry"),
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 201, description = "The token, shown once", body = TokenWithSecret)))]
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
#[utoipa::path(post, path = "/api/v1/admin-tokens", tag = "admin tokens",
    request_body(content = Option<CreateToken>, description = "Optional: a project, a name and an expiry"),
    responses((status = 201, description = "The token, shown once", body = TokenWithSecret)))]
async fn create_token(State(state): State<AppState>, admin: Admin, body: axum::body::Bytes) -> ApiResult<Response> {
    admin.require_operator()?;
    let mut body = optional_body(&body)?;
    let project = body.project.take();
    issue(&state, project, body).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListTokens {
    /// Only this project's tokens (a project token: its own).
    #[serde(default)]
    project: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin-tokens", tag = "admin tokens", params(ListTokens),
    responses((status = 200, description = "The tokens this token may see", body = DataList<TokenView>)))]
async fn list_tokens(
    State(state): State<AppState>,
    admin: Admin,
    Query(q): Query<ListTokens>,
) -> ApiResult<AxumJson<DataList<TokenView>>> {
    let project = admin.project_filter(q.project)?;
    let tokens = state.catalog.list_admin_tokens(project.as_deref()).await?;
    let now = now_ms();
    Ok(AxumJson(DataList { data: tokens.iter().map(|t| token_view(t, now)).collect() }))
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

#[utoipa::path(get, path = "/api/v1/admin-tokens/{id}", tag = "admin tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "The token", body = TokenView)))]
async fn get_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<TokenView>> {
    let token = load_token(&state, &admin, &id).await?;
    Ok(AxumJson(token_view(&token, now_ms())))
}

#[utoipa::path(delete, path = "/api/v1/admin-tokens/{id}", tag = "admin tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "The token, revoked (idempotent); it stays listed with status \
        `revoked`", body = TokenView)))]
async fn delete_token(state: State<AppState>, admin: Admin, id: Path<String>) -> ApiResult<AxumJson<TokenView>> {
    revoke_token(state, admin, id).await
}

#[utoipa::path(post, path = "/api/v1/admin-tokens/{id}/revoke", tag = "admin tokens",
    params(("id" = String, Path, description = "The token's id")),
    responses((status = 200, description = "The token, revoked (idempotent)", body = TokenView)))]
async fn revoke_token(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<TokenView>> {
    load_token(&state, &admin, &id).await?;
    let now = now_ms();
    let token = state
        .catalog
        .revoke_admin_token(&id, now)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: "admin token", id: id.clone() })?;
    Ok(AxumJson(token_view(&token, now)))
}
