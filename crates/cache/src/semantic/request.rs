//! What of a chat request the semantic cache embeds, and what must match exactly.
//!
//! - The **conversation**: the user and assistant messages, in order, each as
//!   `role: text` with runs of whitespace collapsed; this is embedded.
//! - The **partition**: a SHA-256 ([`crate::key::exact_key`]) over the project, the
//!   system and developer messages (exactly, in order), and every other member of the
//!   request that the exact key uses (`model`, `tools`, `temperature`, `max_tokens`,
//!   `response_format`, …; `messages` itself left out). A hit needs the same partition:
//!   another model, system prompt, tool list or parameter never hits.
//!
//! Conversations the embedding cannot stand for are not semantically cached: a
//! message with non-text content (images, audio), tool results, assistant tool calls,
//! no user message, or more than [`MAX_CONVERSATION_BYTES`].

use serde_json::{Map, Value};

use crate::CacheKey;
use crate::key::exact_key;

/// The longest conversation embedded (embedding models take about 8,000 tokens).
pub const MAX_CONVERSATION_BYTES: usize = 24 * 1024;

/// The endpoint name the partition is hashed under (never an exact key's).
const PARTITION_ENDPOINT: &str = "chat.completions#semantic";

/// A chat request as the semantic cache sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SemanticRequest {
    pub partition: CacheKey,
    /// The normalised conversation, the embedding's input.
    pub conversation: String,
}

/// The request's partition and conversation, or `None` if it is not semantically
/// cacheable (see the module doc).
pub fn semantic_request(project: &str, request: &Value) -> Option<SemanticRequest> {
    let object = request.as_object()?;
    let messages = object.get("messages")?.as_array()?;
    let mut system = Vec::new();
    let mut conversation = String::new();
    let mut users = 0;
    for message in messages {
        let role = message.get("role")?.as_str()?;
        match role {
            "system" | "developer" => system.push(message.clone()),
            "user" | "assistant" => {
                if message.get("tool_calls").is_some_and(|t| !t.is_null())
                    || message.get("function_call").is_some_and(|t| !t.is_null())
                {
                    return None;
                }
                users += usize::from(role == "user");
                conversation.push_str(role);
                conversation.push(':');
                push_text(&mut conversation, message.get("content")?)?;
                conversation.push('\n');
                if conversation.len() > MAX_CONVERSATION_BYTES {
                    return None;
                }
            }
            _ => return None,
        }
    }
    if users == 0 {
        return None;
    }
    let mut rest: Map<String, Value> =
        object.iter().filter(|(k, _)| k.as_str() != "messages").map(|(k, v)| (k.clone(), v.clone())).collect();
    rest.insert("messages#system".to_owned(), Value::Array(system));
    let partition = exact_key(project, PARTITION_ENDPOINT, &Value::Object(rest));
    Some(SemanticRequest { partition, conversation })
}

/// Appends the text of a message's `content` (a string, or text parts), whitespace
/// collapsed; `None` for any other content.
fn push_text(out: &mut String, content: &Value) -> Option<()> {
    let mut push = |text: &str| {
        for word in text.split_whitespace() {
            out.push(' ');
            out.push_str(word);
        }
    };
    match content {
        Value::String(s) => push(s),
        Value::Array(parts) => {
            for part in parts {
                if part.get("type")?.as_str()? != "text" {
                    return None;
                }
                push(part.get("text")?.as_str()?);
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sr(project: &str, v: Value) -> Option<SemanticRequest> {
        semantic_request(project, &v)
    }

    fn chat(system: &str, user: &str) -> Value {
        json!({ "model": "m", "temperature": 0, "messages": [
            { "role": "system", "content": system }, { "role": "user", "content": user } ] })
    }

    #[test]
    fn the_conversation_is_embedded_and_the_rest_partitions() {
        let a = sr("p", chat("Be brief.", "What is  the capital\nof France?")).expect("cacheable");
        assert_eq!(a.conversation, "user: What is the capital of France?\n");
        let b = sr("p", chat("Be brief.", "Tell me the capital of France")).expect("cacheable");
        assert_eq!(a.partition, b.partition, "a paraphrase shares the partition");
        let parts = json!({ "model": "m", "temperature": 0, "messages": [
            { "role": "system", "content": "Be brief." },
            { "role": "user", "content": [{ "type": "text", "text": "What is the" }, { "type": "text", "text": "capital of France?" }] } ] });
        assert_eq!(sr("p", parts), Some(a.clone()), "text parts read as one text");
        // Streaming options do not partition (as in the exact key).
        let mut streamed = chat("Be brief.", "x");
        streamed["stream"] = json!(true);
        assert_eq!(sr("p", streamed).map(|s| s.partition), Some(a.partition));

        for (why, other) in [
            ("project", sr("q", chat("Be brief.", "x"))),
            ("system prompt", sr("p", chat("Be verbose.", "x"))),
            ("model", {
                let mut v = chat("Be brief.", "x");
                v["model"] = json!("n");
                sr("p", v)
            }),
            ("tools", {
                let mut v = chat("Be brief.", "x");
                v["tools"] = json!([{ "type": "function", "function": { "name": "f" } }]);
                sr("p", v)
            }),
            ("max_tokens", {
                let mut v = chat("Be brief.", "x");
                v["max_tokens"] = json!(5);
                sr("p", v)
            }),
        ] {
            assert_ne!(other.expect("cacheable").partition, a.partition, "{why} partitions");
        }
    }

    #[test]
    fn what_an_embedding_cannot_stand_for_is_not_cacheable() {
        for v in [
            json!({ "model": "m", "messages": [{ "role": "system", "content": "only a system prompt" }] }),
            json!({ "model": "m", "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": "x" } }] }] }),
            json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }, { "role": "assistant", "content": null, "tool_calls": [] }] }),
            json!({ "model": "m", "messages": [{ "role": "user", "content": "x" }, { "role": "tool", "content": "r", "tool_call_id": "t" }] }),
            json!({ "model": "m", "messages": [{ "role": "user", "content": "x".repeat(MAX_CONVERSATION_BYTES + 1) }] }),
            json!({ "model": "m" }),
            json!([1]),
        ] {
            assert_eq!(sr("p", v.clone()), None, "{v}");
        }
    }
}
