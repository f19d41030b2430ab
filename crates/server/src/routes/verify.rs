//! `POST /api/v1/keys/verify` (the pipeline is `tollgate_gateway::verify`): "is this key valid and under its limits?" for services
//! that use tollgate only for keys and quotas.
//!
//! Answers 200 with `valid` and a `code` for every outcome about the key (the caller
//! asked a question; the answer is not an error); 400 only for a malformed body. A
//! valid verify charges `cost` requests unless `dry_run` is set.

use axum::Json as AxumJson;
use std::net::IpAddr;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tollgate_core::Decision;
use tollgate_gateway::verify::{Verdict, VerifyCheck};

use crate::app::AppState;
use crate::auth::admin_from_headers;
use crate::http::client::{Peer, client_ip};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::Json;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The tollgate key to check (`tg_...`).
    key: String,
    /// Requests to charge, 0 to 1,000,000 (default 1).
    #[serde(default = "one")]
    #[schema(maximum = 1000000)]
    cost: u64,
    /// Check without charging.
    #[serde(default)]
    dry_run: bool,
    /// Which of the caller's endpoints this is, for endpoint-scoped limits
    /// (default `verify`).
    #[serde(default)]
    endpoint: Option<String>,
    /// The anonymous visitor behind the call, for anonymous limits.
    #[serde(default)]
    anonymous_id: Option<String>,
    /// The end client's IP address, for IP limits (default: the caller's address).
    /// Like `anonymous_id` and `endpoint`, only with an admin token.
    #[serde(default)]
    client_ip: Option<String>,
}

fn one() -> u64 {
    1
}

/// Largest `cost` one verify may charge.
const MAX_COST: u64 = 1_000_000;

#[derive(Serialize, utoipa::ToSchema)]
pub struct LimitView {
    name: String,
    limit: u64,
    remaining: u64,
    /// When the limit is fully available again (RFC 3339 UTC, like every time in
    /// JSON answers but the seeds' 429 body).
    #[schema(format = DateTime)]
    reset: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VerifyResponse {
    valid: bool,
    /// `VALID`, or why not: `RATE_LIMITED`, `QUOTA_EXCEEDED`, `NOT_FOUND`, `REVOKED`,
    /// `EXPIRED`, ... (docs/api.md).
    #[schema(value_type = String)]
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    project: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plan: Option<String>,
    limits: Vec<LimitView>,
    near_limit: bool,
    /// Seconds until a refused request may be retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<u64>,
}

fn refused(code: &'static str) -> VerifyResponse {
    VerifyResponse {
        valid: false,
        code,
        key_id: None,
        project: None,
        plan: None,
        limits: Vec::new(),
        near_limit: false,
        retry_after: None,
    }
}

#[utoipa::path(post, path = "/api/v1/keys/verify", tag = "verify", request_body = VerifyRequest,
    security((), ("admin_token" = [])),
    responses((status = 200, description = "The verdict about the key (an invalid or refused key is a 200 too)",
        body = VerifyResponse),
        (status = 429, description = "Too many unknown keys from this address (`too_many_invalid_keys`)",
            body = ErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait")))))]
pub async fn verify(
    State(state): State<AppState>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Json(request): Json<VerifyRequest>,
) -> Response {
    let started = std::time::Instant::now();
    let peer_ip = client_ip(&headers, peer, state.config.forwarded_for_hops);
    let response = match run(&state, &headers, request, peer_ip).await {
        Ok(body) => AxumJson(body).into_response(),
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    let m = &state.metrics;
    m.request(tollgate_gateway::metrics::Route::Verify, status, m.no_model(), started.elapsed(), Default::default());
    response
}

async fn run(
    state: &AppState,
    headers: &HeaderMap,
    request: VerifyRequest,
    peer_ip: Option<IpAddr>,
) -> Result<VerifyResponse, ApiError> {
    // `client_ip`, `anonymous_id` and `endpoint` choose which counters a call is
    // charged to: from an anonymous caller they would let anyone pick a fresh quota.
    // Only a caller with an admin token (the service in front of its users) may set
    // them; a project-scoped token only for keys of its project.
    let vouches = request.client_ip.is_some() || request.anonymous_id.is_some() || request.endpoint.is_some();
    let project_scope = if vouches {
        let admin = admin_from_headers(state, headers).await.map_err(|_| {
            ApiError::AdminUnauthorized(
                "client_ip, anonymous_id and endpoint are accepted only with an admin token \
                 (Authorization: Bearer <admin token>)."
                    .into(),
            )
        })?;
        admin.0.project_id
    } else {
        None
    };
    if request.cost > MAX_COST {
        return Err(ApiError::invalid_field("cost", format!("must be between 0 and {MAX_COST}")));
    }
    let client_ip = match request.client_ip.as_deref() {
        None => peer_ip,
        Some(text) => Some(text.parse().map_err(|_| ApiError::invalid_field("client_ip", "is not an IP address"))?),
    };
    if request.anonymous_id.as_ref().is_some_and(|a| a.is_empty() || a.len() > 128) {
        return Err(ApiError::invalid_field("anonymous_id", "must be 1-128 characters"));
    }
    if request.endpoint.as_ref().is_some_and(|e| e.is_empty() || e.len() > 256) {
        return Err(ApiError::invalid_field("endpoint", "must be 1-256 characters"));
    }
    let check = VerifyCheck {
        key: request.key,
        cost: request.cost,
        dry_run: request.dry_run,
        endpoint: request.endpoint.unwrap_or_else(|| "verify".to_owned()),
        anonymous_id: request.anonymous_id,
        client_ip,
        project_scope,
    };
    // The brake on key guessing counts the caller's own address, not `client_ip`
    // from the body (anyone can write any address there).
    let now = tollgate_gateway::now_ms();
    if let Some(secs) = state.invalid_keys.blocked(peer_ip, now) {
        return Err(ApiError::TooManyInvalidKeys(secs));
    }
    let verdict = state.verify(check).await?;
    if matches!(verdict, Verdict::Refused("NOT_FOUND")) {
        state.invalid_keys.failed(peer_ip, now);
    }
    let code = verdict.code();
    let (authed, decision, now) = match verdict {
        Verdict::Refused(code) => return Ok(refused(code)),
        Verdict::Checked { authed, decision, now_ms } => (authed, decision, now_ms),
    };
    Ok(VerifyResponse {
        valid: code == "VALID",
        code,
        key_id: Some(authed.key.id.clone()),
        project: Some(authed.key.project_id.clone()),
        plan: Some(authed.plan.name.clone()),
        near_limit: decision.statuses.iter().any(|s| !s.spec.window.is_rate() && s.near_limit()),
        retry_after: retry_after(&decision, now),
        limits: decision
            .statuses
            .iter()
            .map(|s| LimitView {
                name: s.spec.name(),
                limit: s.spec.limit,
                remaining: s.remaining,
                reset: tollgate_core::calendar::to_rfc3339(s.reset_at_ms),
            })
            .collect(),
    })
}

fn retry_after(decision: &Decision, now: i64) -> Option<u64> {
    let (status, refusal) = decision.refused_status()?;
    let at = refusal.retry_at_ms.unwrap_or(status.reset_at_ms);
    Some(crate::http::error::ResetInstant::of(at, now).after_secs)
}
