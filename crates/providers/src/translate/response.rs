//! A whole Messages answer turned into a `chat.completion`, and an Anthropic error
//! body into OpenAI's error shape.
//!
//! Text blocks are joined into the message's `content`; `tool_use` blocks become
//! `tool_calls` whose `arguments` are the `input` serialized as a JSON string (what an
//! OpenAI client parses). Thinking blocks and server-side tool blocks have no place
//! in a chat completion and are left out.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChatUsage, TranslateError, chat_id, error_json, error_type, finish_reason};
use crate::usage::{AnthropicUsage, TokenUsage};

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    content: Option<Vec<Value>>,
    #[serde(default)]
    stop_reason: Option<String>,
    /// Read apart: a usage block of an odd shape loses only itself (the gateway then
    /// counts the answer), not the answer.
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Serialize)]
struct ChatCompletion<'a> {
    id: String,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [Choice; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

#[derive(Serialize)]
struct Choice {
    index: u32,
    message: ChatMessage,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct ChatMessage {
    role: &'static str,
    content: Option<String>,
    refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
}

#[derive(Serialize)]
struct ToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Function,
}

#[derive(Serialize)]
struct Function {
    name: String,
    arguments: String,
}

/// Turns the Messages answer `body` into a `chat.completion` naming `model` (the
/// model the client asked for), created at `created_secs` (Unix seconds).
pub fn messages_to_chat(body: &[u8], model: &str, created_secs: i64) -> Result<Bytes, TranslateError> {
    // serde would read a struct from a JSON array too.
    if body.iter().find(|b| !b.is_ascii_whitespace()).is_some_and(|b| *b != b'{') {
        return Err(TranslateError::Shape("it is not a JSON object".to_owned()));
    }
    let message: WireMessage = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() { TranslateError::Shape(e.to_string()) } else { TranslateError::NotJson(e.to_string()) }
    })?;
    if let Some(kind) = message.kind.as_deref().filter(|k| *k != "message") {
        return Err(TranslateError::Shape(format!("its type is {kind:?}, not \"message\"")));
    }
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    for (i, block) in message.content.unwrap_or_default().iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let piece = block.get("text").and_then(Value::as_str).ok_or_else(|| {
                    TranslateError::Shape(format!("content[{i}]: a text block without a string `text`"))
                })?;
                text.push_str(piece);
                has_text = true;
            }
            Some("tool_use") => {
                let field = |name: &str| block.get(name).and_then(Value::as_str).map(str::to_owned);
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(TranslateError::Shape(format!(
                        "content[{i}]: a tool_use block without `id` or `name`"
                    )));
                };
                let input = block.get("input").cloned().unwrap_or_else(|| Value::Object(Default::default()));
                let arguments = serde_json::to_string(&input).map_err(|e| TranslateError::Shape(e.to_string()))?;
                tool_calls.push(ToolCall { id, kind: "function", function: Function { name, arguments } });
            }
            // thinking, redacted_thinking, server_tool_use, web_search_tool_result...
            _ => {}
        }
    }
    let content = if has_text || tool_calls.is_empty() { Some(text) } else { None };
    let completion = ChatCompletion {
        id: chat_id(message.id.as_deref().unwrap_or_default()),
        object: "chat.completion",
        created: created_secs,
        model,
        choices: [Choice {
            index: 0,
            message: ChatMessage { role: "assistant", content, refusal: None, tool_calls },
            logprobs: None,
            finish_reason: message.stop_reason.as_deref().map(finish_reason),
        }],
        usage: message
            .usage
            .and_then(|u| serde_json::from_value::<AnthropicUsage>(u).ok())
            .map(|u| ChatUsage::from(TokenUsage::from(u))),
    };
    serde_json::to_vec(&completion).map(Bytes::from).map_err(|e| TranslateError::Shape(e.to_string()))
}

#[derive(Deserialize)]
struct WireErrorBody {
    error: WireError,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// The message of an error body whose shape is unknown.
const GENERIC_ERROR: &str = "The upstream provider returned an error.";

/// Turns Anthropic's error body (`{"type":"error","error":{"type","message"}}`, what
/// it answers with a non-2xx status) into OpenAI's
/// `{"error":{"message","type","param":null,"code":null}}`, keeping the message.
/// Any other body gives a generic message.
pub fn messages_error_to_chat(body: &[u8]) -> Bytes {
    let (message, kind) = match serde_json::from_slice::<WireErrorBody>(body) {
        Ok(WireErrorBody { error: WireError { kind, message: Some(message) } }) if !message.is_empty() => {
            (message, error_type(kind.as_deref().unwrap_or_default()))
        }
        Ok(WireErrorBody { error: WireError { kind, .. } }) => {
            (GENERIC_ERROR.to_owned(), error_type(kind.as_deref().unwrap_or_default()))
        }
        Err(_) => (GENERIC_ERROR.to_owned(), "upstream_error"),
    };
    Bytes::from(error_json(&message, kind, None))
}
