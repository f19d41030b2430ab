//! Bring your own key under `/api/v1`: a project's own provider keys (set, list,
//! delete) and the rotation of every sealed secret to the current master key.
//!
//! A key is sealed (`tollgate-seal`, the purpose `provider-key:<project>:<provider>`
//! as associated data) before it reaches the store, and never shown again: answers
//! carry its hint (`sk-…wxyz`). Without a master key nothing is stored (409
//! `master_key_missing`). A project-scoped admin token manages its own project's keys
//! (404 for any other project); rotation is the operator's. A project key may send
//! its calls elsewhere than the operator's base URL only under a base URL the operator
//! allows (`byok.allowed_base_urls`), so a tenant cannot point the gateway at an
//! address of its choosing.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json as AxumJson, Router};
use serde::{Deserialize, Serialize};
use tollgate_core::calendar::to_rfc3339;
use tollgate_store::ProviderKeyRecord;
use tollgate_store::provider_keys::{hint, seal_purpose};

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{Json, Path};
use crate::routes::admin::DataList;
use crate::secrets::RotationCounts;
use tollgate_gateway::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/projects/{id}/provider-keys", get(list_provider_keys))
        .route("/api/v1/projects/{id}/provider-keys/{provider}", put(put_provider_key).delete(delete_provider_key))
        .route("/api/v1/secrets/rotate", post(rotate_secrets))
}

type ApiResult<T> = Result<T, ApiError>;

/// The longest provider key accepted.
const MAX_KEY_LEN: usize = 4096;
/// The longest base URL accepted.
const MAX_URL_LEN: usize = 2048;

/// `PUT /api/v1/projects/{id}/provider-keys/{provider}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutProviderKey {
    /// The provider key (1-4096 visible ASCII characters): sealed at once, never shown
    /// again.
    #[schema(max_length = 4096)]
    api_key: String,
    /// Where this project's calls to the provider go instead of the operator's base
    /// URL; must start with one of `byok.allowed_base_urls`. Absent or null: the
    /// operator's.
    #[serde(default)]
    base_url: Option<String>,
}

/// A project's provider key as the API shows it: never the key, only its hint.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProviderKeyView {
    pub provider: String,
    /// The key's first 3 and last 4 characters (`sk-…wxyz`; a key shorter than 12
    /// characters shows its last 2 only).
    pub hint: String,
    pub base_url: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn view(record: &ProviderKeyRecord) -> ProviderKeyView {
    ProviderKeyView {
        provider: record.provider.clone(),
        hint: record.hint.clone(),
        base_url: record.base_url.clone(),
        created_at: to_rfc3339(record.created_at_ms),
        updated_at: to_rfc3339(record.updated_at_ms),
    }
}

/// The provider key store; there is always one in the server (the field is optional
/// for other builders of a gateway).
fn keys(state: &AppState) -> ApiResult<&tollgate_gateway::byok::ProviderKeys> {
    state.provider_keys.as_deref().ok_or_else(|| ApiError::internal("no provider key store is configured"))
}

/// The caller may act on `project_id`, and it exists.
async fn check_project(state: &AppState, admin: &Admin, project_id: &str) -> ApiResult<()> {
    admin.check_project(project_id, "project", project_id)?;
    if state.catalog.get_project(project_id).await?.is_none() {
        return Err(ApiError::NotFound { what: "project", id: project_id.to_owned() });
    }
    Ok(())
}

/// `provider` names a configured provider.
fn check_provider(state: &AppState, provider: &str) -> ApiResult<()> {
    if state.provider_upstream(provider).is_some() {
        return Ok(());
    }
    let configured = [&state.settings.provider, &state.settings.anthropic_provider];
    let shown: String = provider.chars().take(64).collect();
    Err(ApiError::invalid_field(
        "provider",
        format!(
            "'{shown}' is not a configured provider (configured: {})",
            configured.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// A project's base URL: a plain `http(s)` URL (no credentials, query or fragment),
/// normalised, under one the operator allows.
fn checked_base_url(state: &AppState, base_url: &str) -> ApiResult<String> {
    let bad = |why: &str| ApiError::invalid_field("base_url", why);
    if state.config.byok.allowed_base_urls.is_empty() {
        return Err(bad(
            "is not allowed: the operator allows no project base URLs (byok.allowed_base_urls); leave it null to use \
             the operator's",
        ));
    }
    if base_url.len() > MAX_URL_LEN {
        return Err(bad("must be at most 2048 characters"));
    }
    let url = reqwest::Url::parse(base_url).map_err(|_| bad("is not a URL"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.host_str().is_some();
    if !plain {
        return Err(bad("must be an http(s) URL without credentials, query or fragment"));
    }
    // The parsed form (dot segments resolved), so `…/v1/../admin` cannot pass as `…/v1`.
    let normalised = url.as_str().trim_end_matches('/').to_owned();
    if !state.config.byok.allows(&normalised) {
        return Err(bad(format!(
            "'{normalised}' does not start with a base URL the operator allows (byok.allowed_base_urls: {})",
            state.config.byok.allowed_base_urls.join(", ")
        )
        .as_str()));
    }
    Ok(normalised)
}

#[utoipa::path(put, path = "/api/v1/projects/{id}/provider-keys/{provider}", tag = "provider keys",
    request_body = PutProviderKey,
    params(("id" = String, Path, description = "The project's id"),
           ("provider" = String, Path, description = "A configured provider name (`upstream.provider`, `anthropic.provider`)")),
    responses((status = 200, description = "The key was sealed and stored (replacing the project's earlier key for the provider)", body = ProviderKeyView),
              (status = 409, description = "No master key is configured: nothing is stored", body = ErrorBody)))]
async fn put_provider_key(
    State(state): State<AppState>,
    admin: Admin,
    Path((project_id, provider)): Path<(String, String)>,
    Json(body): Json<PutProviderKey>,
) -> ApiResult<AxumJson<ProviderKeyView>> {
    check_project(&state, &admin, &project_id).await?;
    check_provider(&state, &provider)?;
    let api_key = body.api_key.trim();
    if api_key.is_empty() || api_key.len() > MAX_KEY_LEN || !api_key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::invalid_field("api_key", "must be 1-4096 visible ASCII characters"));
    }
    let base_url = match body.base_url.as_deref() {
        None => None,
        Some(url) => Some(checked_base_url(&state, url.trim())?),
    };
    let keys = keys(&state)?;
    let sealer = keys.sealer().ok_or_else(|| {
        ApiError::NoMasterKey(
            "a provider key is sealed at rest and no master key is configured: set secrets.master_key \
             (TOLLGATE_SECRETS__MASTER_KEY, 64 hex digits; `openssl rand -hex 32`) or secrets.master_key_file, \
             the same on every instance, and restart"
                .into(),
        )
    })?;
    let sealed_key = sealer.seal(&seal_purpose(&project_id, &provider), api_key).map_err(ApiError::internal)?;
    let now = now_ms();
    let record = ProviderKeyRecord {
        project_id: project_id.clone(),
        provider: provider.clone(),
        sealed_key,
        hint: hint(api_key),
        base_url,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let stored = keys.store().put_provider_key(record).await?;
    keys.forget(&project_id, &provider);
    tracing::info!(project_id = %project_id, provider = %provider, hint = %stored.hint, "a project's provider key was stored");
    Ok(AxumJson(view(&stored)))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/provider-keys", tag = "provider keys",
    params(("id" = String, Path, description = "The project's id")),
    responses((status = 200, description = "The project's provider keys (hints only), by provider", body = DataList<ProviderKeyView>)))]
async fn list_provider_keys(
    State(state): State<AppState>,
    admin: Admin,
    Path(project_id): Path<String>,
) -> ApiResult<AxumJson<DataList<ProviderKeyView>>> {
    check_project(&state, &admin, &project_id).await?;
    let records = keys(&state)?.store().list_provider_keys(&project_id).await?;
    Ok(AxumJson(DataList { data: records.iter().map(view).collect() }))
}

#[utoipa::path(delete, path = "/api/v1/projects/{id}/provider-keys/{provider}", tag = "provider keys",
    params(("id" = String, Path, description = "The project's id"),
           ("provider" = String, Path, description = "The provider name")),
    responses((status = 204, description = "The key was deleted: the project's calls go with the operator's key again (or are refused, with `byok_fallback = \"never\"`)"),
              (status = 404, description = "The project has no key for this provider", body = ErrorBody)))]
async fn delete_provider_key(
    State(state): State<AppState>,
    admin: Admin,
    Path((project_id, provider)): Path<(String, String)>,
) -> ApiResult<Response> {
    check_project(&state, &admin, &project_id).await?;
    // No check that the provider is still configured: a key left from one that is
    // not can be deleted too.
    let keys = keys(&state)?;
    let existed = keys.store().delete_provider_key(&project_id, &provider).await?;
    keys.forget(&project_id, &provider);
    if !existed {
        return Err(ApiError::NotFound { what: "provider key", id: format!("{project_id}/{provider}") });
    }
    tracing::info!(project_id = %project_id, provider = %provider, "a project's provider key was deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/secrets/rotate", tag = "provider keys",
    responses((status = 200, description = "Every sealed secret (provider keys, alert channel secrets) not sealed under the current master key was re-sealed under it", body = RotationCounts),
              (status = 409, description = "No master key is configured", body = ErrorBody)))]
async fn rotate_secrets(State(state): State<AppState>, admin: Admin) -> ApiResult<AxumJson<RotationCounts>> {
    admin.require_operator()?;
    let keys = keys(&state)?;
    let sealer = keys.sealer().ok_or_else(|| {
        ApiError::NoMasterKey("no master key is configured (secrets.master_key): there is nothing to rotate to".into())
    })?;
    let counts = crate::secrets::rotate(sealer, keys.store().as_ref(), state.alerts.store.as_ref()).await?;
    keys.forget_all();
    tracing::info!(
        resealed = counts.resealed,
        already_current = counts.already_current,
        failed = counts.failed,
        key_id = sealer.key_id(),
        "sealed secrets rotated to the current master key"
    );
    Ok(AxumJson(counts))
}
