//! Who is calling: API keys on the proxy and verify paths, admin tokens on the admin
//! API.
//!
//! A presented key is checked in this order, each step cheaper than the next: format
//! and checksum (no store), hash lookup (in-memory on the embedded store), state
//! (revoked, expired), plan.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;
use tollgate_core::key::KEY_PREFIX;
use tollgate_core::{ApiKey, KeyHash, KeyRecord, KeyState, Plan};
use tollgate_store::AdminScope;

use crate::error::ApiError;
use crate::state::AppState;

/// An authenticated, usable key with its plan resolved.
pub struct Authed {
    pub key: Arc<KeyRecord>,
    pub plan: Arc<Plan>,
}

/// Keys resolved with their plans, remembered for a batch of ledger records
/// (counter rebuilds replay many records of few keys).
#[derive(Default)]
pub struct AuthedCache {
    keys: std::collections::HashMap<String, Option<Authed>>,
}

impl AuthedCache {
    /// The key and its plan, or `None` if the key or its plan is gone.
    pub async fn get(&mut self, state: &AppState, key_id: &str) -> Result<Option<&Authed>, tollgate_store::StoreError> {
        if !self.keys.contains_key(key_id) {
            let authed = match state.catalog.get_key(key_id).await? {
                Some(key) => state.plans.get(&key.plan).map(|plan| Authed { key: Arc::new(key), plan }),
                None => None,
            };
            self.keys.insert(key_id.to_owned(), authed);
        }
        Ok(self.keys.get(key_id).and_then(Option::as_ref))
    }
}

/// Why a key cannot be used, in the verify endpoint's vocabulary.
#[derive(Debug)]
pub enum KeyRefusal {
    NotFound(ApiError),
    Revoked,
    Expired,
}

impl From<KeyRefusal> for ApiError {
    fn from(r: KeyRefusal) -> Self {
        match r {
            KeyRefusal::NotFound(e) => e,
            KeyRefusal::Revoked => ApiError::KeyRevoked,
            KeyRefusal::Expired => ApiError::KeyExpired,
        }
    }
}

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

/// Resolves a presented key to a usable key and plan.
pub async fn authenticate_key(state: &AppState, presented: &str, now_ms: i64) -> Result<Authed, KeyRefusal> {
    let key = ApiKey::parse(presented).map_err(|e| KeyRefusal::NotFound(ApiError::InvalidKey(e.to_string())))?;
    let record =
        state.catalog.lookup_key(&key.hash(), now_ms).await.map_err(|e| KeyRefusal::NotFound(e.into()))?.ok_or_else(
            || {
                KeyRefusal::NotFound(ApiError::InvalidKey(format!(
                    "Incorrect API key provided: {KEY_PREFIX}{}_****. Create a key with `tollgate keys create`.",
                    key.public_id()
                )))
            },
        )?;
    match record.state(now_ms) {
        KeyState::Active => {}
        KeyState::Revoked => return Err(KeyRefusal::Revoked),
        KeyState::Expired => return Err(KeyRefusal::Expired),
    }
    let plan = state.plans.get(&record.plan).ok_or_else(|| {
        KeyRefusal::NotFound(ApiError::internal(format!("key {} names missing plan '{}'", record.id, record.plan)))
    })?;
    Ok(Authed { key: record, plan })
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
    Ok(authenticate_key(state, presented, now_ms).await?)
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
        match state.catalog.lookup_admin_token(&hash).await? {
            Some(scope) => Ok(Admin(scope)),
            None => Err(ApiError::AdminUnauthorized("Invalid admin token.".into())),
        }
    }
}
