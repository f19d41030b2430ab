//! An OpenAI-compatible mock upstream.
//!
//! Tests and benchmarks need a real HTTP server that speaks the subset of the
//! OpenAI API the gateway proxies, and that can misbehave on demand. The mock
//! answers `POST /v1/chat/completions` (including SSE streaming),
//! `POST /v1/completions`, `POST /v1/embeddings` and `GET /v1/models`, OpenAI's
//! Responses API (`POST /v1/responses`, `responses.rs`) and Anthropic's Messages API
//! (`POST /v1/messages`, `anthropic.rs`), with token usage taken from [`MockConfig`].
//!
//! Misbehaviour is chosen per request through `x-mock-*` headers so that one
//! running mock can serve many tests at once:
//!
//! * `x-mock-latency-ms: N` — sleep N ms before answering (overrides the config).
//! * `x-mock-status: 429` — answer that status (400..=599) with an OpenAI-shaped
//!   error body; 429 also carries `Retry-After: 7`.
//! * `x-mock-usage: P,C` — report P prompt and C completion tokens.
//! * `x-mock-fault: malformed | no-usage | reset | stall | hold-usage` — see [`Fault`].
//! * `x-mock-model: NAME` — name NAME as the answer's `model` (instead of the request's).
//! * `x-mock-chunks: N` — stream N content chunks (1 to 10,000).
//! * `x-mock-echo-headers: a, b` — a (non-streamed) chat completion carries
//!   `"mock_echo": {"a": [values received], "b": []}`, so a test can see which
//!   headers the gateway sent upstream. The same answers (and Anthropic's non-streamed
//!   Messages answers) also carry `"mock_key_sha256"`: the SHA-256, in hex, of the
//!   provider key the mock received (`Authorization: Bearer`'s or `x-api-key`'s; `null`
//!   without one), so a test can tell which key was used without the key itself
//!   passing through an answer.
//!
//! On `POST /v1/messages`, a request with `tools` whose last user message contains
//! [`TOOL_TRIGGER`] ("call a tool") is answered with a `tool_use` of its first tool.
//!
//! The same server is exposed by the CLI as `tollgate mock-upstream` and
//! documented in `docs/mock-upstream.md`.

use std::future::{Future, IntoFuture};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod anthropic;
mod azure;
mod directives;
mod error;
mod reply;
mod responses;
pub mod semantic;

use directives::Directives;
pub use directives::Fault;
pub(crate) use error::{ApiError, bad_mock_header, bad_request, injected_error, openai_error};
use reply::{StreamSpec, chat_choice, json_reply, sse_reply, text_choice};

/// Header that overrides the configured latency for one request.
pub const HEADER_LATENCY: &str = "x-mock-latency-ms";
/// Content chunks of a streamed answer (1 to 10,000; default: the six of the reply).
pub const HEADER_CHUNKS: &str = "x-mock-chunks";
/// Header that makes the mock answer with an error status.
pub const HEADER_STATUS: &str = "x-mock-status";
/// Header that overrides the reported token usage: `prompt,completion`.
pub const HEADER_USAGE: &str = "x-mock-usage";
/// Header that injects a protocol fault; see [`Fault`].
pub const HEADER_FAULT: &str = "x-mock-fault";
/// Header naming the model the answer says it came from.
pub const HEADER_MODEL: &str = "x-mock-model";
/// Names the request headers a chat completion answer echoes back (`mock_echo`).
pub const HEADER_ECHO: &str = "x-mock-echo-headers";
/// Text that, in the last user message of a `POST /v1/messages` request defining
/// `tools`, makes the mock call the first tool (`input: {"city": "Paris"}`).
pub const TOOL_TRIGGER: &str = "call a tool";

/// `Retry-After` value sent with injected 429s; odd on purpose so tests can
/// tell it apart from any default the gateway might invent.
const RETRY_AFTER_SECS: &str = "7";

/// How long [`serve`] keeps draining in-flight requests after the shutdown
/// signal. A `stall` stream never finishes, so graceful shutdown alone could
/// hang forever.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Pause between the last chunk of a `reset` stream and the abort. Without it
/// hyper may discard the buffered chunks together with the connection, and
/// clients would never see the "two chunks" the fault promises.
const RESET_DELAY: Duration = Duration::from_millis(20);

/// The assistant reply, split the way it is streamed.
const REPLY_PIECES: &[&str] = &["Hello", " from", " the", " tollgate", " mock", " upstream."];

/// Models listed by `GET /v1/models`, with OpenAI-like creation times.
const MODELS: &[(&str, u64)] = &[
    ("gpt-4o-mini", 1_721_172_741),
    ("gpt-4o", 1_715_367_049),
    ("gpt-3.5-turbo-instruct", 1_692_901_427),
    ("text-embedding-3-small", 1_705_948_997),
];

/// Number of floats in every mock embedding.
const EMBEDDING_DIMS: usize = 8;

/// Behaviour shared by every request the mock answers.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Delay before each answer, unless a request sends `x-mock-latency-ms`.
    pub latency_ms: u64,
    /// Prompt tokens reported in `usage`, unless overridden by `x-mock-usage`.
    pub prompt_tokens: u64,
    /// Completion tokens reported in `usage`, unless overridden by `x-mock-usage`.
    pub completion_tokens: u64,
    /// When set, `/v1/*` requests must carry `Authorization: Bearer <key>`.
    pub expected_api_key: Option<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self { latency_ms: 0, prompt_tokens: 10, completion_tokens: 20, expected_api_key: None }
    }
}

/// A mock OpenAI upstream. Cloning is cheap and clones share counters, so a
/// test can keep one handle while the server runs on another.
#[derive(Clone, Debug)]
pub struct MockUpstream {
    inner: Arc<Inner>,
}

/// A behaviour forced on every request of one mock (on top of its `x-mock-*`
/// headers), changeable while it runs: a failing provider that later recovers.
#[derive(Clone, Debug, Default)]
pub struct Forced {
    /// Answer every request with this status (and OpenAI's error body).
    pub status: Option<u16>,
    pub fault: Option<Fault>,
    /// Wait this long before answering.
    pub latency_ms: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    config: MockConfig,
    forced: std::sync::Mutex<Forced>,
    /// The Azure deployment of the last Azure-style call.
    last_deployment: std::sync::Mutex<Option<String>>,
    served: AtomicU64,
    next_id: AtomicU64,
    /// Permits for streams held by `hold-usage` ([`MockUpstream::release_held_usage`]).
    usage_gate: Arc<tokio::sync::Semaphore>,
}

impl Inner {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl MockUpstream {
    /// A mock with the given configuration and zeroed counters.
    pub fn new(config: MockConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                forced: std::sync::Mutex::new(Forced::default()),
                last_deployment: std::sync::Mutex::new(None),
                served: AtomicU64::new(0),
                next_id: AtomicU64::new(0),
                usage_gate: Arc::new(tokio::sync::Semaphore::new(0)),
            }),
        }
    }

    /// Forces `forced` on every later request (`Forced::default()` ends it).
    pub fn force(&self, forced: Forced) {
        *self.inner.forced.lock().unwrap_or_else(|p| p.into_inner()) = forced;
    }

    /// The deployment the last Azure-style call (`/openai/deployments/{name}/…`) named.
    pub fn last_deployment(&self) -> Option<String> {
        self.inner.last_deployment.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Lets one stream held by `x-mock-fault: hold-usage` send its usage chunk and
    /// `[DONE]` (a release before the stream waits is kept for it).
    pub fn release_held_usage(&self) {
        self.inner.usage_gate.add_permits(1);
    }

    /// The configuration this mock answers with.
    pub fn config(&self) -> &MockConfig {
        &self.inner.config
    }

    /// The axum router serving the mock API. Serve it with TCP_NODELAY (as
    /// [`MockUpstream::serve`] does) or keep-alive clients stall on delayed ACKs.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            // Azure OpenAI's deployment URLs and Gemini's OpenAI-compatible endpoint.
            .route("/openai/deployments/{deployment}/chat/completions", post(azure::chat_completions))
            .route("/openai/deployments/{deployment}/embeddings", post(azure::embeddings))
            .route("/v1beta/openai/chat/completions", post(chat_completions))
            .route("/v1beta/openai/models", get(list_models))
            .route("/openai/models", get(list_models))
            .route("/v1/completions", post(completions))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/responses", post(responses::responses))
            .route("/v1/messages", post(anthropic::messages))
            .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
            .route("/v1/models", get(list_models))
            .route("/v1/models/{model}", get(get_model))
            .route("/health", get(|| async { "ok" }))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(self.inner.clone(), count_requests))
            // Large enough for the gateway's biggest bodies (its own limit applies first).
            .layer(axum::extract::DefaultBodyLimit::max(64 * 1024 * 1024))
            .with_state(self.inner.clone())
    }

    /// Number of `/v1/*` requests the mock has answered (or is answering:
    /// a request counts as soon as it arrives, so requests the client gave up
    /// on during an injected latency are included).
    pub fn requests_served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Serves this mock on `listener` until `shutdown` resolves, then drains
    /// in-flight requests for at most one second.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        // Headers and body chunks leave in separate writes; with Nagle on, the
        // second write waits for the client's delayed ACK (~40 ms on Linux).
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!("mock upstream: failed to set TCP_NODELAY: {err}");
            }
        });
        let (signalled_tx, signalled_rx) = oneshot::channel::<()>();
        let server = axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                shutdown.await;
                let _ = signalled_tx.send(());
            })
            .into_future();
        let grace = async move {
            // The sender only disappears without sending when the server has
            // already returned, so waiting forever here is harmless.
            if signalled_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = server => result,
            () = grace => Ok(()),
        }
    }
}

/// Serves a mock built from `config` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: MockConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    MockUpstream::new(config).serve(listener, shutdown).await
}

/// A mock running on a background task, for tests and benchmarks.
/// Dropping it stops the server.
#[derive(Debug)]
pub struct RunningMock {
    upstream: MockUpstream,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

/// Starts a mock on `127.0.0.1` with an ephemeral port on the current tokio
/// runtime.
pub async fn spawn(config: MockConfig) -> io::Result<RunningMock> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let upstream = MockUpstream::new(config);
    let (tx, rx) = oneshot::channel::<()>();
    let server = upstream.clone();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await
    });
    Ok(RunningMock { upstream, addr, shutdown: Some(tx), task: Some(task) })
}

impl RunningMock {
    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL including `/v1`, e.g. `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The mock's handle, sharing counters with the running server.
    pub fn upstream(&self) -> &MockUpstream {
        &self.upstream
    }

    /// See [`MockUpstream::release_held_usage`].
    pub fn release_held_usage(&self) {
        self.upstream.release_held_usage();
    }

    /// See [`MockUpstream::force`].
    pub fn force(&self, forced: Forced) {
        self.upstream.force(forced);
    }

    /// See [`MockUpstream::requests_served`].
    pub fn requests_served(&self) -> u64 {
        self.upstream.requests_served()
    }

    /// Stops accepting connections and waits for the server task to end.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningMock {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Everything every `/v1/*` handler does first: parse directives, wait,
/// authenticate, and apply an injected status. The order mirrors a real
/// upstream, which is slow before it rejects a bad key.
async fn prelude(inner: &Inner, headers: &HeaderMap) -> Result<Directives, ApiError> {
    let mut directives = Directives::parse(headers, &inner.config)?;
    let forced = inner.forced.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(status) = forced.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        directives.status = Some(status);
    }
    if forced.fault.is_some() {
        directives.fault = forced.fault;
    }
    if let Some(ms) = forced.latency_ms {
        directives.latency = Duration::from_millis(ms);
    }
    if !directives.latency.is_zero() {
        tokio::time::sleep(directives.latency).await;
    }
    check_auth(&inner.config, headers)?;
    if let Some(status) = directives.status {
        return Err(injected_error(status));
    }
    Ok(directives)
}

fn check_auth(config: &MockConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = config.expected_api_key.as_deref() else {
        return Ok(());
    };
    // Azure OpenAI takes the key as `api-key`.
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    match presented {
        Some(key) if key == expected => Ok(()),
        Some(_) => Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided to the mock upstream.",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        )),
        None => Err(openai_error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. Provide it in the Authorization header as 'Bearer YOUR_KEY'.",
            "invalid_request_error",
            Some("invalid_api_key"),
            None,
        )),
    }
}

/// Counts `/v1/*` requests on arrival and tags answers with a request id, as
/// OpenAI does, so gateway logs can be correlated in tests.
async fn count_requests(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let counted = req.uri().path().starts_with("/v1/");
    if counted {
        inner.served.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = next.run(req).await;
    if counted {
        let id = format!("req_mock_{}", inner.next_id());
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(HeaderName::from_static("x-request-id"), value);
        }
    }
    response
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
        None,
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    openai_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("Method {method} is not allowed for {}", uri.path()),
        "invalid_request_error",
        None,
        None,
    )
}

/// Parses a JSON object body and its `model`, answering 400 like OpenAI does
/// for anything else.
fn parse_body(body: &Bytes) -> Result<(Map<String, Value>, String), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|err| bad_request(&format!("We could not parse the JSON body of your request: {err}"), None))?;
    let Value::Object(object) = value else {
        return Err(bad_request("The request body must be a JSON object.", None));
    };
    let model = match object.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.clone(),
        _ => {
            return Err(bad_request("You must provide a model parameter.", Some("model")));
        }
    };
    Ok((object, model))
}

/// As OpenAI does: `messages` must be an array of objects. (A missing `messages` is
/// let through: tests that only care about the answer may leave it out.)
fn check_messages(body: &Map<String, Value>) -> Result<(), ApiError> {
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    match body.get("messages") {
        None => Ok(()),
        Some(Value::Array(messages)) => match messages.iter().position(|m| !m.is_object()) {
            Some(i) => Err(bad_request(
                &format!(
                    "Invalid type for 'messages[{i}]': expected an object, but got {} instead.",
                    kind(&messages[i])
                ),
                Some("messages"),
            )),
            None => Ok(()),
        },
        Some(other) => Err(bad_request(
            &format!("Invalid type for 'messages': expected an array of objects, but got {} instead.", kind(other)),
            Some("messages"),
        )),
    }
}

fn is_stream(body: &Map<String, Value>) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn include_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) async fn chat_completions(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    let (body, model) = parse_body(&body)?;
    let model = directives.model.clone().unwrap_or(model);
    check_messages(&body)?;
    let id = format!("chatcmpl-mock-{}", inner.next_id());
    let created = unix_now();
    if is_stream(&body) {
        let stream =
            StreamSpec { id, created, model, object: "chat.completion.chunk", include_usage: include_usage(&body) };
        return Ok(sse_reply(stream.events(&directives, chat_choice), directives.fault, &inner.usage_gate));
    }
    let reply = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": REPLY_PIECES.concat(), "refusal": null },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": directives.usage(),
        "system_fingerprint": "fp_mock",
    });
    let mut reply = reply;
    if let Some(echo) = echoed_headers(&headers) {
        reply["mock_echo"] = echo;
        reply["mock_key_sha256"] = key_digest(&headers);
    }
    Ok(json_reply(reply, directives.fault))
}

/// The SHA-256 (hex) of the provider key a request carried: `Authorization: Bearer`'s,
/// else `x-api-key`'s; `null` when it carried none.
pub(crate) fn key_digest(headers: &HeaderMap) -> Value {
    use sha2::{Digest, Sha256};
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let key = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match key {
        Some(key) => Value::String(Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()),
        None => Value::Null,
    }
}

/// The headers `x-mock-echo-headers` names, each with every value received.
fn echoed_headers(headers: &HeaderMap) -> Option<Value> {
    let names = headers.get(HEADER_ECHO)?.to_str().ok()?;
    let mut echo = serde_json::Map::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let values: Vec<Value> =
            headers.get_all(name).iter().map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into())).collect();
        echo.insert(name.to_ascii_lowercase(), Value::Array(values));
    }
    Some(Value::Object(echo))
}

async fn completions(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    let (body, model) = parse_body(&body)?;
    let model = directives.model.clone().unwrap_or(model);
    let id = format!("cmpl-mock-{}", inner.next_id());
    let created = unix_now();
    if is_stream(&body) {
        let stream = StreamSpec { id, created, model, object: "text_completion", include_usage: include_usage(&body) };
        return Ok(sse_reply(stream.events(&directives, text_choice), directives.fault, &inner.usage_gate));
    }
    let reply = json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "text": REPLY_PIECES.concat(),
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": directives.usage(),
    });
    Ok(json_reply(reply, directives.fault))
}

pub(crate) async fn embeddings(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    let (body, model) = parse_body(&body)?;
    let model = directives.model.clone().unwrap_or(model);
    let inputs = embedding_inputs(body.get("input"))?;
    // The official SDKs ask for base64 by default and decode it themselves.
    let base64 = match body.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(_) => {
            return Err(bad_request("encoding_format must be 'float' or 'base64'.", Some("encoding_format")));
        }
    };
    let semantic = model == semantic::SEMANTIC_EMBEDDING_MODEL;
    // The semantic model counts one token per word; the others what the directives say.
    let prompt_tokens =
        if semantic { inputs.iter().map(|i| semantic::embed(i).1).sum() } else { directives.prompt_tokens };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = if semantic { semantic::embed(input).0 } else { embedding_vector(input).to_vec() };
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64_encode(&bytes))
            } else {
                Value::Array(vector.iter().map(|&f| json!(f64::from(f))).collect())
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let reply = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
        },
    });
    Ok(json_reply(reply, directives.fault))
}

/// The texts to embed: one per string (or token array) in `input`, or one for
/// a single string or a single token array.
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<String>, ApiError> {
    let invalid =
        || bad_request("'input' must be a string, an array of strings, or an array of token arrays.", Some("input"));
    match input {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_number) {
                return Ok(vec![Value::Array(items.clone()).to_string()]);
            }
            items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Array(tokens) if tokens.iter().all(Value::is_number) => Ok(item.to_string()),
                    _ => Err(invalid()),
                })
                .collect()
        }
        Some(_) => Err(invalid()),
        None => Err(bad_request("'input' is a required property.", Some("input"))),
    }
}

/// A deterministic unit vector derived from the input text, so equal inputs
/// embed equally across runs.
fn embedding_vector(input: &str) -> [f32; EMBEDDING_DIMS] {
    // FNV-1a seeds a xorshift generator; quality is irrelevant here.
    let mut state =
        input.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let mut vector = [0f32; EMBEDDING_DIMS];
    for slot in &mut vector {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Top 24 bits give a float in [0, 1) without rounding surprises.
        *slot = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
    }
    let norm = vector.iter().map(|f| f * f).sum::<f32>().sqrt();
    if norm > 0.0 {
        for slot in &mut vector {
            *slot /= norm;
        }
    }
    vector
}

/// Standard base64 with padding; a dependency is not worth eight floats.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn model_object(id: &str, created: u64) -> Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": "system" })
}

async fn list_models(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    let data: Vec<Value> = MODELS.iter().map(|&(id, created)| model_object(id, created)).collect();
    Ok(json_reply(json!({ "object": "list", "data": data }), directives.fault))
}

async fn get_model(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    match MODELS.iter().find(|&&(id, _)| id == model) {
        Some(&(id, created)) => Ok(json_reply(model_object(id, created), directives.fault)),
        None => Err(openai_error(
            StatusCode::NOT_FOUND,
            &format!("The model '{model}' does not exist"),
            "invalid_request_error",
            Some("model_not_found"),
            Some("model"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn embedding_is_deterministic_unit_vector() {
        let a = embedding_vector("hello");
        assert_eq!(a, embedding_vector("hello"));
        assert_ne!(a, embedding_vector("world"));
        let norm: f32 = a.iter().map(|f| f * f).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}
