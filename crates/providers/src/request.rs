//! The request as the gateway sees it (OpenAI's chat completions, completions and
//! embeddings; Anthropic's Messages, `request/anthropic.rs`; OpenAI's Responses,
//! `request/responses.rs`): parsed once, borrowing from the body,
//! into a [`RequestView`] that every later step reads (limits, the reservation
//! estimate, the tokenizer, the `stream_options` rewrite, and later the cache key
//! and the router). Everything the gateway does not need is skipped unparsed.
//!
//! Parse errors are [`RequestError`]s naming the field, which the server turns into
//! OpenAI-shaped 400s.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_json::value::RawValue;
use tollgate_tokenize::{MAX_OUTPUT_TOKENS, Prompt, validate_output_limit};

mod anthropic;
mod responses;
mod shape;

/// Longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

/// The endpoints the proxy accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's native `POST /v1/messages`, forwarded to the Anthropic upstream.
    Messages,
    /// OpenAI's Responses API, `POST /v1/responses`.
    Responses,
}

impl Endpoint {
    /// The name ledger records and endpoint-scoped limits use.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
        }
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
            Endpoint::Responses => "/responses",
        }
    }

    /// Whether the endpoint speaks Anthropic's wire format (its upstream, its error
    /// shape, its stream events).
    pub fn is_anthropic(self) -> bool {
        self == Endpoint::Messages
    }

    /// Whether a stream of this endpoint reports usage only when asked
    /// (`stream_options.include_usage`): OpenAI's chat completions and completions.
    /// Messages and Responses streams always carry it.
    pub fn usage_on_request(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    pub fn streams(self) -> bool {
        self != Endpoint::Embeddings
    }

    /// Whether the answer has output tokens to reserve for.
    pub fn generates(self) -> bool {
        self != Endpoint::Embeddings
    }
}

/// A request the gateway cannot accept, naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub message: String,
    pub param: Option<String>,
}

impl RequestError {
    pub(crate) fn body(message: impl Into<String>) -> Self {
        Self { message: message.into(), param: None }
    }

    pub(crate) fn field(field: &str, message: impl std::fmt::Display) -> Self {
        Self { message: format!("{field}: {message}"), param: Some(field.to_owned()) }
    }
}

/// The fields the gateway reads; everything else is skipped unparsed.
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
    n: Option<Value>,
    #[serde(default)]
    best_of: Option<Value>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default, borrow)]
    functions: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
}

/// A field that is present, even as `null` (plain `Option` turns null into None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// What a request asks for, borrowing from its body.
#[derive(Clone, Debug)]
pub struct RequestView<'a> {
    pub endpoint: Endpoint,
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// The client asked for the final usage chunk itself.
    pub client_wants_usage: bool,
    /// `max_completion_tokens` or `max_tokens`, when set (per choice).
    pub max_output_tokens: Option<u64>,
    /// Choices asked for (`n`, default 1).
    pub n: u64,
    /// Completions generated server-side per prompt (`best_of`, default 1).
    pub best_of: u64,
    /// Where the prompt text lies, for the tokenizer.
    pub prompt: Option<Prompt<'a>>,
    /// Prompts in the request: one, or one per element of a completions `prompt`
    /// array of strings or token arrays (each is completed separately).
    pub prompts: u64,
    /// The raw `stream_options` member, if present (even as `null`).
    stream_options: Option<&'a RawValue>,
    body: &'a [u8],
}

fn count_field(field: &str, value: &Option<Value>, max: u64) -> Result<u64, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(1),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(RequestError::field(field, format!("must be an integer between 1 and {max}"))),
        },
    }
}

/// The body as UTF-8 text, once checked to be a JSON object's.
pub(crate) fn checked_text(body: &[u8]) -> Result<&str, RequestError> {
    // serde would read a struct from a JSON array too; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(RequestError::body("the request body must be a JSON object"));
    }
    // JSON is UTF-8 (RFC 8259); serde skips the strings it does not read without
    // checking them, so the whole body is checked here, once.
    std::str::from_utf8(body)
        .map_err(|e| RequestError::body(format!("the request body is not valid UTF-8 (at byte {})", e.valid_up_to())))
}

pub(crate) fn json_error(e: serde_json::Error) -> RequestError {
    if e.is_data() {
        RequestError::body(format!("invalid request body: {e}"))
    } else {
        RequestError::body(format!("We could not parse the JSON body of your request: {e}"))
    }
}

fn checked_model(model: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, RequestError> {
    match model {
        Some(model) if !model.trim().is_empty() && model.len() <= MAX_MODEL_LEN => Ok(model),
        _ => Err(RequestError::field("model", "is required and must be a non-empty string")),
    }
}

fn checked_stream(endpoint: Endpoint, stream: &Option<Value>) -> Result<bool, RequestError> {
    match stream {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(false),
        Some(Value::Bool(true)) if endpoint.streams() => Ok(true),
        Some(Value::Bool(true)) => Err(RequestError::field("stream", "is not supported on this endpoint")),
        Some(_) => Err(RequestError::field("stream", "must be a boolean")),
    }
}

/// A per-choice output limit, checked.
fn output(field: &'static str, value: &Option<Value>) -> Result<Option<u64>, RequestError> {
    validate_output_limit(field, value.as_ref())
        .map_err(|_| RequestError::field(field, format!("must be an integer between 1 and {MAX_OUTPUT_TOKENS}")))
}

/// Largest `n` and `best_of` accepted (OpenAI's own bound is 128 and 20).
pub const MAX_CHOICES: u64 = 128;

impl<'a> RequestView<'a> {
    /// Parses the request once; malformed bodies are errors that say what is wrong.
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<Self, RequestError> {
        let text = checked_text(body)?;
        match endpoint {
            Endpoint::Messages => return anthropic::parse(body, text),
            Endpoint::Responses => return responses::parse(body, text),
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {}
        }
        let probe: Probe<'a> = serde_json::from_str(text).map_err(json_error)?;
        let model = checked_model(probe.model)?;
        let stream = checked_stream(endpoint, &probe.stream)?;
        let max_output_tokens = match output("max_completion_tokens", &probe.max_completion_tokens)? {
            Some(n) => Some(n),
            None => output("max_tokens", &probe.max_tokens)?,
        };
        let client_wants_usage = match probe.stream_options.map(RawValue::get) {
            None | Some("null") => false,
            Some(raw) if raw.starts_with('{') => {
                let options: serde_json::Map<String, Value> = serde_json::from_str(raw)
                    .map_err(|_| RequestError::field("stream_options", "must be an object"))?;
                match options.get("include_usage") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(RequestError::field("stream_options.include_usage", "must be a boolean"));
                    }
                }
            }
            Some(_) => return Err(RequestError::field("stream_options", "must be an object")),
        };
        let n = count_field("n", &probe.n, MAX_CHOICES)?;
        let best_of = count_field("best_of", &probe.best_of, MAX_CHOICES)?;
        let mut prompts = 1;
        let prompt = match endpoint {
            Endpoint::ChatCompletions => {
                let messages = probe.messages.ok_or_else(|| RequestError::field("messages", "is required"))?;
                shape::check_messages(messages)?;
                shape::check_definitions("tools", probe.tools)?;
                shape::check_definitions("functions", probe.functions)?;
                Some(Prompt::Chat { messages, tools: probe.tools, functions: probe.functions })
            }
            Endpoint::Completions => match probe.prompt.filter(|p| p.get() != "null") {
                Some(raw) => {
                    prompts = shape::check_text_input("prompt", raw)?;
                    Some(Prompt::Text(raw))
                }
                None => None,
            },
            Endpoint::Embeddings => {
                let input = probe.input.ok_or_else(|| RequestError::field("input", "is required"))?;
                shape::check_text_input("input", input)?;
                Some(Prompt::Text(input))
            }
            // Parsed by their own modules above.
            Endpoint::Messages | Endpoint::Responses => None,
        };
        Ok(Self {
            endpoint,
            model,
            stream,
            client_wants_usage,
            max_output_tokens,
            n,
            best_of,
            prompt,
            prompts,
            stream_options: probe.stream_options,
            body,
        })
    }

    /// How many times the per-choice output limit the request may generate at most:
    /// `n` × `best_of` × prompts.
    pub fn output_multiplier(&self) -> u64 {
        self.n.saturating_mul(self.best_of.max(1)).saturating_mul(self.prompts)
    }

    /// Whether the gateway asks the upstream for the usage chunk on the client's
    /// behalf, and hides it from the client.
    pub fn strips_usage(&self) -> bool {
        self.stream && !self.client_wants_usage && self.endpoint.usage_on_request()
    }

    /// The body to send upstream: for a stream the client did not ask usage for,
    /// with `stream_options.include_usage` set to `true` (spliced in from where the
    /// view found `stream_options`, the rest byte for byte); otherwise `body` as is.
    /// `body` must be the bytes this view was parsed from.
    pub fn upstream_body(&self, body: &Bytes) -> Bytes {
        if !self.strips_usage() || body.as_ref() != self.body {
            return body.clone();
        }
        let Some(options) = self.stream_options else {
            let Some(open) = body.iter().position(|b| *b == b'{') else { return body.clone() };
            let mut out = BytesMut::with_capacity(body.len() + 40);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            return out.freeze();
        };
        let raw = options.get();
        let replacement = if raw == "null" {
            br#"{"include_usage":true}"#.to_vec()
        } else {
            // An object (parse checked it); its other members are kept.
            let Ok(mut map) = serde_json::from_str::<serde_json::Map<String, Value>>(raw) else {
                return body.clone();
            };
            map.insert("include_usage".to_owned(), Value::Bool(true));
            match serde_json::to_vec(&map) {
                Ok(v) => v,
                Err(_) => return body.clone(),
            }
        };
        // The raw value borrows from the body: its address gives its position.
        let Some(start) = (raw.as_ptr() as usize).checked_sub(self.body.as_ptr() as usize) else {
            return body.clone();
        };
        let Some(end) = start.checked_add(raw.len()).filter(|end| *end <= body.len()) else {
            return body.clone();
        };
        let mut out = BytesMut::with_capacity(body.len() + replacement.len());
        out.extend_from_slice(&body[..start]);
        out.extend_from_slice(&replacement);
        out.extend_from_slice(&body[end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(body: &str) -> String {
        let bytes = Bytes::from(body.to_owned());
        let view = RequestView::parse(Endpoint::ChatCompletions, &bytes).expect("valid");
        String::from_utf8(view.upstream_body(&bytes).to_vec()).expect("utf-8")
    }

    #[test]
    fn the_usage_chunk_is_asked_for_only_when_the_client_did_not() {
        let plain = r#"{"model":"m","stream":true,"messages":[{"role":"user"}]}"#;
        let asked: Value = serde_json::from_str(&upstream(plain)).expect("json");
        assert_eq!(asked["stream_options"]["include_usage"], true);
        let null = r#"{"model":"m","stream":true,"stream_options":null,"messages":[{"role":"user"}]}"#;
        let asked: Value = serde_json::from_str(&upstream(null)).expect("json");
        assert_eq!(asked["stream_options"]["include_usage"], true);
        let other = r#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[{"role":"user"}]}"#;
        let asked: Value = serde_json::from_str(&upstream(other)).expect("json");
        assert_eq!(
            (asked["stream_options"]["include_usage"].clone(), asked["stream_options"]["x"].clone()),
            (Value::Bool(true), 1.into())
        );
        let own = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user"}]}"#;
        assert_eq!(upstream(own), own);
        let not_streaming = r#"{"model":"m","messages":[{"role":"user"}]}"#;
        assert_eq!(upstream(not_streaming), not_streaming);
    }

    #[test]
    fn choices_and_prompts_are_read() {
        let body = br#"{"model":"m","n":3,"best_of":2,"max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        let view = RequestView::parse(Endpoint::ChatCompletions, body).expect("valid");
        assert_eq!((view.n, view.best_of, view.max_output_tokens), (3, 2, Some(10)));
        assert!(matches!(view.prompt, Some(Prompt::Chat { .. })));
        for bad in [r#"{"model":"m","n":0}"#, r#"{"model":"m","n":129}"#, r#"{"model":"m","best_of":"x"}"#] {
            assert!(RequestView::parse(Endpoint::ChatCompletions, bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_prompts_are_refused_before_admission() {
        let chat = |body: &[u8]| RequestView::parse(Endpoint::ChatCompletions, body).map(|v| v.prompts);
        assert_eq!(chat(br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#), Ok(1));
        let parts = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]},{"role":"assistant","content":null,"tool_calls":[]}]}"#;
        assert_eq!(chat(parts), Ok(1));
        let escaped = br#"{"model":"m","messages":[{"ro\u006ce":"us\u0065r","name":null,"extra":[1,{"a":2}]}]}"#;
        assert_eq!(chat(escaped), Ok(1), "escaped keys and values, unknown fields");
        for bad in [
            &b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}"[..],
            br#"{"model":"m"}"#,
            br#"{"model":"m","messages":null}"#,
            br#"{"model":"m","messages":[]}"#,
            br#"{"model":"m","messages":"hi"}"#,
            br#"{"model":"m","messages":[1]}"#,
            br#"{"model":"m","messages":[{"content":"no role"}]}"#,
            br#"{"model":"m","messages":[{"role":5,"content":"x"}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":7}]}"#,
            br#"{"model":"m","messages":[{"role":"user","content":["x"]}]}"#,
            br#"{"model":"m","messages":[{"role":"user","name":1}]}"#,
            // A message as an array (a derived struct would read it as its fields).
            br#"{"model":"m","messages":[["user"]]}"#,
            br#"{"model":"m","messages":[["user","hi"]]}"#,
            br#"{"model":"m","messages":[{"role":"user","role":"system"}]}"#,
            br#"{"model":"m","messages":[{"role":"user"}],"tools":{}}"#,
            br#"{"model":"m","messages":[{"role":"user"}],"functions":[1]}"#,
        ] {
            let e = chat(bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(!e.message.contains(" at line "), "{}", e.message);
        }
        let completions = |body: &[u8]| RequestView::parse(Endpoint::Completions, body).map(|v| v.prompts);
        assert_eq!(completions(br#"{"model":"m"}"#), Ok(1));
        assert_eq!(completions(br#"{"model":"m","prompt":"a"}"#), Ok(1));
        assert_eq!(completions(br#"{"model":"m","prompt":["a","b","c"]}"#), Ok(3));
        assert_eq!(completions(br#"{"model":"m","prompt":[1,2,3]}"#), Ok(1));
        assert_eq!(completions(br#"{"model":"m","prompt":[[1],[2,3]]}"#), Ok(2));
        for bad in [r#"[]"#, r#"5"#, r#"{}"#, r#"["a",1]"#, r#"[[1],"a"]"#, r#"[[]]"#, r#"[-1]"#, r#"[true]"#] {
            let body = format!(r#"{{"model":"m","prompt":{bad}}}"#);
            assert!(completions(body.as_bytes()).is_err(), "{body}");
            let body = format!(r#"{{"model":"m","input":{bad}}}"#);
            assert!(RequestView::parse(Endpoint::Embeddings, body.as_bytes()).is_err(), "{body}");
        }
        assert!(RequestView::parse(Endpoint::Embeddings, br#"{"model":"m"}"#).is_err());
        assert!(RequestView::parse(Endpoint::Embeddings, br#"{"model":"m","input":["a","b"]}"#).is_ok());
    }

    #[test]
    fn the_output_multiplier_covers_choices_best_of_and_prompts() {
        let body = br#"{"model":"m","n":3,"best_of":4,"prompt":["a","b"]}"#;
        assert_eq!(RequestView::parse(Endpoint::Completions, body).expect("valid").output_multiplier(), 24);
    }
}
