//! Accounting of one proxied request: what it asks for (parsed once, borrowing), what
//! to reserve before forwarding, and what it really used once the answer is over
//! (reported by the upstream, or counted with a tokenizer when it reports nothing or
//! the stream broke), priced in integer micro-dollars.

use std::borrow::Cow;
use std::time::Instant;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use tollgate_core::{Amounts, Metric, UsageRecord, UsageSource};
use tollgate_providers::pricing::PriceTable;
use tollgate_providers::sse::StreamSummary;
use tollgate_providers::{TokenUsage, tokenize};
use tollgate_store::{LimitItem, SettleRequest};

use crate::error::ApiError;
use crate::state::{AppState, now_ms};

/// Largest `max_tokens` accepted; anything above is a mistake, not a request.
const MAX_OUTPUT_TOKENS: i64 = 10_000_000;

/// The endpoints the proxy accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    fn streams(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// The request fields the gateway needs; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
}

/// What a request asks for.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    pub model: String,
    pub stream: bool,
    /// The client asked for the final usage chunk itself.
    pub client_wants_usage: bool,
    /// `max_completion_tokens` or `max_tokens`, when set.
    pub max_output_tokens: Option<u64>,
}

fn output_limit(field: &str, value: &Option<Value>) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=MAX_OUTPUT_TOKENS).contains(&n) => Ok(Some(n as u64)),
            _ => Err(ApiError::invalid_field(field, format!("must be an integer between 1 and {MAX_OUTPUT_TOKENS}"))),
        },
    }
}

/// Parses the request once; malformed bodies are 400s that say what is wrong.
pub fn inspect(endpoint: Endpoint, body: &[u8]) -> Result<RequestInfo, ApiError> {
    // serde would read a struct from a JSON array too; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    }
    let probe: Probe<'_> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(format!("invalid request body: {e}"))
        } else {
            ApiError::bad_request(format!("We could not parse the JSON body of your request: {e}"))
        }
    })?;
    let model = match probe.model {
        Some(model) if !model.trim().is_empty() && model.len() <= 256 => model.into_owned(),
        _ => return Err(ApiError::invalid_field("model", "is required and must be a non-empty string")),
    };
    let stream = match probe.stream {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) if endpoint.streams() => true,
        Some(Value::Bool(true)) => return Err(ApiError::invalid_field("stream", "is not supported on this endpoint")),
        Some(_) => return Err(ApiError::invalid_field("stream", "must be a boolean")),
    };
    let max_output_tokens = match output_limit("max_completion_tokens", &probe.max_completion_tokens)? {
        Some(n) => Some(n),
        None => output_limit("max_tokens", &probe.max_tokens)?,
    };
    let client_wants_usage = match &probe.stream_options {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => match o.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid_field("stream_options.include_usage", "must be a boolean")),
        },
        Some(_) => return Err(ApiError::invalid_field("stream_options", "must be an object")),
    };
    Ok(RequestInfo { model, stream, client_wants_usage, max_output_tokens })
}

/// Prompt tokens of a request body, counted with the model's tokenizer.
pub fn count_prompt(endpoint: Endpoint, model: &str, body: &[u8]) -> u64 {
    let counted = match endpoint {
        Endpoint::ChatCompletions => tokenize::count_chat_prompt(model, body),
        Endpoint::Completions => tokenize::count_completion_prompt(model, body),
        Endpoint::Embeddings => tokenize::count_embedding_input(model, body),
    };
    // A body whose shape the counter does not know still costs something: about
    // four bytes a token is the usual rule of thumb.
    counted.unwrap_or(body.len() as u64 / 4)
}

/// What to reserve before forwarding. Tokens are counted only when a token or cost
/// limit applies to the request: a requests-only plan pays nothing for tokenizing.
pub fn estimate(state: &AppState, endpoint: Endpoint, info: &RequestInfo, body: &[u8], items: &[LimitItem]) -> Amounts {
    let needs_tokens = items.iter().any(|i| i.spec.metric != Metric::Requests);
    if !needs_tokens {
        return Amounts::ONE_REQUEST;
    }
    let input = count_prompt(endpoint, &info.model, body);
    let output = match endpoint {
        Endpoint::Embeddings => 0,
        _ => info.max_output_tokens.unwrap_or(state.config.default_max_output_tokens),
    };
    let needs_cost = items.iter().any(|i| i.spec.metric == Metric::CostMicros);
    let cost_micros =
        if needs_cost { price(&state.config.prices, &info.model).cost(input, 0, output).micros } else { 0 };
    Amounts { requests: 1, input_tokens: input, output_tokens: output, cost_micros }
}

fn price(table: &PriceTable, model: &str) -> tollgate_providers::pricing::ModelPrice {
    let lookup = table.price(model);
    if !lookup.known {
        warn_unknown_model(model);
    }
    lookup.price
}

/// Warns once per model name that it is priced at the default price.
fn warn_unknown_model(model: &str) {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let warned = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    if warned.len() < 10_000 && warned.insert(model.to_owned()) {
        tracing::warn!(%model, "no price known for this model: using the configured default price");
    }
}

/// What the upstream's answer told us, collected as it streamed by.
pub enum Outcome {
    /// A JSON answer; `usage` is its usage block, if any; `body` the whole answer
    /// when it was held (to count its text when no usage was reported).
    Json { usage: Option<TokenUsage>, body: Option<Bytes> },
    /// A streamed answer.
    Stream(StreamSummary),
    /// Nothing usable (an error before or instead of an answer).
    Nothing,
}

/// Settles the reservation and writes the ledger record once a response is over.
pub struct Finalizer {
    pub state: AppState,
    pub record: UsageRecord,
    pub endpoint: Endpoint,
    /// The request body, kept by reference to count prompt tokens if the upstream
    /// reports none.
    pub body: Bytes,
    /// Refund everything (the provider failed or throttled).
    pub refund: bool,
    /// The upstream answered 2xx: tokens were spent.
    pub success: bool,
    pub started: Instant,
}

/// Resolves when the request's ledger record is durable (`durability = "sync"`), or
/// at once.
pub type Commit = Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>;

impl Finalizer {
    /// Accounts the request, queues its ledger record, settles the reservation in the
    /// background, and returns what the response must wait for before it ends.
    pub fn finish(self, outcome: Outcome) -> Commit {
        let Finalizer { state, mut record, endpoint, body, refund, success, started } = self;
        record.latency_ms = started.elapsed().as_millis() as u64;
        let actual = if refund {
            record.counted = false;
            Amounts::default()
        } else {
            record.counted = true;
            if success {
                account_tokens(&state, &mut record, endpoint, &body, outcome);
            }
            Amounts {
                requests: record.requests,
                input_tokens: record.prompt_tokens,
                output_tokens: record.completion_tokens,
                cost_micros: record.cost_micros,
            }
        };
        // The record is queued before the client sees the end of the body (this runs
        // when the body stream ends, before the last chunk is written), and with
        // `durability = "sync"` the end waits for the commit: a client that got a
        // complete 2xx finds it in the ledger, even after a crash.
        let request_id = record.id.clone();
        let partition = record.project_id.clone();
        state.ledger.append(record);
        let commit: Commit = state.config.durable_responses.then(|| {
            let ledger = state.ledger.clone();
            let id = request_id.clone();
            Box::pin(async move {
                if let Err(e) = ledger.flush().await {
                    tracing::error!(request_id = %id, error = %e, "ledger commit failed");
                }
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        });
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(%request_id, "no runtime to settle on");
            return commit;
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
        commit
    }
}

/// The generated text of a chat or completions answer (for counting its tokens when
/// the upstream reported none). Only runs on that rare path.
fn completion_text_from_json(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        message: Option<Message>,
        #[serde(default)]
        text: Option<String>,
    }
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        content: Option<String>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else { return String::new() };
    let mut text = String::new();
    for choice in answer.choices {
        if let Some(t) = choice.text {
            text.push_str(&t);
        }
        if let Some(c) = choice.message.and_then(|m| m.content) {
            text.push_str(&c);
        }
    }
    text
}

/// Fills the record's tokens (reported, or counted) and cost.
fn account_tokens(state: &AppState, record: &mut UsageRecord, endpoint: Endpoint, body: &[u8], outcome: Outcome) {
    let model = record.model.clone().unwrap_or_default();
    let (reported, delivered_text) = match outcome {
        Outcome::Json { usage: None, body: Some(body) } => (None, Some(completion_text_from_json(&body))),
        Outcome::Json { usage, .. } => (usage, None),
        Outcome::Stream(summary) => (summary.usage, Some(summary.completion_text)),
        Outcome::Nothing => (None, None),
    };
    match reported {
        Some(u) => {
            record.prompt_tokens = u.prompt_tokens;
            record.completion_tokens = u.completion_tokens;
            record.cached_tokens = u.cached_tokens.min(u.prompt_tokens);
            record.usage_source = UsageSource::Reported;
        }
        None => {
            record.prompt_tokens = count_prompt(endpoint, &model, body);
            record.completion_tokens = delivered_text.map_or(0, |t| tokenize::count_text(&model, &t));
            record.usage_source = UsageSource::Counted;
        }
    }
    let cost =
        price(&state.config.prices, &model).cost(record.prompt_tokens, record.cached_tokens, record.completion_tokens);
    record.cost_micros = cost.micros;
    record.uncached_cost_micros = cost.uncached_micros;
    record.price_version = Some(state.config.prices.version().to_owned());
}
