//! The OpenAI-compatible proxy: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`.
//!
//! Order of work for a request: authenticate the key, read the body (bounded), one
//! limiter decision over every limit (reserve), forward, stream the answer back as it
//! comes, and when the body ends (or the client goes away) settle the reservation to
//! the reported usage and append the ledger record, off the response path.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::Stream;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use tollgate_core::{Amounts, Decision, UsageRecord};
use tollgate_providers::{TokenUsage, UpstreamError, UsageScanner};
use tollgate_store::{ReserveRequest, SettleRequest};

use crate::auth::{Authed, authenticate_request};
use crate::enforce;
use crate::error::ApiError;
use crate::state::{AppState, now_ms};

/// Largest response whose usage block is looked for (bigger ones pass through
/// untouched and are recorded without token counts).
const MAX_SCANNED_RESPONSE: usize = 8 * 1024 * 1024;
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
}

#[derive(Clone, Copy, Debug)]
enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

async fn chat_completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::ChatCompletions, headers, body).await
}

async fn completions(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Completions, headers, body).await
}

async fn embeddings(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Embeddings, headers, body).await
}

/// Reads the request body, refusing more than `max` bytes with a 413.
pub async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ApiError::PayloadTooLarge(max));
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::PayloadTooLarge(max)),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// The few request fields the gateway needs; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
}

fn probe(body: &[u8]) -> Result<String, ApiError> {
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(format!("invalid request body: {e}"))
        } else {
            ApiError::bad_request(format!("We could not parse the JSON body of your request: {e}"))
        }
    })?;
    match probe.model {
        Some(model) if !model.trim().is_empty() => Ok(model.into_owned()),
        _ => Err(ApiError::invalid_field("model", "is required and must be a non-empty string")),
    }
}

fn with_headers(mut response: Response, decision: Option<&Decision>, request_id: &str) -> Response {
    if let Some(decision) = decision {
        enforce::apply_headers(response.headers_mut(), decision);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    response
}

fn upstream_error(e: &UpstreamError) -> ApiError {
    match e {
        UpstreamError::Timeout(d) => {
            ApiError::UpstreamTimeout(format!("The upstream provider did not answer within {}s.", d.as_secs()))
        }
        other => {
            tracing::warn!(error = %other, "upstream call failed");
            ApiError::UpstreamUnavailable("The upstream provider could not be reached.".into())
        }
    }
}

async fn forward(state: AppState, endpoint: Endpoint, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let now = now_ms();
    let authed = match authenticate_request(&state, &headers, now).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let bytes = match read_body(&headers, body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let model = match probe(&bytes) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let request_id = state.ids.next();
    let items = authed.limit_items();
    let reserve = ReserveRequest {
        partition: &authed.key.project_id,
        request_id: &request_id,
        items: &items,
        amounts: Amounts::ONE_REQUEST,
        now_ms: now,
        hold: true,
    };
    let decision = match state.limiter.reserve(reserve).await {
        Ok(d) => d,
        Err(e) => return with_headers(ApiError::from(e).into_response(), None, &request_id),
    };
    let mut record = new_record(&authed, &request_id, now, endpoint.name(), Some(model));
    if let Some(refused) = enforce::refusal(&decision, &authed.plan.name, now) {
        record.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
        record.latency_ms = started.elapsed().as_millis() as u64;
        state.ledger.append(record);
        return with_headers(refused.into_response(), Some(&decision), &request_id);
    }
    let passed = forwarded_headers(&state, &headers);
    let upstream = match state.upstream.send(reqwest::Method::POST, endpoint.upstream_path(), passed, Some(bytes)).await
    {
        Ok(u) => u,
        Err(e) => {
            let error = upstream_error(&e);
            record.status = error.status().as_u16();
            Finalizer { state, record, refund: true, started }.finish(None);
            return with_headers(error.into_response(), Some(&decision), &request_id);
        }
    };
    record.status = upstream.status;
    // The provider's own failures and throttling are not the client's usage.
    let refund = upstream.status >= 500 || upstream.status == 429;
    let finalizer = Finalizer { state, record, refund, started };
    let stream = AccountingStream {
        inner: upstream.body,
        scanner: UsageScanner::new(MAX_SCANNED_RESPONSE),
        finalizer: Some(finalizer),
    };
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = response.headers_mut();
    if let Some(ct) = upstream.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(ra) = upstream.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        h.insert(header::RETRY_AFTER, ra);
    }
    with_headers(response, Some(&decision), &request_id)
}

/// The client headers configured to pass through (`upstream.forward_headers`).
fn forwarded_headers(state: &AppState, headers: &HeaderMap) -> HeaderMap {
    let mut passed = HeaderMap::new();
    for name in &state.config.forward_headers {
        for value in headers.get_all(name) {
            passed.append(name.clone(), value.clone());
        }
    }
    passed
}

fn new_record(authed: &Authed, id: &str, now: i64, endpoint: &str, model: Option<String>) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms: now,
        project_id: authed.key.project_id.clone(),
        key_id: authed.key.id.clone(),
        endpoint: endpoint.to_owned(),
        model,
        status: 0,
        counted: false,
        requests: 1,
        ..UsageRecord::default()
    }
}

/// Settles the reservation and writes the ledger record once a response is over.
struct Finalizer {
    state: AppState,
    record: UsageRecord,
    refund: bool,
    started: Instant,
}

impl Finalizer {
    fn finish(self, usage: Option<TokenUsage>) {
        let Finalizer { state, mut record, refund, started } = self;
        record.latency_ms = started.elapsed().as_millis() as u64;
        let actual = if refund {
            record.counted = false;
            Amounts::default()
        } else {
            let usage = usage.unwrap_or_default();
            record.counted = true;
            record.prompt_tokens = usage.prompt_tokens;
            record.completion_tokens = usage.completion_tokens;
            Amounts {
                requests: record.requests,
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                cost_micros: 0,
            }
        };
        // The record is queued before the client sees the end of the body (the
        // finalizer runs when the body stream ends, before the last chunk is
        // written), so a client that got a complete 2xx finds it in the ledger.
        let request_id = record.id.clone();
        let partition = record.project_id.clone();
        state.ledger.append(record);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(%request_id, "no runtime to settle on");
            return;
        };
        let tasks = state.tasks.clone();
        tasks.spawn_on(
            async move {
                let settle = SettleRequest { partition: &partition, request_id: &request_id, actual, now_ms: now_ms() };
                if let Err(e) = state.limiter.settle(settle).await {
                    tracing::error!(%request_id, error = %e, "settlement failed");
                }
            },
            &runtime,
        );
    }
}

/// Passes the upstream body through chunk by chunk while watching for usage; the
/// finalizer runs at the end of the body, on an upstream error, or on drop (the
/// client went away), whichever comes first.
struct AccountingStream {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>,
    scanner: UsageScanner,
    finalizer: Option<Finalizer>,
}

impl AccountingStream {
    fn finish(&mut self) {
        if let Some(f) = self.finalizer.take() {
            let usage = self.scanner.finish();
            f.finish(usage);
        }
    }
}

impl Stream for AccountingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.scanner.observe(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::warn!(error = %e, "upstream body broke off");
                this.finish();
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for AccountingStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `GET /v1/models`: authenticated, not limited, passed through.
async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let now = now_ms();
    let authed = match authenticate_request(&state, &headers, now).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let request_id = state.ids.next();
    let mut record = new_record(&authed, &request_id, now, "models", None);
    record.requests = 0;
    let passed = forwarded_headers(&state, &headers);
    match state.upstream.send(reqwest::Method::GET, "/models", passed, None).await {
        Ok(up) => {
            record.status = up.status;
            let finalizer = Finalizer { state, record, refund: true, started };
            let stream = AccountingStream { inner: up.body, scanner: UsageScanner::new(0), finalizer: Some(finalizer) };
            let mut response = Response::new(Body::from_stream(stream));
            *response.status_mut() = StatusCode::from_u16(up.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = up.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            with_headers(response, None, &request_id)
        }
        Err(e) => {
            let error = upstream_error(&e);
            record.status = error.status().as_u16();
            Finalizer { state, record, refund: true, started }.finish(None);
            with_headers(error.into_response(), None, &request_id)
        }
    }
}
