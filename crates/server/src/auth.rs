//! Who is calling, as HTTP says it: the bearer token of a proxied request (checked
//! by the pipeline, `tollgate_gateway::auth`) and admin tokens on the admin API.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use tollgate_core::{Authed, KeyHash, KeyState};
use tollgate_gateway::now_ms;
use tollgate_store::AdminScope;

use crate::app::AppState;
use crate::http::error::ApiError;

/// The bearer token of a request, if any. A request with several `Authorization`
/// headers has none: which of them should count would be a guess, so
/// [`check_authorization`] refuses it.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Refuses an `Authorization` header that is there but cannot be read: sent more than
/// once (400, even when the copies agree: it is not a list header), or not visible
/// ASCII (401, in the words of `not_ascii`).
fn check_authorization(headers: &HeaderMap, not_ascii: impl FnOnce() -> ApiError) -> Result<(), ApiError> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(first) = values.next() else { return Ok(()) };
    if values.next().is_some() {
        return Err(ApiError::BadRequest {
            message: "Send exactly one Authorization header; this request has several.".into(),
            param: Some("Authorization".into()),
        });
    }
    match first.to_str() {
        Ok(_) => Ok(()),
        Err(_) => Err(not_ascii()),
    }
}

/// The key of a proxied request (`Authorization: Bearer tg_...`).
pub async fn authenticate_request(state: &AppState, headers: &HeaderMap, now_ms: i64) -> Result<Authed, ApiError> {
    check_authorization(headers, || {
        ApiError::InvalidKey("The Authorization header must be 'Bearer tg_...' in visible ASCII.".into())
    })?;
    let presented = bearer(headers).filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::MissingKey(
            "You didn't provide an API key. Send your tollgate key as 'Authorization: Bearer tg_...'.".into(),
        )
    })?;
    Ok(state.authenticate(presented, now_ms).await?)
}

/// The key of an Anthropic-format request (`/v1/messages`): `x-api-key`, which
/// Anthropic's SDKs send, or else `Authorization: Bearer tg_...`.
pub async fn authenticate_anthropic_request(
    state: &AppState,
    headers: &HeaderMap,
    now_ms: i64,
) -> Result<Authed, ApiError> {
    let mut values = headers.get_all("x-api-key").iter();
    let Some(value) = values.next() else { return authenticate_request(state, headers, now_ms).await };
    if values.next().is_some() {
        return Err(ApiError::BadRequest {
            message: "Send exactly one x-api-key header; this request has several.".into(),
            param: Some("x-api-key".into()),
        });
    }
    let presented = value
        .to_str()
        .map_err(|_| {
            ApiError::InvalidKey("The x-api-key header must be your tollgate key (tg_...) in visible ASCII.".into())
        })?
        .trim();
    if presented.is_empty() {
        return Err(ApiError::MissingKey(
            "You didn't provide an API key. Send your tollgate key as 'x-api-key: tg_...'.".into(),
        ));
    }
    Ok(state.authenticate(presented, now_ms).await?)
}

/// A caller of the admin API, with the projects it may act on.
#[derive(Clone, Debug)]
pub struct Admin(pub AdminScope);

impl Admin {
    pub fn is_operator(&self) -> bool {
        self.0.project_id.is_none()
    }

    /// Refuses callers scoped to another project. Answers 404, not 403, so a scoped
    /// token cannot learn which other projects exist.
    pub fn check_project(&self, project_id: &str, what: &'static str, id: &str) -> Result<(), ApiError> {
        match &self.0.project_id {
            Some(own) if own != project_id => Err(ApiError::NotFound { what, id: id.to_owned() }),
            _ => Ok(()),
        }
    }

    /// The project a listing is restricted to: a scoped token's own (asking for
    /// another is a 404), or what an operator asked for (`None`: all projects).
    pub fn project_filter(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (&self.0.project_id, asked) {
            (Some(own), Some(asked)) if own != &asked => Err(ApiError::NotFound { what: "project", id: asked }),
            (Some(own), _) => Ok(Some(own.clone())),
            (None, asked) => Ok(asked),
        }
    }

    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this operation needs the operator's admin token".into()))
        }
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        admin_from_headers(state, &parts.headers).await
    }
}

/// The admin behind a request's bearer token, or 401.
pub async fn admin_from_headers(state: &AppState, headers: &HeaderMap) -> Result<Admin, ApiError> {
    {
        check_authorization(headers, || {
            ApiError::AdminUnauthorized(
                "The Authorization header must be 'Bearer <admin token>' in visible ASCII.".into(),
            )
        })?;
        let token = bearer(headers).filter(|t| !t.is_empty()).ok_or_else(|| {
            ApiError::AdminUnauthorized("The admin API needs 'Authorization: Bearer <admin token>'.".into())
        })?;
        let hash = KeyHash::of(token);
        if let Some(configured) = &state.configured_operator
            && bool::from(configured.0.ct_eq(&hash.0))
        {
            return Ok(Admin(AdminScope { project_id: None }));
        }
        let Some(record) = state.catalog.lookup_admin_token(&hash).await? else {
            return Err(ApiError::AdminUnauthorized("Invalid admin token.".into()));
        };
        match record.state(now_ms()) {
            KeyState::Active => Ok(Admin(record.scope())),
            KeyState::Revoked => Err(ApiError::AdminUnauthorized("This admin token has been revoked.".into())),
            KeyState::Expired => Err(ApiError::AdminUnauthorized("This admin token has expired.".into())),
        }
    }
}
