//! Finding the `usage` block in what the upstream answered, without building a JSON
//! tree and without holding up the response.
//!
//! The scanner keeps the body's chunks as they pass to the client (`Bytes` clones
//! share the buffer, nothing is copied) and parses once at the end with a serde
//! struct that skips every field but `usage`.

use bytes::Bytes;
use serde::Deserialize;

use crate::Endpoint;

/// Token counts as the upstream reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "WireUsage")]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// The part of `prompt_tokens` served from the provider's prompt cache
    /// (`prompt_tokens_details.cached_tokens`), billed at the cached-input rate; 0
    /// when the upstream does not say.
    pub cached_tokens: u64,
}

/// The usage block as OpenAI sends it; nested details are flattened into
/// [`TokenUsage`], and `null` details (some compatible servers send them) are 0.
#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for TokenUsage {
    fn from(w: WireUsage) -> Self {
        TokenUsage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            total_tokens: w.total_tokens,
            cached_tokens: w.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct AnswerEnvelope {
    #[serde(default)]
    usage: Option<TokenUsage>,
    /// Any JSON: an odd `model` must not lose the usage.
    #[serde(default)]
    model: Option<serde_json::Value>,
}

/// What a whole JSON answer says about its accounting, read in one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnswerMeta {
    pub usage: Option<TokenUsage>,
    /// The model the answer names (what it is priced by), if it names one.
    pub model: Option<String>,
}

/// Like [`checked_usage_from_json`], and also reads the answer's `model`.
pub fn checked_answer_from_json(body: &[u8]) -> Result<AnswerMeta, serde_json::Error> {
    match serde_json::from_slice::<AnswerEnvelope>(body) {
        Ok(envelope) => {
            let model = match envelope.model {
                Some(serde_json::Value::String(m)) if !m.is_empty() && m.len() <= 256 => Some(m),
                _ => None,
            };
            Ok(AnswerMeta { usage: envelope.usage, model })
        }
        Err(e) if e.is_data() => serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| AnswerMeta::default()),
        Err(e) => Err(e),
    }
}

/// Like [`checked_answer_from_json`], for the answer of `endpoint`: Anthropic's
/// Messages and OpenAI's Responses name their token counts differently.
pub fn checked_answer_for(endpoint: Endpoint, body: &[u8]) -> Result<AnswerMeta, serde_json::Error> {
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => checked_answer_from_json(body),
        Endpoint::Messages => checked_native_answer::<AnthropicUsage>(body),
        Endpoint::Responses => checked_native_answer::<ResponsesUsage>(body),
    }
}

/// The `usage` and `model` of a Messages or Responses answer.
fn checked_native_answer<U>(body: &[u8]) -> Result<AnswerMeta, serde_json::Error>
where
    U: serde::de::DeserializeOwned + Into<TokenUsage>,
{
    #[derive(Deserialize)]
    #[serde(bound = "U: serde::de::DeserializeOwned")]
    struct Native<U> {
        #[serde(default)]
        usage: Option<U>,
        #[serde(default)]
        model: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Native<U>>(body) {
        Ok(native) => Ok(AnswerMeta { usage: native.usage.map(Into::into), model: checked_model_name(native.model) }),
        Err(e) if e.is_data() => serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| AnswerMeta::default()),
        Err(e) => Err(e),
    }
}

/// A model name an answer gives, if it is a plausible one.
pub(crate) fn checked_model_name(model: Option<serde_json::Value>) -> Option<String> {
    match model {
        Some(serde_json::Value::String(m)) if !m.is_empty() && m.len() <= 256 => Some(m),
        _ => None,
    }
}

/// Anthropic's usage block (plain answers, `message_start.message.usage`, and the
/// cumulative `message_delta.usage`). Its `input_tokens` exclude the prompt-cache
/// reads and writes, which are reported beside them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<u64>,
    #[serde(default)]
    pub output_tokens: Option<u64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// `later`'s counts where it has them (a `message_delta` over `message_start`).
    pub fn merged(self, later: AnthropicUsage) -> AnthropicUsage {
        AnthropicUsage {
            input_tokens: later.input_tokens.or(self.input_tokens),
            output_tokens: later.output_tokens.or(self.output_tokens),
            cache_read_input_tokens: later.cache_read_input_tokens.or(self.cache_read_input_tokens),
            cache_creation_input_tokens: later.cache_creation_input_tokens.or(self.cache_creation_input_tokens),
        }
    }
}

impl From<AnthropicUsage> for TokenUsage {
    /// The prompt is every input token, cache reads and writes included; the cache
    /// reads are the cached part (billed at the cached-input rate). Cache writes are
    /// billed at the input rate (Anthropic charges 1.25x for them: docs/providers.md).
    fn from(u: AnthropicUsage) -> Self {
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        let prompt = u
            .input_tokens
            .unwrap_or(0)
            .saturating_add(cached)
            .saturating_add(u.cache_creation_input_tokens.unwrap_or(0));
        let completion = u.output_tokens.unwrap_or(0);
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            cached_tokens: cached,
        }
    }
}

/// The Responses API's usage block: `input_tokens` include the cached ones
/// (`input_tokens_details.cached_tokens`).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
    #[serde(default)]
    input_tokens_details: Option<InputTokensDetails>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
struct InputTokensDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<ResponsesUsage> for TokenUsage {
    fn from(u: ResponsesUsage) -> Self {
        let prompt = u.input_tokens.unwrap_or(0);
        let completion = u.output_tokens.unwrap_or(0);
        TokenUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u.total_tokens.unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: u.input_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
        }
    }
}

/// Extracts `usage` from a whole JSON response body.
pub fn usage_from_json(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<Envelope>(body).ok()?.usage
}

/// Like [`usage_from_json`], but tells a body that is not a JSON object (a broken
/// upstream) apart from one that simply has no usage.
pub fn checked_usage_from_json(body: &[u8]) -> Result<Option<TokenUsage>, serde_json::Error> {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(envelope) => Ok(envelope.usage),
        // A well-formed object whose usage block has an odd shape is still a valid
        // answer: count its tokens instead of failing the request.
        Err(e) if e.is_data() => serde_json::from_slice::<serde::de::IgnoredAny>(body).map(|_| None),
        Err(e) => Err(e),
    }
}

/// Watches a non-streaming JSON body go by and reports its usage at the end.
pub struct UsageScanner {
    chunks: Vec<Bytes>,
    len: usize,
    max_len: usize,
    overflowed: bool,
}

impl UsageScanner {
    /// `max_len` bounds what is retained; a longer body reports no usage.
    pub fn new(max_len: usize) -> Self {
        Self { chunks: Vec::new(), len: 0, max_len, overflowed: false }
    }

    pub fn observe(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        self.len += chunk.len();
        if self.len > self.max_len {
            self.overflowed = true;
            self.chunks = Vec::new();
            return;
        }
        self.chunks.push(chunk.clone());
    }

    pub fn finish(&mut self) -> Option<TokenUsage> {
        if self.overflowed {
            return None;
        }
        let chunks = std::mem::take(&mut self.chunks);
        match chunks.as_slice() {
            [] => None,
            [one] => usage_from_json(one),
            many => {
                let mut whole = Vec::with_capacity(self.len);
                for c in many {
                    whole.extend_from_slice(c);
                }
                usage_from_json(&whole)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_across_chunks_and_ignores_the_rest() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 999}"}}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":0}}}"#;
        let mut s = UsageScanner::new(1 << 20);
        for part in body.chunks(7) {
            s.observe(&Bytes::copy_from_slice(part));
        }
        assert_eq!(
            s.finish(),
            Some(TokenUsage { prompt_tokens: 12, completion_tokens: 30, total_tokens: 42, cached_tokens: 0 })
        );
    }

    #[test]
    fn missing_malformed_or_oversized_bodies_report_nothing() {
        assert_eq!(usage_from_json(br#"{"id":"x"}"#), None);
        assert_eq!(usage_from_json(b"not json"), None);
        assert_eq!(usage_from_json(br#"{"usage":{"prompt_tokens":-1}}"#), None);
        let mut s = UsageScanner::new(4);
        s.observe(&Bytes::from_static(br#"{"usage":{}}"#));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn anthropic_and_responses_answers_name_their_usage_their_way() {
        let messages = br#"{"id":"msg_1","type":"message","model":"claude-sonnet-4-5","content":[],
            "usage":{"input_tokens":100,"output_tokens":7,"cache_read_input_tokens":50,"cache_creation_input_tokens":20}}"#;
        let meta = checked_answer_for(Endpoint::Messages, messages).expect("json");
        assert_eq!(
            meta.usage,
            Some(TokenUsage { prompt_tokens: 170, completion_tokens: 7, total_tokens: 177, cached_tokens: 50 })
        );
        assert_eq!(meta.model.as_deref(), Some("claude-sonnet-4-5"));
        let responses = br#"{"id":"resp_1","object":"response","model":"gpt-4o-mini","output":[],
            "usage":{"input_tokens":30,"output_tokens":9,"total_tokens":39,"input_tokens_details":{"cached_tokens":12}}}"#;
        let meta = checked_answer_for(Endpoint::Responses, responses).expect("json");
        assert_eq!(
            meta.usage,
            Some(TokenUsage { prompt_tokens: 30, completion_tokens: 9, total_tokens: 39, cached_tokens: 12 })
        );
        assert!(checked_answer_for(Endpoint::Messages, b"{\"id\":").is_err());
        assert_eq!(checked_answer_for(Endpoint::Responses, br#"{"usage":"odd"}"#).expect("json").usage, None);
    }

    #[test]
    fn embeddings_usage_has_no_completion_tokens() {
        assert_eq!(
            usage_from_json(br#"{"data":[],"usage":{"prompt_tokens":8,"total_tokens":8}}"#),
            Some(TokenUsage { prompt_tokens: 8, completion_tokens: 0, total_tokens: 8, cached_tokens: 0 })
        );
    }

    #[test]
    fn cached_tokens_come_from_prompt_tokens_details() {
        let body = br#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
            "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":0}}}"#;
        assert_eq!(
            usage_from_json(body),
            Some(TokenUsage { prompt_tokens: 2006, completion_tokens: 300, total_tokens: 2306, cached_tokens: 1920 })
        );
        let nulls = br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":null}}"#;
        assert_eq!(usage_from_json(nulls).map(|u| u.cached_tokens), Some(0));
        let null_cached = br#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":null}}}"#;
        assert_eq!(usage_from_json(null_cached).map(|u| u.cached_tokens), Some(0));
        assert_eq!(usage_from_json(br#"{"usage":null}"#), None);
    }
}
