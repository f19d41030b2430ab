//! A [`tower::Layer`] that puts tollgate's keys and quotas in front of any HTTP
//! service: each request's API key is checked (and its cost charged) with
//! `POST /api/v1/keys/verify`, and a refusal is answered before the inner service
//! runs, with the status and headers a client expects.
//!
//! ```no_run
//! use tollgate_verify_layer::{VerifyConfig, VerifyLayer};
//! # fn app(router: axum::Router) -> axum::Router {
//! router.layer(VerifyLayer::new(VerifyConfig::new("http://127.0.0.1:8080")))
//! # }
//! ```
//!
//! | tollgate says | the client gets |
//! |---|---|
//! | `VALID` | the inner service's answer; the [`Verified`] key in the request's extensions; `X-RateLimit-Limit` and `X-RateLimit-Remaining` of the tightest limit |
//! | no key presented | 401 `missing_api_key` |
//! | `NOT_FOUND` | 401 `invalid_api_key` |
//! | `REVOKED`, `EXPIRED` | 403 `key_revoked` / `key_expired` |
//! | `RATE_LIMITED`, `QUOTA_EXCEEDED` | 429 `rate_limit_exceeded` / `quota_exceeded` with `Retry-After` |
//! | unreachable, timeout, 5xx | [`FailMode::Open`]: the inner service runs (header `x-tollgate-verify: unavailable`); [`FailMode::Closed`]: 503 `verify_unavailable` |
//!
//! Error bodies are in OpenAI's shape (`{"error": {"message", "type", "code"}}`),
//! like tollgate's own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Deserialize;

/// What to do when tollgate cannot answer (down, slow, or a 5xx).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailMode {
    /// Let the request through unchecked (availability first).
    Open,
    /// Refuse it with a 503 (no unmetered use).
    Closed,
}

/// The layer's settings.
#[derive(Clone, Debug)]
pub struct VerifyConfig {
    /// tollgate's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Requests each call charges (`cost`).
    pub cost: u64,
    /// The header carrying the key: `authorization` (as `Bearer <key>`) or another
    /// header holding the bare key (e.g. `x-api-key`).
    pub key_header: http::HeaderName,
    pub fail_mode: FailMode,
    /// Longest wait for tollgate's answer before [`fail_mode`](Self::fail_mode) applies.
    pub timeout: Duration,
}

impl VerifyConfig {
    /// Bearer keys, cost 1, fail closed, 2 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into().trim_end_matches('/').to_owned(),
            cost: 1,
            key_header: header::AUTHORIZATION,
            fail_mode: FailMode::Closed,
            timeout: Duration::from_secs(2),
        }
    }

    pub fn fail_mode(mut self, mode: FailMode) -> Self {
        self.fail_mode = mode;
        self
    }

    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    pub fn key_header(mut self, name: http::HeaderName) -> Self {
        self.key_header = name;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The key a request was verified with, in its extensions for the inner service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub project: String,
    pub plan: String,
}

/// See the crate doc.
#[derive(Clone)]
pub struct VerifyLayer {
    shared: Arc<Shared>,
}

struct Shared {
    config: VerifyConfig,
    http: reqwest::Client,
}

impl VerifyLayer {
    pub fn new(config: VerifyConfig) -> Self {
        // reqwest is built without a default TLS provider in this workspace.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http =
            reqwest::Client::builder().timeout(config.timeout).build().unwrap_or_else(|_| reqwest::Client::new());
        Self { shared: Arc::new(Shared { config, http }) }
    }
}

impl<S> tower::Layer<S> for VerifyLayer {
    type Service = VerifyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyService { inner, shared: self.shared.clone() }
    }
}

/// The service [`VerifyLayer`] wraps around `S`.
#[derive(Clone)]
pub struct VerifyService<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
    code: String,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    limits: Vec<LimitView>,
    #[serde(default)]
    retry_after: Option<u64>,
}

#[derive(Deserialize)]
struct LimitView {
    limit: u64,
    remaining: u64,
}

/// tollgate's verdict, as the layer acts on it.
enum Outcome {
    Pass(Option<VerifyAnswer>),
    Refuse(StatusCode, &'static str, String, Option<u64>),
}

impl Shared {
    /// The presented key, if any.
    fn key<B>(&self, request: &Request<B>) -> Option<String> {
        let value = request.headers().get(&self.config.key_header)?.to_str().ok()?.trim();
        let key = if self.config.key_header == header::AUTHORIZATION {
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?.trim()
        } else {
            value
        };
        (!key.is_empty()).then(|| key.to_owned())
    }

    async fn check(&self, key: Option<String>) -> Outcome {
        let Some(key) = key else {
            return Outcome::Refuse(
                StatusCode::UNAUTHORIZED,
                "missing_api_key",
                "No API key was provided.".into(),
                None,
            );
        };
        let url = format!("{}/api/v1/keys/verify", self.config.url);
        let sent = self.http.post(&url).json(&serde_json::json!({ "key": key, "cost": self.config.cost })).send().await;
        let answer = match sent {
            Ok(r) if r.status().is_success() => r.json::<VerifyAnswer>().await.map_err(|e| e.to_string()),
            Ok(r) => Err(format!("tollgate answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        };
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(%why, "tollgate verify unavailable");
                return match self.config.fail_mode {
                    FailMode::Open => Outcome::Pass(None),
                    FailMode::Closed => Outcome::Refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "verify_unavailable",
                        "The key service is unavailable; try again shortly.".into(),
                        None,
                    ),
                };
            }
        };
        if answer.valid {
            return Outcome::Pass(Some(answer));
        }
        let (status, code, message) = match answer.code.as_str() {
            "REVOKED" => (StatusCode::FORBIDDEN, "key_revoked", "This API key has been revoked."),
            "EXPIRED" => (StatusCode::FORBIDDEN, "key_expired", "This API key has expired."),
            "RATE_LIMITED" => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "Rate limit exceeded."),
            "QUOTA_EXCEEDED" => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", "Quota exceeded."),
            _ => (StatusCode::UNAUTHORIZED, "invalid_api_key", "Invalid API key."),
        };
        Outcome::Refuse(status, code, message.to_owned(), answer.retry_after)
    }
}

/// An error answer in OpenAI's shape.
fn refusal<B: From<Bytes>>(status: StatusCode, code: &str, message: &str, retry_after: Option<u64>) -> Response<B> {
    let kind = match status {
        StatusCode::FORBIDDEN => "permission_error",
        StatusCode::TOO_MANY_REQUESTS if code == "quota_exceeded" => "quota_exceeded_error",
        StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
        StatusCode::SERVICE_UNAVAILABLE => "api_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({ "error": { "message": message, "type": kind, "code": code } }).to_string();
    let mut response = Response::new(B::from(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for VerifyService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<Bytes> + Send,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready serves this request (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let key = shared.key(&request);
            match shared.check(key).await {
                Outcome::Refuse(status, code, message, retry_after) => Ok(refusal(status, code, &message, retry_after)),
                Outcome::Pass(answer) => {
                    let tightest = answer.as_ref().and_then(|a| a.limits.iter().min_by_key(|l| l.remaining));
                    let limit_headers = tightest.map(|l| (l.limit, l.remaining));
                    if let Some(a) = &answer {
                        request.extensions_mut().insert(Verified {
                            key_id: a.key_id.clone().unwrap_or_default(),
                            project: a.project.clone().unwrap_or_default(),
                            plan: a.plan.clone().unwrap_or_default(),
                        });
                    }
                    let mut response = inner.call(request).await?;
                    let headers = response.headers_mut();
                    match limit_headers {
                        Some((limit, remaining)) => {
                            headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
                            headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
                        }
                        None if answer.is_none() => {
                            headers.insert("x-tollgate-verify", HeaderValue::from_static("unavailable"));
                        }
                        None => {}
                    }
                    Ok(response)
                }
            }
        })
    }
}
