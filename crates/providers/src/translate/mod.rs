//! Translation between OpenAI's chat completions and Anthropic's Messages, so that a
//! client speaking `POST /v1/chat/completions` can be routed to a Claude model.
//!
//! Three pure pieces, no I/O and no gateway knowledge (the proxy pipeline calls them):
//! - [`chat_to_messages`] (`translate/request.rs`): the client's chat request becomes a
//!   Messages request for the target's model. What cannot be said in Messages is
//!   refused as a [`RequestError`] naming the field (`n` > 1, unknown roles, arguments
//!   that are not JSON), never passed on for the upstream to refuse later, and never a
//!   panic; what has no equivalent and changes nothing essential is dropped.
//! - [`messages_to_chat`] and [`messages_error_to_chat`] (`translate/response.rs`): a
//!   whole Messages answer (or Anthropic error body) becomes a `chat.completion` (or
//!   OpenAI's error shape). This is the one place where an answer must be whole before
//!   the client gets anything: a JSON object cannot be rewritten piecemeal, so the
//!   caller collects the plain answer (bounded, as for the cache) first.
//! - [`MessagesToChatStream`] (`translate/stream.rs`): Anthropic's SSE events become
//!   `chat.completion.chunk`s, fed with raw network bytes cut anywhere.
//!
//! Usage is mapped once, the way the ledger counts it ([`crate::usage::AnthropicUsage`]
//! into [`TokenUsage`]): `prompt_tokens` are all input tokens, cache reads and writes
//! included, and the cache reads are `prompt_tokens_details.cached_tokens`. A plain
//! Messages answer's usage is read by [`crate::usage::checked_answer_for`] with
//! `Endpoint::Messages`; the translated answer carries the same figures in OpenAI's
//! shape, so either can be accounted.

use serde::Serialize;

use crate::usage::TokenUsage;

mod request;
mod response;
mod stream;

pub use crate::request::RequestError;
pub use request::chat_to_messages;
pub use response::{messages_error_to_chat, messages_to_chat};
pub use stream::{MAX_PENDING_EVENT, MessagesToChatStream};

/// A Messages answer that cannot be turned into a chat completion: the upstream
/// answered something other than a Messages object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// The body is not JSON (cut short, or not JSON at all).
    #[error("the upstream's answer is not valid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not a Messages object (`type` other than `message`, `content`
    /// not an array of blocks, ...).
    #[error("the upstream's answer is not a Messages object: {0}")]
    Shape(String),
}

/// The `id` of the chat completion for Messages id `message_id`.
fn chat_id(message_id: &str) -> String {
    format!("chatcmpl-{message_id}")
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`. `pause_turn` (a server
/// tool's long turn paused) and reasons this code does not know end the turn as
/// `stop`; `model_context_window_exceeded` is a length limit.
fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's error `type` for Anthropic's error `type`. The SDKs choose their
/// exception by the HTTP status, so this only has to read sensibly.
fn error_type(anthropic_type: &str) -> &'static str {
    match anthropic_type {
        "invalid_request_error" | "not_found_error" | "request_too_large" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "rate_limit_error" => "rate_limit_error",
        "api_error" | "overloaded_error" | "timeout_error" => "server_error",
        _ => "upstream_error",
    }
}

/// `usage` in OpenAI's shape.
#[derive(Clone, Copy, Debug, Serialize)]
struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
}

#[derive(Clone, Copy, Debug, Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

impl From<TokenUsage> for ChatUsage {
    fn from(u: TokenUsage) -> Self {
        ChatUsage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: CachedTokens { cached_tokens: u.cached_tokens },
        }
    }
}

/// OpenAI's error object: `{"message", "type", "param": null, "code"}`.
#[derive(Debug, Serialize)]
struct ChatError<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ChatErrorBody<'a> {
    error: ChatError<'a>,
}

/// `{"error": {...}}` serialized; the fields are plain strings, so this cannot fail,
/// but a failure would still give a valid (generic) body.
fn error_json(message: &str, kind: &str, code: Option<&str>) -> Vec<u8> {
    let body = ChatErrorBody { error: ChatError { message, kind, param: None, code } };
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"error":{"message":"The upstream provider returned an error.","type":"upstream_error","param":null,"code":null}}"#.to_vec()
    })
}

#[cfg(test)]
mod tests;
