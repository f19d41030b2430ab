//! A streamed answer assembled back into the JSON answer it stands for, so a streamed
//! miss can be stored like a whole one. Only a stream that completed is an answer:
//! `data: [DONE]` seen, no error event, every choice with a finish reason, and the
//! usage chunk read. Anything this does not reproduce exactly (tool-call and function
//! deltas, log probabilities, refusals) makes the stream not cacheable, as does a
//! stream larger than the entry cap.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::replay::Kind;

/// What [`StreamAssembler::finish`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    pub body: Bytes,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
}

#[derive(Default)]
struct Choice {
    role: Option<Value>,
    content: String,
    finish_reason: Option<Value>,
}

pub struct StreamAssembler {
    kind: Kind,
    max_bytes: usize,
    seen: usize,
    line: Vec<u8>,
    head: serde_json::Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
    done: bool,
    /// Not cacheable (too big, an error, or a delta this cannot reproduce).
    spoiled: bool,
}

impl StreamAssembler {
    pub fn new(kind: Kind, max_bytes: usize) -> Self {
        Self {
            kind,
            max_bytes,
            seen: 0,
            line: Vec::new(),
            head: serde_json::Map::new(),
            choices: BTreeMap::new(),
            usage: None,
            done: false,
            spoiled: false,
        }
    }

    /// Reads one chunk of the upstream's SSE body (as the upstream sent it).
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.spoiled {
            return;
        }
        self.seen = self.seen.saturating_add(chunk.len());
        if self.seen > self.max_bytes {
            self.spoil();
            return;
        }
        for &b in chunk {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
                if self.spoiled {
                    return;
                }
            } else {
                self.line.push(b);
            }
        }
    }

    fn spoil(&mut self) {
        self.spoiled = true;
        self.line = Vec::new();
        self.choices.clear();
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        if self.done {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else { return self.spoil() };
        if event.get("error").is_some() {
            return self.spoil();
        }
        for field in ["id", "created", "model", "system_fingerprint"] {
            if let Some(v) = event.get(field).filter(|v| !v.is_null()) {
                self.head.entry(field.to_owned()).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = event.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone());
        }
        let Some(choices) = event.get("choices").and_then(Value::as_array) else { return };
        for choice in choices {
            let Some(index) = choice.get("index").and_then(Value::as_u64) else { return self.spoil() };
            if choice.get("logprobs").is_some_and(|l| !l.is_null()) {
                return self.spoil();
            }
            let entry = self.choices.entry(index).or_default();
            match self.kind {
                Kind::Chat => {
                    let Some(delta) = choice.get("delta") else { continue };
                    for unsupported in ["tool_calls", "function_call", "refusal"] {
                        if delta.get(unsupported).is_some_and(|v| !v.is_null()) {
                            return self.spoil();
                        }
                    }
                    if let Some(role) = delta.get("role").filter(|r| r.is_string()) {
                        entry.role = Some(role.clone());
                    }
                    if let Some(content) = delta.get("content").and_then(Value::as_str) {
                        entry.content.push_str(content);
                    }
                }
                Kind::Completion => {
                    if let Some(text) = choice.get("text").and_then(Value::as_str) {
                        entry.content.push_str(text);
                    }
                }
            }
            if let Some(finish) = choice.get("finish_reason").filter(|f| !f.is_null()) {
                entry.finish_reason = Some(finish.clone());
            }
        }
    }

    /// The JSON answer, if the stream completed and is cacheable.
    pub fn finish(self) -> Option<Assembled> {
        if self.spoiled || !self.done || self.choices.is_empty() {
            return None;
        }
        let usage = self.usage?;
        let count = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let prompt_tokens = count(usage.get("prompt_tokens"));
        let completion_tokens = count(usage.get("completion_tokens"));
        let cached_tokens = count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")));
        let mut choices = Vec::with_capacity(self.choices.len());
        for (index, choice) in self.choices {
            let finish = choice.finish_reason?;
            choices.push(match self.kind {
                Kind::Chat => json!({
                    "index": index,
                    "message": {
                        "role": choice.role.unwrap_or_else(|| json!("assistant")),
                        "content": choice.content,
                        "refusal": null,
                    },
                    "logprobs": null,
                    "finish_reason": finish,
                }),
                Kind::Completion => {
                    json!({ "index": index, "text": choice.content, "logprobs": null, "finish_reason": finish })
                }
            });
        }
        let mut answer = self.head;
        let object = match self.kind {
            Kind::Chat => "chat.completion",
            Kind::Completion => "text_completion",
        };
        answer.insert("object".to_owned(), json!(object));
        answer.insert("choices".to_owned(), Value::Array(choices));
        answer.insert("usage".to_owned(), usage);
        let model = answer.get("model").and_then(Value::as_str).map(str::to_owned);
        let body = serde_json::to_vec(&Value::Object(answer)).ok()?;
        if body.len() > self.max_bytes {
            return None;
        }
        Some(Assembled { body: Bytes::from(body), model, prompt_tokens, completion_tokens, cached_tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(s: &str) -> String {
        format!("data: {s}\n\n")
    }

    #[test]
    fn only_a_completed_stream_assembles() {
        let parts = [
            chunk(
                r#"{"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            ),
            chunk(
                r#"{"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            ),
            chunk(
                r#"{"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            ),
            chunk(
                r#"{"id":"x","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            ),
            "data: [DONE]\n\n".to_owned(),
        ];
        let all = parts.concat();
        // Any split of the bytes gives the same answer.
        for split in [1, 7, 40, all.len() - 3] {
            let mut a = StreamAssembler::new(Kind::Chat, 1 << 20);
            a.feed(&all.as_bytes()[..split]);
            a.feed(&all.as_bytes()[split..]);
            let done = a.finish().expect("complete");
            let v: Value = serde_json::from_slice(&done.body).expect("json");
            assert_eq!(v["choices"][0]["message"]["content"], "Hello");
            assert_eq!((done.prompt_tokens, done.completion_tokens), (3, 2));
        }
        let mut cut = StreamAssembler::new(Kind::Chat, 1 << 20);
        cut.feed(parts[..3].concat().as_bytes());
        assert!(cut.finish().is_none(), "no usage, no [DONE]: not complete");
        let mut small = StreamAssembler::new(Kind::Chat, 50);
        small.feed(all.as_bytes());
        assert!(small.finish().is_none(), "over the cap");
        let mut error = StreamAssembler::new(Kind::Chat, 1 << 20);
        error.feed(format!("{}{}{}", parts[0], chunk(r#"{"error":{"message":"x"}}"#), parts[4]).as_bytes());
        assert!(error.finish().is_none());
    }
}
