//! The OpenAI-compatible proxy: `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings` and `/v1/models`.
//!
//! Order of work for a request: authenticate the key, read the body (bounded), one
//! limiter decision over every limit (reserve), forward, stream the answer back as it
//! comes (streams included, with the usage chunk requested and hidden when the client
//! did not ask for it), and when the body ends (or the client goes away) account the
//! usage (`accounting`), append the ledger record and settle the reservation.

use std::net::SocketAddr;
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

use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tollgate_core::{Decision, UsageRecord};
use tollgate_providers::sse::SseRewriter;
use tollgate_providers::{UpstreamError, UsageScanner};
use tollgate_store::ReserveRequest;

use crate::accounting::{self, Endpoint, Finalizer, Outcome};
use crate::auth::{Authed, authenticate_request};
use crate::enforce;
use crate::error::ApiError;
use crate::state::{AppState, now_ms};
use crate::traffic::{self, Peer, Traffic};

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

async fn chat_completions(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::ChatCompletions, peer, headers, body).await
}

async fn completions(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Completions, peer, headers, body).await
}

async fn embeddings(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Embeddings, peer, headers, body).await
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

fn with_headers(mut response: Response, decision: Option<&Decision>, request_id: &str, now_ms: i64) -> Response {
    if let Some(decision) = decision {
        enforce::apply_headers(response.headers_mut(), decision, now_ms);
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

async fn forward(
    state: AppState,
    endpoint: Endpoint,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    let info = match accounting::inspect(endpoint, &bytes) {
        Ok(i) => i,
        Err(e) => return e.into_response(),
    };
    let anonymous_id = match Traffic::anonymous_id(&headers) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let traffic = Traffic {
        provider: state.config.provider.clone(),
        model: info.model.clone(),
        endpoint: endpoint.name().to_owned(),
        client_ip: Traffic::client_ip(&headers, peer, state.config.forwarded_for_hops),
        anonymous_id,
    };
    let anonymous_plan = state.plans.get(&state.config.anonymous_plan);
    let items = traffic::limit_items(&authed, &traffic, anonymous_plan.as_deref());
    let amounts = accounting::estimate(&state, endpoint, &info, &bytes, &items);
    let request_id = state.ids.next();
    let reserve = ReserveRequest {
        partition: &authed.key.project_id,
        request_id: &request_id,
        items: &items,
        amounts,
        now_ms: now,
        hold: true,
    };
    let decision = match state.limiter.reserve(reserve).await {
        Ok(d) => d,
        Err(e) => return with_headers(ApiError::from(e).into_response(), None, &request_id, now),
    };
    let mut record = new_record(&authed, &request_id, now, endpoint.name(), Some(info.model.clone()), &traffic);
    if let Some(refused) = enforce::refusal(&decision, &authed.plan.name, now) {
        record.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
        record.latency_ms = started.elapsed().as_millis() as u64;
        state.ledger.append(record);
        return with_headers(refused.into_response(), Some(&decision), &request_id, now);
    }
    // A streamed answer reports usage only if asked: ask on the client's behalf and
    // hide the extra chunk from it.
    let strip_usage = info.stream && !info.client_wants_usage;
    let upstream_body = if strip_usage {
        tollgate_providers::sse::request_with_include_usage(&bytes).map_or_else(|| bytes.clone(), |(b, _)| b)
    } else {
        bytes.clone()
    };
    let passed = forwarded_headers(&state, &headers);
    let sent = state.upstream.send(reqwest::Method::POST, endpoint.upstream_path(), passed, Some(upstream_body)).await;
    let mut upstream = match sent {
        Ok(u) => u,
        Err(e) => {
            let error = upstream_error(&e);
            record.status = error.status().as_u16();
            let finalizer = Finalizer { state, record, endpoint, body: bytes, refund: true, success: false, started };
            if let Some(commit) = finalizer.finish(Outcome::Nothing) {
                commit.await;
            }
            return with_headers(error.into_response(), Some(&decision), &request_id, now);
        }
    };
    record.status = upstream.status;
    let success = (200..300).contains(&upstream.status);
    // The provider's own failures and throttling are not the client's usage.
    let refund = upstream.status >= 500 || upstream.status == 429;
    let is_sse = upstream.content_type.as_deref().is_some_and(|ct| ct.starts_with("text/event-stream"));
    let status = StatusCode::from_u16(upstream.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response_headers = HeaderMap::new();
    if let Some(ct) = upstream.content_type.take().and_then(|v| HeaderValue::from_str(&v).ok()) {
        response_headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(ra) = upstream.retry_after.take().and_then(|v| HeaderValue::from_str(&v).ok()) {
        response_headers.insert(header::RETRY_AFTER, ra);
    }
    let finalizer = Finalizer { state, record, endpoint, body: bytes, refund, success, started };
    let response = if is_sse {
        response_headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        let watcher = Watcher::Sse(SseRewriter::new(strip_usage));
        let stream = AccountingStream::new(upstream.body, watcher, finalizer);
        respond(status, response_headers, Body::from_stream(stream))
    } else {
        match collect_json(upstream.body).await {
            Collected::Whole(body) => {
                let usage = if success { tollgate_providers::usage::checked_usage_from_json(&body) } else { Ok(None) };
                match usage {
                    Ok(usage) => {
                        let held = usage.is_none().then(|| body.clone());
                        if let Some(commit) = finalizer.finish(Outcome::Json { usage, body: held }) {
                            commit.await;
                        }
                        respond(status, response_headers, Body::from(body))
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "upstream answered 2xx with a body that is not JSON");
                        refund_and_fail(finalizer, StatusCode::BAD_GATEWAY, &e.to_string()).await;
                        ApiError::UpstreamInvalid("The upstream provider returned an invalid response.".into())
                            .into_response()
                    }
                }
            }
            Collected::Broken(e) => {
                tracing::warn!(error = %e, "upstream body broke off");
                refund_and_fail(finalizer, StatusCode::BAD_GATEWAY, &e.to_string()).await;
                upstream_error(&e).into_response()
            }
            // Too big to hold: pass it through as it comes, counting instead of parsing.
            Collected::TooBig { head, rest } => {
                let watcher = Watcher::Json(UsageScanner::new(0));
                let stream = futures_util::stream::iter(head.into_iter().map(Ok)).chain(rest);
                let stream = AccountingStream::new(Box::pin(stream), watcher, finalizer);
                respond(status, response_headers, Body::from_stream(stream))
            }
        }
    };
    with_headers(response, Some(&decision), &request_id, now)
}

fn respond(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Records a request whose upstream answer was unusable as failed and refunded.
async fn refund_and_fail(mut finalizer: Finalizer, status: StatusCode, why: &str) {
    tracing::debug!(%why, "refunding");
    finalizer.record.status = status.as_u16();
    finalizer.refund = true;
    finalizer.success = false;
    if let Some(commit) = finalizer.finish(Outcome::Nothing) {
        commit.await;
    }
}

type UpstreamBody = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// A non-streaming answer, read whole (one JSON document: it arrives in one burst once
/// the provider is done, so holding it costs no latency) so that a broken or invalid
/// answer becomes a clear 502 and the usage is known before the client gets it.
enum Collected {
    Whole(Bytes),
    Broken(UpstreamError),
    TooBig { head: Vec<Bytes>, rest: UpstreamBody },
}

async fn collect_json(mut body: UpstreamBody) -> Collected {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0;
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                len += chunk.len();
                chunks.push(chunk);
                if len > MAX_SCANNED_RESPONSE {
                    return Collected::TooBig { head: chunks, rest: body };
                }
            }
            Some(Err(e)) => return Collected::Broken(e),
            None => break,
        }
    }
    Collected::Whole(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => {
            let mut whole = bytes::BytesMut::with_capacity(len);
            for c in &chunks {
                whole.extend_from_slice(c);
            }
            whole.freeze()
        }
    })
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

fn new_record(
    authed: &Authed,
    id: &str,
    now: i64,
    endpoint: &str,
    model: Option<String>,
    traffic: &Traffic,
) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms: now,
        project_id: authed.key.project_id.clone(),
        key_id: authed.key.id.clone(),
        endpoint: endpoint.to_owned(),
        provider: traffic.provider.clone(),
        model,
        requests: 1,
        client_ip: traffic.client_ip.map(|ip| ip.to_string()),
        anonymous_id: traffic.anonymous_id.clone(),
        ..UsageRecord::default()
    }
}

/// How the body is watched for usage on its way to the client.
enum Watcher {
    Json(UsageScanner),
    Sse(SseRewriter),
}

/// Passes the upstream body through chunk by chunk while watching for usage; the
/// finalizer runs at the end of the body, on an upstream error, or on drop (the
/// client went away), whichever comes first, with what was delivered so far. In
/// `sync` durability the end of the body waits for the ledger commit.
struct AccountingStream {
    inner: UpstreamBody,
    watcher: Watcher,
    finalizer: Option<Finalizer>,
    commit: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// Bytes to send after the commit (a held-back event, or an error event).
    tail: Option<Bytes>,
    done: bool,
}

impl AccountingStream {
    fn new(inner: UpstreamBody, watcher: Watcher, finalizer: Finalizer) -> Self {
        Self { inner, watcher, finalizer: Some(finalizer), commit: None, tail: None, done: false }
    }

    fn finish(&mut self) {
        if let Some(f) = self.finalizer.take() {
            let outcome = match &mut self.watcher {
                Watcher::Json(scanner) => Outcome::Json { usage: scanner.finish(), body: None },
                Watcher::Sse(rewriter) => Outcome::Stream(rewriter.finish()),
            };
            self.commit = f.finish(outcome);
        }
    }
}

/// The SSE event that ends a stream the upstream broke off, so SDKs raise a clear
/// error instead of seeing a silently truncated answer.
fn broken_stream_event(e: &UpstreamError) -> Bytes {
    let (code, message) = match e {
        UpstreamError::Timeout(d) => {
            ("upstream_timeout", format!("The upstream provider stopped sending for {}s.", d.as_secs()))
        }
        _ => ("upstream_stream_broken", "The upstream provider's stream broke off.".to_owned()),
    };
    let event = serde_json::json!({ "error": { "message": message, "type": "upstream_error", "code": code } });
    Bytes::from(format!("data: {event}\n\n"))
}

impl Stream for AccountingStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                if let Some(commit) = this.commit.as_mut() {
                    if commit.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.commit = None;
                }
                return Poll::Ready(this.tail.take().map(Ok));
            }
            return match this.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let out = match &mut this.watcher {
                        Watcher::Json(scanner) => {
                            scanner.observe(&chunk);
                            chunk
                        }
                        Watcher::Sse(rewriter) => rewriter.process(chunk),
                    };
                    if out.is_empty() {
                        continue;
                    }
                    Poll::Ready(Some(Ok(out)))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "upstream body broke off");
                    this.done = true;
                    match &mut this.watcher {
                        Watcher::Sse(rewriter) => {
                            let mut tail = bytes::BytesMut::from(&rewriter.flush()[..]);
                            tail.extend_from_slice(&broken_stream_event(&e));
                            this.tail = Some(tail.freeze());
                            this.finish();
                            continue;
                        }
                        Watcher::Json(_) => {
                            this.finish();
                            Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
                        }
                    }
                }
                Poll::Ready(None) => {
                    // An event the rewriter held back (it might have been the usage
                    // chunk) goes out before the end.
                    let tail = match &mut this.watcher {
                        Watcher::Sse(rewriter) => rewriter.flush(),
                        Watcher::Json(_) => Bytes::new(),
                    };
                    this.tail = (!tail.is_empty()).then_some(tail);
                    this.done = true;
                    this.finish();
                    continue;
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl Drop for AccountingStream {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `GET /v1/models`: authenticated, not limited, not recorded, passed through.
async fn models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let now = now_ms();
    if let Err(e) = authenticate_request(&state, &headers, now).await {
        return e.into_response();
    }
    let request_id = state.ids.next();
    let passed = forwarded_headers(&state, &headers);
    match state.upstream.send(reqwest::Method::GET, "/models", passed, None).await {
        Ok(up) => {
            let body = up.body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
            let mut response = Response::new(Body::from_stream(body));
            *response.status_mut() = StatusCode::from_u16(up.status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(ct) = up.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
                response.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            with_headers(response, None, &request_id, now)
        }
        Err(e) => with_headers(upstream_error(&e).into_response(), None, &request_id, now),
    }
}
