//! Anthropic's Messages API, as the mock speaks it: `POST /v1/messages`, plain and
//! streamed (`message_start`, `content_block_start`, `ping`, `content_block_delta`s,
//! `content_block_stop`, `message_delta` with the cumulative output tokens,
//! `message_stop`), the key checked as `x-api-key`, `anthropic-version` required, and
//! errors in Anthropic's shape (`{"type":"error","error":{"type","message"}}`); and
//! `POST /v1/messages/count_tokens` (`{"input_tokens": P}`). The
//! `x-mock-*` directives apply as on the OpenAI routes: `no-usage` leaves the usage
//! out, `reset` cuts the stream after two events, `stall` after one, `malformed` sends
//! an event whose data is not JSON, `hold-usage` holds `message_delta` and
//! `message_stop` until released.
//!
//! A request that defines `tools` and whose last user message says
//! [`TOOL_TRIGGER`](crate::TOOL_TRIGGER) ("call a tool") is answered with a call of its
//! first tool instead of text: one `tool_use` block with the input `{"city":"Paris"}`
//! and `stop_reason: "tool_use"`; streamed, its input comes in two `input_json_delta`
//! events that split the JSON. The usage is the same as for a text answer, so tests
//! can drive tool calls through the gateway and still know what is charged.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::reply::{json_reply, sse_reply};
use crate::{
    ApiError, Directives, Fault, Inner, REPLY_PIECES, RETRY_AFTER_SECS, TOOL_TRIGGER, injected_error, parse_body,
};

/// A tool call's input as streamed: two pieces of `{"city": "Paris"}`.
const TOOL_INPUT_PIECES: [&str; 2] = ["{\"city\":", " \"Paris\"}"];

/// The first tool's name, when the request asks for a tool call: it defines `tools`
/// and its last user message has [`TOOL_TRIGGER`] in its text.
fn tool_to_call(body: &Map<String, Value>) -> Option<&str> {
    let name = body.get("tools")?.as_array()?.first()?.get("name")?.as_str()?;
    let messages = body.get("messages")?.as_array()?;
    let last_user = messages.iter().rev().find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let asks = match last_user.get("content")? {
        Value::String(text) => text.contains(TOOL_TRIGGER),
        Value::Array(blocks) => blocks.iter().any(|block| {
            block.get("type").and_then(Value::as_str) == Some("text")
                && block.get("text").and_then(Value::as_str).is_some_and(|t| t.contains(TOOL_TRIGGER))
        }),
        _ => false,
    };
    asks.then_some(name)
}

/// Anthropic's error shape for the mock's own errors.
fn anthropic_error(e: ApiError) -> Response {
    let kind = match e.status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = json!({ "type": "error", "error": { "type": kind, "message": e.message } });
    let mut response = (e.status, Json(body)).into_response();
    if e.status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
    }
    response.headers_mut().insert("request-id", HeaderValue::from_static("req_mock_anthropic"));
    response
}

fn unauthorized(message: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
        kind: "authentication_error",
        code: None,
        param: None,
    }
}

/// Directives, latency, `x-api-key`, `anthropic-version`, then an injected status.
async fn prelude(inner: &Inner, headers: &HeaderMap) -> Result<Directives, ApiError> {
    let directives = Directives::parse(headers, &inner.config)?;
    if !directives.latency.is_zero() {
        tokio::time::sleep(directives.latency).await;
    }
    if let Some(expected) = inner.config.expected_api_key.as_deref() {
        match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
            Some(key) if key == expected => {}
            Some(_) => return Err(unauthorized("invalid x-api-key")),
            None => return Err(unauthorized("x-api-key header is required")),
        }
    }
    if headers.get("anthropic-version").is_none() {
        return Err(crate::bad_request("anthropic-version: header is required", None));
    }
    if let Some(status) = directives.status {
        return Err(injected_error(status));
    }
    Ok(directives)
}

fn usage(directives: &Directives, output_tokens: u64) -> Value {
    json!({
        "input_tokens": directives.prompt_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    })
}

fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// `POST /v1/messages/count_tokens`: the prompt tokens the directives say.
pub(crate) async fn count_tokens(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let counted = async {
        let directives = prelude(&inner, &headers).await?;
        parse_body(&body)?;
        let mut reply = json!({ "input_tokens": directives.prompt_tokens });
        if headers.contains_key(crate::HEADER_ECHO) {
            reply["mock_key_sha256"] = crate::key_digest(&headers);
        }
        Ok::<_, ApiError>(Json(reply).into_response())
    };
    counted.await.unwrap_or_else(anthropic_error)
}

pub(crate) async fn messages(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    match answer(&inner, &headers, &body).await {
        Ok(response) => response,
        Err(e) => anthropic_error(e),
    }
}

async fn answer(inner: &Inner, headers: &HeaderMap, body: &Bytes) -> Result<Response, ApiError> {
    let directives = prelude(inner, headers).await?;
    let (body, model) = parse_body(body)?;
    let model = directives.model.clone().unwrap_or(model);
    if !body.get("messages").is_some_and(Value::is_array) {
        return Err(crate::bad_request("messages: Field required", Some("messages")));
    }
    if !body.get("max_tokens").is_some_and(Value::is_u64) {
        return Err(crate::bad_request("max_tokens: Field required", Some("max_tokens")));
    }
    let n = inner.next_id();
    let id = format!("msg_mock_{n}");
    let tool_id = format!("toolu_mock_{n}");
    let tool = tool_to_call(&body);
    let stop_reason = if tool.is_some() { "tool_use" } else { "end_turn" };
    let no_usage = directives.fault == Some(Fault::NoUsage);
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let content = match tool {
            Some(name) => json!([{ "type": "tool_use", "id": tool_id, "name": name, "input": { "city": "Paris" } }]),
            None => json!([{ "type": "text", "text": REPLY_PIECES.concat() }]),
        };
        let mut reply = json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": usage(&directives, directives.completion_tokens),
        });
        if no_usage && let Some(object) = reply.as_object_mut() {
            object.remove("usage");
        }
        if headers.contains_key(crate::HEADER_ECHO) {
            reply["mock_key_sha256"] = crate::key_digest(headers);
        }
        return Ok(json_reply(reply, directives.fault));
    }
    let mut started = json!({
        "type": "message_start",
        "message": {
            "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(&directives, 1),
        },
    });
    if no_usage {
        started["message"]["usage"] = Value::Null;
    }
    let block = match tool {
        Some(name) => json!({ "type": "tool_use", "id": tool_id, "name": name, "input": {} }),
        None => json!({ "type": "text", "text": "" }),
    };
    let mut events = vec![
        event("message_start", &started),
        event("content_block_start", &json!({ "type": "content_block_start", "index": 0, "content_block": block })),
        event("ping", &json!({ "type": "ping" })),
    ];
    if directives.fault == Some(Fault::Malformed) {
        events.push(Bytes::from_static(
            b"event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"delta\n\n",
        ));
    } else if tool.is_some() {
        events.extend(TOOL_INPUT_PIECES.iter().map(|piece| {
            let delta = json!({
                "type": "content_block_delta", "index": 0,
                "delta": { "type": "input_json_delta", "partial_json": piece },
            });
            event("content_block_delta", &delta)
        }));
    } else {
        let count = directives.chunks.unwrap_or(REPLY_PIECES.len());
        events.extend(REPLY_PIECES.iter().cycle().take(count).map(|piece| {
            let delta = json!({
                "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": piece },
            });
            event("content_block_delta", &delta)
        }));
    }
    events.push(event("content_block_stop", &json!({ "type": "content_block_stop", "index": 0 })));
    let mut delta = json!({
        "type": "message_delta",
        "delta": { "stop_reason": stop_reason, "stop_sequence": null },
        "usage": { "output_tokens": directives.completion_tokens },
    });
    if no_usage && let Some(object) = delta.as_object_mut() {
        object.remove("usage");
    }
    events.push(event("message_delta", &delta));
    events.push(event("message_stop", &json!({ "type": "message_stop" })));
    Ok(sse_reply(events, directives.fault, &inner.usage_gate))
}
