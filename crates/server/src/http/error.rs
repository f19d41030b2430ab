//! One error type for every HTTP answer that is not a success, in OpenAI's shape:
//! `{"error": {"message", "type", "code", "param"?, "details"?}}`.
//!
//! Each variant has one status, one `type` and one stable `code` (the table in
//! docs/errors.md). 5xx internals are logged here, once, and never shown to clients.
//!
//! Towards Anthropic's SDKs (`/v1/messages`) the same error goes in Anthropic's shape
//! ([`ApiError::into_anthropic_response`]): `{"type": "error", "error": {"type",
//! "message", "code", "param"?, "details"?}}`, Anthropic's `type` for the status (so a
//! 429, quota or rate, is the SDK's `RateLimitError`), tollgate's `code`, `message`
//! and `details` unchanged.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tollgate_core::{LimitStatus, Metric, Window};
use tollgate_gateway::auth::KeyRefusal;
use tollgate_gateway::byok::ProviderKeyError;
use tollgate_gateway::{GatewayError, UpstreamFailure};
use tollgate_store::StoreError;

/// A refused limit, as the 429 body and headers describe it.
#[derive(Clone, Debug)]
pub struct LimitRefusal {
    pub status: LimitStatus,
    pub plan: String,
    pub now_ms: i64,
    /// `None` when the request can never fit under the limit.
    pub retry_at_ms: Option<i64>,
}

impl LimitRefusal {
    /// The one instant every reset field of this refusal is derived from: when the
    /// request would fit again (for a quota, the window's end).
    pub fn reset(&self) -> ResetInstant {
        ResetInstant::of(self.retry_at_ms.unwrap_or(self.status.reset_at_ms), self.now_ms)
    }

    pub fn retry_after_secs(&self) -> u64 {
        self.reset().after_secs
    }
}

/// A refusal's reset instant in the two forms clients read, derived together so they
/// never disagree: `at_secs` (Unix seconds, the instant rounded up to a whole second,
/// so a client waiting until then is never early) and `after_secs` (seconds from now,
/// at least 1), with `at_secs == floor(now) + after_secs` exactly. `X-RateLimit-Reset`
/// / `X-Quota-Reset`, `details.resetAt`, `Retry-After`, `details.retryAfter`, OpenAI's
/// `x-ratelimit-reset-*` and the IETF `t=` of the refusing limit all come from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetInstant {
    pub at_secs: i64,
    pub after_secs: u64,
}

impl ResetInstant {
    pub fn of(at_ms: i64, now_ms: i64) -> Self {
        let at_secs = at_ms.div_euclid(1000) + i64::from(at_ms.rem_euclid(1000) > 0);
        let now_secs = now_ms.div_euclid(1000);
        let after = (at_secs - now_secs).max(1);
        Self { at_secs: now_secs + after, after_secs: after as u64 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { message: String, param: Option<String> },
    #[error("{0}")]
    MissingKey(String),
    #[error("{0}")]
    InvalidKey(String),
    #[error("This API key has been revoked.")]
    KeyRevoked,
    #[error("This API key has expired.")]
    KeyExpired,
    #[error("{0}")]
    AdminUnauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PlanUnavailable(String),
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {0} bytes allowed")]
    PayloadTooLarge(usize),
    #[error("unknown endpoint {0}")]
    UnknownEndpoint(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("rate limit exceeded")]
    RateLimited(Box<LimitRefusal>),
    #[error("quota exceeded")]
    QuotaExceeded(Box<LimitRefusal>),
    /// Too many unknown keys from one client address: it waits this many seconds.
    #[error("Too many requests with invalid API keys from your address. Try again in {0}s.")]
    TooManyInvalidKeys(u64),
    /// A request that asks for more than a limit allows in a whole window: waiting
    /// would not help, so a 400 without `Retry-After`.
    #[error("request larger than a limit")]
    RequestTooLarge(Box<LimitRefusal>),
    #[error("{0}")]
    UpstreamUnavailable(String),
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    UpstreamInvalid(String),
    /// The upstream refused tollgate's call for want of a provider key, and none is
    /// configured: the operator's fault, not the client's.
    #[error("{0}")]
    NoProviderKey(String),
    /// The project must use its own provider key (`byok_fallback = "never"`) and
    /// stored none for the provider.
    #[error("{0}")]
    ProviderKeyRequired(String),
    /// The project's stored provider key cannot be opened (its master key is not
    /// configured): the operator's to fix.
    #[error("{0}")]
    ProviderKeyUnusable(String),
    /// A secret must be sealed and no master key is configured.
    #[error("{0}")]
    NoMasterKey(String),
    #[error("{0}")]
    Unavailable(String),
    /// The ledger's queue stayed full: the request was not admitted.
    #[error("{0}")]
    LedgerBacklog(String),
    /// The upstream answered but the usage record was not committed: answer withheld.
    #[error("{0}")]
    UsageNotRecorded(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest { message: message.into(), param: None }
    }

    /// A validation error naming the field at fault.
    pub fn invalid_field(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::BadRequest { message: format!("{field}: {message}"), param: Some(field.to_owned()) }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_request"),
            MissingKey(_) => (StatusCode::UNAUTHORIZED, "invalid_request_error", "missing_api_key"),
            InvalidKey(_) => (StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_api_key"),
            KeyRevoked => (StatusCode::FORBIDDEN, "permission_error", "key_revoked"),
            KeyExpired => (StatusCode::FORBIDDEN, "permission_error", "key_expired"),
            AdminUnauthorized(_) => (StatusCode::UNAUTHORIZED, "invalid_request_error", "invalid_admin_token"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "permission_error", "forbidden"),
            PlanUnavailable(_) => (StatusCode::FORBIDDEN, "permission_error", "plan_unavailable"),
            NotFound { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            Conflict(_) => (StatusCode::CONFLICT, "invalid_request_error", "conflict"),
            PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", "payload_too_large"),
            UnknownEndpoint(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "unknown_endpoint"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "invalid_request_error", "method_not_allowed"),
            RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "rate_limit_exceeded"),
            QuotaExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded_error", "quota_exceeded"),
            TooManyInvalidKeys(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too_many_invalid_keys"),
            RequestTooLarge(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "request_too_large"),
            UpstreamUnavailable(_) => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unavailable"),
            UpstreamTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_error", "upstream_timeout"),
            UpstreamInvalid(_) => (StatusCode::BAD_GATEWAY, "upstream_error", "upstream_invalid_response"),
            NoProviderKey(_) => (StatusCode::BAD_GATEWAY, "upstream_error", "provider_key_missing"),
            ProviderKeyRequired(_) => (StatusCode::FORBIDDEN, "permission_error", "provider_key_required"),
            ProviderKeyUnusable(_) => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "provider_key_unusable"),
            NoMasterKey(_) => (StatusCode::CONFLICT, "invalid_request_error", "master_key_missing"),
            Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "service_unavailable"),
            LedgerBacklog(_) => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "ledger_backlog"),
            UsageNotRecorded(_) => (StatusCode::SERVICE_UNAVAILABLE, "api_error", "usage_not_recorded"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "api_error", "internal_error"),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

fn metric_phrase(metric: Metric, limit: u64) -> String {
    match metric {
        Metric::Requests => format!("make {limit} requests"),
        Metric::InputTokens => format!("use {limit} input tokens"),
        Metric::OutputTokens => format!("use {limit} output tokens"),
        Metric::TotalTokens => format!("use {limit} tokens"),
        Metric::CostMicros => format!("spend {limit} micro-dollars"),
    }
}

fn refusal_body(r: &LimitRefusal, rate: bool) -> (String, Value) {
    let s = &r.status;
    let reset = r.reset();
    if rate {
        let message = format!(
            "Rate limit exceeded. You can {} per {} on the {} plan.",
            metric_phrase(s.spec.metric, s.spec.limit),
            s.spec.window.as_str(),
            r.plan
        );
        let details = json!({
            "limit": s.spec.limit,
            "remaining": s.remaining,
            "resetAt": reset.at_secs,
            "retryAfter": reset.after_secs,
        });
        (message, details)
    } else {
        let period = match s.spec.window {
            Window::Day => "Daily",
            Window::Month => "Monthly",
            Window::Hour => "Hourly",
            Window::Minute => "Per-minute",
        };
        let message = format!("{period} quota exceeded. Upgrade your plan or wait until quota resets.");
        let details = json!({
            "used": s.used,
            "limit": s.spec.limit,
            "remaining": s.remaining,
            "resetAt": reset.at_secs,
            "retryAfter": reset.after_secs,
        });
        (message, details)
    }
}

/// Anthropic's error `type` for an HTTP status (its SDKs pick the exception by status).
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        _ => "api_error",
    }
}

impl ApiError {
    /// The answer in Anthropic's error shape (see the module doc), headers included.
    pub fn into_anthropic_response(self) -> Response {
        let (status, mut error, retry_after) = self.into_parts();
        error["type"] = Value::String(anthropic_type(status).to_owned());
        answer(status, json!({ "type": "error", "error": error }), retry_after)
    }

    /// The status, the error object (OpenAI's) and the `Retry-After` seconds.
    fn into_parts(self) -> (StatusCode, Value, Option<u64>) {
        let (status, kind, code) = self.parts();
        let mut retry_after = None;
        let (message, details, param) = match &self {
            ApiError::RateLimited(r) => {
                retry_after = Some(r.retry_after_secs());
                let (m, d) = refusal_body(r, true);
                (m, Some(d), None)
            }
            ApiError::QuotaExceeded(r) => {
                retry_after = Some(r.retry_after_secs());
                let (m, d) = refusal_body(r, false);
                (m, Some(d), None)
            }
            ApiError::TooManyInvalidKeys(secs) => {
                retry_after = Some(*secs);
                (self.to_string(), None, None)
            }
            ApiError::RequestTooLarge(r) => {
                let s = &r.status;
                let message = format!(
                    "This request can never be admitted: it needs more than the {} {} per {} that the {} plan \
                     allows. Lower max_tokens (or n), or shorten the prompt.",
                    s.spec.limit,
                    s.spec.metric.as_str(),
                    s.spec.window.as_str(),
                    r.plan
                );
                let details = json!({ "limit": s.spec.limit, "metric": s.spec.metric.as_str(), "window": s.spec.window.as_str() });
                (message, Some(details), None)
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                ("The server had an error while processing your request.".to_owned(), None, None)
            }
            ApiError::BadRequest { message, param } => (message.clone(), None, param.clone()),
            other => (other.to_string(), None, None),
        };
        let mut error = json!({ "message": message, "type": kind, "code": code });
        if let Some(param) = param {
            error["param"] = Value::String(param);
        }
        if let Some(details) = details {
            error["details"] = details;
        }
        (status, error, retry_after)
    }
}

fn answer(status: StatusCode, body: Value, retry_after: Option<u64>) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(secs) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, retry_after) = self.into_parts();
        answer(status, json!({ "error": error }), retry_after)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => ApiError::NotFound { what, id },
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Unavailable { message: m, .. } => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::Unavailable("The usage store is unavailable; try again shortly.".into())
            }
            StoreError::Internal { message: m, .. } => ApiError::Internal(m),
        }
    }
}

impl From<KeyRefusal> for ApiError {
    fn from(r: KeyRefusal) -> Self {
        match r {
            KeyRefusal::Malformed(_) | KeyRefusal::Unknown { .. } => ApiError::InvalidKey(r.to_string()),
            KeyRefusal::Revoked => ApiError::KeyRevoked,
            KeyRefusal::Expired => ApiError::KeyExpired,
            KeyRefusal::PlanMissing { .. } => ApiError::PlanUnavailable(r.to_string()),
            KeyRefusal::Store(e) => e.into(),
        }
    }
}

impl From<UpstreamFailure> for ApiError {
    fn from(f: UpstreamFailure) -> Self {
        match f {
            UpstreamFailure::Timeout(secs) => {
                ApiError::UpstreamTimeout(format!("The upstream provider did not answer within {secs}s."))
            }
            UpstreamFailure::Unavailable => {
                ApiError::UpstreamUnavailable("The upstream provider could not be reached.".into())
            }
            UpstreamFailure::Invalid => {
                ApiError::UpstreamInvalid("The upstream provider returned an invalid response.".into())
            }
            UpstreamFailure::NoTarget => ApiError::Unavailable(
                "No target of this model's route can be tried now: each is failing (its circuit breaker is \
                 open), has asked to be retried later, or its limits are spent. Nothing was charged."
                    .into(),
            ),
            UpstreamFailure::NoProviderKey => ApiError::NoProviderKey(
                "The gateway has no provider API key configured, and the upstream provider requires one. \
                 This is a configuration error of the gateway, not of your request or your API key; \
                 nothing was charged."
                    .into(),
            ),
        }
    }
}

impl From<GatewayError> for ApiError {
    /// `Refused` needs the decision to say which limit; the proxy route builds that
    /// answer itself (`http::headers::refusal`), this is the fallback.
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Request(r) => ApiError::BadRequest { message: r.message, param: r.param },
            GatewayError::Key(k) => k.into(),
            GatewayError::Refused { plan } => ApiError::internal(format!("refused by plan {plan} without a decision")),
            GatewayError::Store(s) => s.into(),
            GatewayError::Upstream(u) => u.into(),
            GatewayError::ProviderKey(e) => match e {
                ProviderKeyError::Required { .. } => ApiError::ProviderKeyRequired(e.to_string()),
                ProviderKeyError::Unusable { .. } => ApiError::ProviderKeyUnusable(e.to_string()),
            },
            GatewayError::LedgerBacklog => ApiError::LedgerBacklog(
                "tollgate's usage ledger is behind; the request was not forwarded. Try again shortly.".into(),
            ),
            GatewayError::NotRecorded(why) => {
                tracing::error!(%why, "answer withheld: its usage record was not committed");
                ApiError::UsageNotRecorded(
                    "The upstream provider answered, but tollgate could not record the usage of this request, so \
                     the answer is withheld. The usage may still be charged once the ledger recovers; retrying \
                     repeats the upstream call."
                        .into(),
                )
            }
            GatewayError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// The body of every error answer (OpenAI's shape), for the OpenAPI document
/// (`crate::openapi`); the answers themselves are built in [`ApiError::into_response`],
/// and the OpenAPI tests check real ones against this schema.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(example = json!({ "error": {
    "message": "Rate limit exceeded. You can make 10 requests per minute on the free plan.",
    "type": "rate_limit_error", "code": "rate_limit_exceeded",
    "details": { "limit": 10, "remaining": 0, "resetAt": 1764675600, "retryAfter": 42 } } }))]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// What went wrong: `type` and `code` are stable (docs/errors.md), `message` is for people.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `permission_error`, `rate_limit_error`,
    /// `quota_exceeded_error`, `upstream_error` or `api_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable code such as `invalid_request`, `not_found` or `rate_limit_exceeded`.
    pub code: String,
    /// The field or parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub param: Option<String>,
    /// On a 429 the seeds' fields (`limit`, `remaining`, `resetAt`, `retryAfter`, and
    /// `used` for a quota); on a 400 `request_too_large` the limit, metric and window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

/// The details of a refusal by a limit.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetails {
    pub limit: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u64>,
    /// Unix seconds when the request would fit again (the seeds' format).
    #[serde(rename = "resetAt", skip_serializing_if = "Option::is_none")]
    pub reset_at: Option<i64>,
    /// Seconds to wait; equals the `Retry-After` header.
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// Quotas only: what the window has used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
    /// `request_too_large` only: the limit's metric and window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
}

#[cfg(test)]
mod tests {
    use tollgate_core::LimitSpec;

    use super::*;

    fn refusal(window: Window, retry_at_ms: Option<i64>) -> Box<LimitRefusal> {
        let spec = LimitSpec::new(Metric::TotalTokens, window, 2_000);
        let status = LimitStatus { spec, used: 1_990, remaining: 10, reset_at_ms: 60_000 };
        Box::new(LimitRefusal { status, plan: "free".into(), now_ms: 0, retry_at_ms })
    }

    #[test]
    fn every_quota_message_names_its_period_once() {
        for window in [Window::Minute, Window::Hour, Window::Day, Window::Month] {
            let (message, _) = refusal_body(&refusal(window, Some(30_000)), false);
            assert!(!message.to_lowercase().contains("quota quota"), "{message}");
        }
    }

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn anthropic_clients_get_the_same_error_in_anthropics_shape() {
        let openai = body(ApiError::QuotaExceeded(refusal(Window::Month, Some(30_000))).into_response()).await;
        let response = ApiError::QuotaExceeded(refusal(Window::Month, Some(30_000))).into_anthropic_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(response.headers().get(header::RETRY_AFTER).is_some());
        let anthropic = body(response).await;
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "rate_limit_error");
        for field in ["message", "code", "details"] {
            assert_eq!(anthropic["error"][field], openai["error"][field], "{field}");
        }
        assert_eq!(openai["error"]["type"], "quota_exceeded_error", "the OpenAI shape is unchanged");
        for (error, kind) in [
            (ApiError::bad_request("x"), "invalid_request_error"),
            (ApiError::InvalidKey("x".into()), "authentication_error"),
            (ApiError::KeyRevoked, "permission_error"),
            (ApiError::PayloadTooLarge(1024), "request_too_large"),
            (ApiError::UpstreamTimeout("x".into()), "api_error"),
        ] {
            assert_eq!(body(error.into_anthropic_response()).await["error"]["type"], kind);
        }
    }

    #[test]
    fn a_request_that_can_never_fit_is_a_400_without_retry_after() {
        let response = ApiError::RequestTooLarge(refusal(Window::Day, None)).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
