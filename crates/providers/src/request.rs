//! The OpenAI request as the gateway sees it: parsed once, borrowing from the body,
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

/// Longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

/// The endpoints the proxy accounts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The name ledger records and endpoint-scoped limits use.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// The path under the upstream's base URL.
    pub fn upstream_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
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
    fn body(message: impl Into<String>) -> Self {
        Self { message: message.into(), param: None }
    }

    fn field(field: &str, message: impl std::fmt::Display) -> Self {
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

/// Largest `n` and `best_of` accepted (OpenAI's own bound is 128 and 20).
pub const MAX_CHOICES: u64 = 128;

impl<'a> RequestView<'a> {
    /// Parses the request once; malformed bodies are errors that say what is wrong.
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<Self, RequestError> {
        // serde would read a struct from a JSON array too; the API takes objects only.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(RequestError::body("the request body must be a JSON object"));
        }
        let probe: Probe<'a> = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                RequestError::body(format!("invalid request body: {e}"))
            } else {
                RequestError::body(format!("We could not parse the JSON body of your request: {e}"))
            }
        })?;
        let model = match probe.model {
            Some(model) if !model.trim().is_empty() && model.len() <= MAX_MODEL_LEN => model,
            _ => return Err(RequestError::field("model", "is required and must be a non-empty string")),
        };
        let stream = match probe.stream {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) if endpoint.streams() => true,
            Some(Value::Bool(true)) => return Err(RequestError::field("stream", "is not supported on this endpoint")),
            Some(_) => return Err(RequestError::field("stream", "must be a boolean")),
        };
        let output = |field: &'static str, value: &Option<Value>| {
            validate_output_limit(field, value.as_ref()).map_err(|_| {
                RequestError::field(field, format!("must be an integer between 1 and {MAX_OUTPUT_TOKENS}"))
            })
        };
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
        let prompt = match endpoint {
            Endpoint::ChatCompletions => {
                probe.messages.map(|messages| Prompt::Chat { messages, tools: probe.tools, functions: probe.functions })
            }
            Endpoint::Completions => probe.prompt.map(Prompt::Text),
            Endpoint::Embeddings => probe.input.map(Prompt::Text),
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
            stream_options: probe.stream_options,
            body,
        })
    }

    /// Whether the gateway asks the upstream for the usage chunk on the client's
    /// behalf, and hides it from the client.
    pub fn strips_usage(&self) -> bool {
        self.stream && !self.client_wants_usage
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
        let plain = r#"{"model":"m","stream":true,"messages":[]}"#;
        let asked: Value = serde_json::from_str(&upstream(plain)).expect("json");
        assert_eq!(asked["stream_options"]["include_usage"], true);
        let null = r#"{"model":"m","stream":true,"stream_options":null,"messages":[]}"#;
        let asked: Value = serde_json::from_str(&upstream(null)).expect("json");
        assert_eq!(asked["stream_options"]["include_usage"], true);
        let other = r#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[]}"#;
        let asked: Value = serde_json::from_str(&upstream(other)).expect("json");
        assert_eq!(
            (asked["stream_options"]["include_usage"].clone(), asked["stream_options"]["x"].clone()),
            (Value::Bool(true), 1.into())
        );
        let own = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;
        assert_eq!(upstream(own), own);
        let not_streaming = r#"{"model":"m","messages":[]}"#;
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
}
