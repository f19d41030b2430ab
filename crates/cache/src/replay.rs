//! A cached JSON answer replayed as a stream: the SSE chunks a live stream of the
//! same answer is made of, so SDKs read a hit exactly like a live answer.
//!
//! Chat: per choice, a first chunk with the role, one with the content (and one with
//! the tool calls, if any), one with the finish reason; completions: per choice one
//! chunk with the text and one with the finish reason. Then, when the client asked
//! for it (`stream_options.include_usage`), the usage chunk (`choices: []`), and
//! `data: [DONE]`.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value, json};

/// Which shape of answer is replayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// The SSE body for the JSON answer `body`, or `None` if it is not an answer of
/// `kind` (the caller then treats the entry as a miss).
pub fn sse(kind: Kind, body: &[u8], include_usage: bool) -> Option<Bytes> {
    let answer: Value = serde_json::from_slice(body).ok()?;
    let choices = answer.get("choices")?.as_array()?;
    let mut head = Map::new();
    for field in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = answer.get(field) {
            head.insert(field.to_owned(), v.clone());
        }
    }
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    head.insert("object".to_owned(), Value::String(object.to_owned()));
    let mut out = BytesMut::with_capacity(body.len() * 2 + 256);
    let mut event = |choices: Value, usage: Option<&Value>| {
        let mut chunk = head.clone();
        chunk.insert("choices".to_owned(), choices);
        if let Some(usage) = usage {
            chunk.insert("usage".to_owned(), usage.clone());
        }
        out.put_slice(b"data: ");
        let _ = serde_json::to_writer((&mut out).writer(), &Value::Object(chunk));
        out.put_slice(b"\n\n");
    };
    for (position, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or_else(|| json!(position));
        let finish = choice.get("finish_reason").cloned().unwrap_or(Value::Null);
        match kind {
            Kind::Chat => {
                let message = choice.get("message")?;
                let role = message.get("role").cloned().unwrap_or_else(|| json!("assistant"));
                let delta = |d: Value, finish: Value| json!([{ "index": index, "delta": d, "logprobs": null, "finish_reason": finish }]);
                event(delta(json!({ "role": role, "content": "" }), Value::Null), None);
                if let Some(content) = message.get("content").filter(|c| c.is_string()) {
                    event(delta(json!({ "content": content }), Value::Null), None);
                }
                if let Some(refusal) = message.get("refusal").filter(|c| c.is_string()) {
                    event(delta(json!({ "refusal": refusal }), Value::Null), None);
                }
                if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                    let calls: Vec<Value> = calls
                        .iter()
                        .enumerate()
                        .map(|(i, call)| {
                            let mut call = call.clone();
                            if let Value::Object(map) = &mut call {
                                map.insert("index".to_owned(), json!(i));
                            }
                            call
                        })
                        .collect();
                    event(delta(json!({ "tool_calls": calls }), Value::Null), None);
                }
                event(delta(json!({}), finish), None);
            }
            Kind::Completion => {
                let text = choice.get("text").cloned().unwrap_or_else(|| json!(""));
                let logprobs = choice.get("logprobs").cloned().unwrap_or(Value::Null);
                event(json!([{ "index": index, "text": text, "logprobs": logprobs, "finish_reason": null }]), None);
                event(json!([{ "index": index, "text": "", "logprobs": null, "finish_reason": finish }]), None);
            }
        }
    }
    if include_usage && let Some(usage) = answer.get("usage").filter(|u| u.is_object()) {
        event(json!([]), Some(usage));
    }
    out.put_slice(b"data: [DONE]\n\n");
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::StreamAssembler;

    const CHAT: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;

    #[test]
    fn a_replayed_chat_answer_assembles_back_to_itself() {
        let stream = sse(Kind::Chat, CHAT.as_bytes(), true).expect("an answer");
        let text = std::str::from_utf8(&stream).expect("utf-8");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert!(text.contains(r#""choices":[]"#) && text.contains(r#""prompt_tokens":5"#), "{text}");
        let mut assembler = StreamAssembler::new(Kind::Chat, 1 << 20);
        assembler.feed(&stream);
        let assembled = assembler.finish().expect("complete");
        let (a, b): (Value, Value) =
            (serde_json::from_slice(&assembled.body).expect("json"), serde_json::from_str(CHAT).expect("json"));
        for field in ["role", "content"] {
            assert_eq!(a["choices"][0]["message"][field], b["choices"][0]["message"][field]);
        }
        assert_eq!(a["choices"][0]["finish_reason"], b["choices"][0]["finish_reason"]);
        assert_eq!((assembled.prompt_tokens, assembled.completion_tokens), (5, 2));
        let without = sse(Kind::Chat, CHAT.as_bytes(), false).expect("an answer");
        assert!(!std::str::from_utf8(&without).expect("utf-8").contains("usage"));
    }

    #[test]
    fn completions_replay_text_and_non_answers_are_none() {
        let body = r#"{"id":"c","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"abc","finish_reason":"length","logprobs":null}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}"#;
        let stream = sse(Kind::Completion, body.as_bytes(), false).expect("an answer");
        let mut assembler = StreamAssembler::new(Kind::Completion, 1 << 20);
        assembler.feed(&stream);
        // No usage chunk was asked for: the assembly is incomplete (never stored).
        assert!(assembler.finish().is_none());
        assert!(sse(Kind::Chat, b"not json", true).is_none());
        assert!(sse(Kind::Chat, br#"{"data":[]}"#, true).is_none());
    }
}
