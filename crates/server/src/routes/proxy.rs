//! The proxied routes: OpenAI's `/v1/chat/completions`, `/v1/completions`,
//! `/v1/embeddings`, `/v1/responses`, `/v1/models` and `/v1/models/{id}`, and
//! Anthropic's `/v1/messages` (its key also accepted as `x-api-key`, its errors in
//! Anthropic's shape). Thin: read the key and the body off HTTP, run the pipeline
//! (`tollgate_gateway::proxy`), and write its answer back with the rate-limit headers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tollgate_core::Decision;
use tollgate_gateway::metrics::Route;
use tollgate_gateway::proxy::{Answer, AnswerBody, ProxyRequest};
use tollgate_gateway::{GatewayError, now_ms};
use tollgate_providers::Endpoint;

use crate::app::AppState;
use crate::auth::{authenticate_anthropic_request, authenticate_request};
use crate::http::client::{Peer, anonymous_id, client_ip};
use crate::http::error::ApiError;
use crate::http::headers;

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static CACHE_STATUS: HeaderName = HeaderName::from_static("x-tollgate-cache");
/// On a hit: `exact` or `semantic`.
static CACHE_KIND: HeaderName = HeaderName::from_static("x-tollgate-cache-kind");
/// On a semantic hit: the cosine similarity of the stored conversation, 4 decimals.
static CACHE_SIMILARITY: HeaderName = HeaderName::from_static("x-tollgate-cache-similarity");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
}

async fn responses(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Responses, peer, headers, body).await
}

async fn messages(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    forward(state, Endpoint::Messages, peer, headers, body).await
}

/// `POST /v1/messages/count_tokens`: Anthropic's free token count, passed through
/// (authenticated like `/v1/messages`, not limited, not recorded).
async fn count_tokens(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap, body: Body) -> Response {
    let now = now_ms();
    let started = Instant::now();
    let client_ip = client_ip(&headers, peer, state.config.forwarded_for_hops);
    let mut upstream = Duration::ZERO;
    let answer = match authenticate_guarded(&state, &headers, client_ip, now, true).await {
        Ok(authed) => match read_body(&headers, body, state.config.max_body_bytes).await {
            Ok(body) => state.count_message_tokens(&authed, &headers, body).await.map_err(ApiError::from),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    let response = match answer {
        Ok(answer) => {
            upstream = answer.upstream;
            respond(answer)
        }
        Err(e) => e.into_anthropic_response(),
    };
    let request_id = state.ids.next();
    let response = with_headers(response, None, Some(&request_id), now);
    let status = response.status().as_u16();
    state.metrics.request(Route::CountTokens, status, state.metrics.no_model(), started.elapsed(), upstream);
    response
}

/// An error in the shape the endpoint's clients read: Anthropic's for `/v1/messages`,
/// OpenAI's for the rest.
fn error_response(endpoint: Endpoint, e: ApiError) -> Response {
    if endpoint.is_anthropic() { e.into_anthropic_response() } else { e.into_response() }
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

fn with_headers(
    mut response: Response,
    decision: Option<&Decision>,
    request_id: Option<&str>,
    now_ms: i64,
) -> Response {
    if let Some(decision) = decision {
        headers::apply_headers(response.headers_mut(), decision, now_ms);
    }
    if let Some(v) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    response
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
    let route = Route::from_endpoint(endpoint);
    // Answered before admission: counted and logged here (later, the pipeline logs).
    let unadmitted = |e: ApiError| {
        let response = error_response(endpoint, e);
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        state.metrics.request(route, status, state.metrics.no_model(), elapsed, Duration::ZERO);
        tollgate_gateway::access::log_unadmitted(&state, endpoint.name(), status, elapsed);
        response
    };
    let client_ip = client_ip(&headers, peer, state.config.forwarded_for_hops);
    let authed = match authenticate_guarded(&state, &headers, client_ip, now, endpoint.is_anthropic()).await {
        Ok(a) => a,
        Err(e) => return unadmitted(e),
    };
    let body = match read_body(&headers, body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return unadmitted(e),
    };
    let anonymous_id = match anonymous_id(&headers) {
        Ok(a) => a,
        Err(e) => return unadmitted(e),
    };
    let request = ProxyRequest { endpoint, body, client_ip, anonymous_id, headers, started, now_ms: now };
    let proxied = state.proxy(&authed, request).await;
    let admitted = proxied.request_id.is_some();
    let mut upstream = Duration::ZERO;
    let response = match proxied.result {
        Ok(answer) => {
            upstream = answer.upstream;
            respond(answer)
        }
        Err(GatewayError::Refused { plan }) => {
            match proxied.decision.as_ref().and_then(|d| headers::refusal(d, &plan, now)) {
                Some(refused) => error_response(endpoint, refused),
                None => error_response(endpoint, ApiError::internal("a refusal without a refused limit")),
            }
        }
        Err(e) => error_response(endpoint, ApiError::from(e)),
    };
    let mut response = with_headers(response, proxied.decision.as_ref(), proxied.request_id.as_deref(), proxied.now_ms);
    if let Some(cache) = proxied.cache {
        let headers = response.headers_mut();
        headers.insert(CACHE_STATUS.clone(), HeaderValue::from_static(cache.as_str()));
        if let tollgate_gateway::cache::CacheStatus::Hit { age_secs, similarity } = cache {
            headers.insert(header::AGE, HeaderValue::from(age_secs));
            let kind = if similarity.is_some() { "semantic" } else { "exact" };
            headers.insert(CACHE_KIND.clone(), HeaderValue::from_static(kind));
            if let Some(similarity) = similarity
                && let Ok(value) = HeaderValue::from_str(&format!("{similarity:.4}"))
            {
                headers.insert(CACHE_SIMILARITY.clone(), value);
            }
        }
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.request(route, status, proxied.model_label, elapsed, upstream);
    if !admitted {
        tollgate_gateway::access::log_unadmitted(&state, endpoint.name(), status, elapsed);
    }
    response
}

/// The upstream's answer as an HTTP response: its status, content type and
/// `Retry-After`, and the body whole or streamed.
fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match answer.body {
        AnswerBody::Whole(bytes) => Body::from(bytes),
        AnswerBody::Stream(stream) => Body::from_stream(*stream),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let is_sse = answer.content_type.as_deref().is_some_and(|ct| ct.starts_with("text/event-stream"));
    if let Some(ct) = answer.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(ra) = answer.retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::RETRY_AFTER, ra);
    }
    if is_sse {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// Authenticates the bearer key unless the client address is braked for guessing
/// keys (`http::guard`); an unknown or malformed key counts against the address.
async fn authenticate_guarded(
    state: &AppState,
    headers: &HeaderMap,
    client_ip: Option<std::net::IpAddr>,
    now: i64,
    x_api_key: bool,
) -> Result<tollgate_core::Authed, ApiError> {
    if let Some(secs) = state.invalid_keys.blocked(client_ip, now) {
        return Err(ApiError::TooManyInvalidKeys(secs));
    }
    let result = if x_api_key {
        authenticate_anthropic_request(state, headers, now).await
    } else {
        authenticate_request(state, headers, now).await
    };
    if matches!(result, Err(ApiError::InvalidKey(_))) {
        state.invalid_keys.failed(client_ip, now);
    }
    result
}

/// `GET /v1/models`: authenticated, not limited, not recorded, passed through.
async fn models(State(state): State<AppState>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    passed_through(state, peer, headers, None).await
}

/// `GET /v1/models/{id}`: like the list, the upstream's answer (its 404 included).
async fn model(
    State(state): State<AppState>,
    Peer(peer): Peer,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Response {
    // A path axum cannot decode (invalid UTF-8 in its escapes) is the same 400 as an
    // implausible id, in OpenAI's shape (axum's own rejection is plain text).
    match id {
        Ok(Path(id)) => passed_through(state, peer, headers, Some(id)).await,
        Err(_) => ApiError::invalid_field("model", "is not a valid model id").into_response(),
    }
}

async fn passed_through(state: AppState, peer: Option<SocketAddr>, headers: HeaderMap, id: Option<String>) -> Response {
    let now = now_ms();
    let client_ip = client_ip(&headers, peer, state.config.forwarded_for_hops);
    let authed = match authenticate_guarded(&state, &headers, client_ip, now, false).await {
        Ok(authed) => authed,
        Err(e) => return e.into_response(),
    };
    let started = Instant::now();
    let request_id = state.ids.next();
    let mut upstream = Duration::ZERO;
    let answer = match &id {
        None => state.models(&authed, &headers).await,
        Some(id) => state.model(&authed, &headers, id).await,
    };
    let response = match answer {
        Ok(answer) => {
            upstream = answer.upstream;
            respond(answer)
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    let response = with_headers(response, None, Some(&request_id), now);
    state.metrics.request(
        Route::Models,
        response.status().as_u16(),
        state.metrics.no_model(),
        started.elapsed(),
        upstream,
    );
    response
}
