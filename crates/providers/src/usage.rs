//! Finding the `usage` block in what the upstream answered, without building a JSON
//! tree and without holding up the response.
//!
//! The scanner keeps the body's chunks as they pass to the client (`Bytes` clones
//! share the buffer, nothing is copied) and parses once at the end with a serde
//! struct that skips every field but `usage`.

use bytes::Bytes;
use serde::Deserialize;

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
