//! OpenAI's Responses API, as the mock speaks it: `POST /v1/responses`, plain and
//! streamed (`response.created`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`s, the `.done` events,
//! and `response.completed` carrying the usage). The `x-mock-*` directives apply as on
//! the other routes: `no-usage` sends `"usage": null`, `reset`, `stall`, `malformed`
//! and `hold-usage` (which holds `response.completed`) bend the stream.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::reply::{json_reply, sse_reply};
use crate::{ApiError, Directives, Fault, Inner, REPLY_PIECES, parse_body, prelude, unix_now};

fn usage(directives: &Directives) -> Value {
    if directives.fault == Some(Fault::NoUsage) {
        return Value::Null;
    }
    json!({
        "input_tokens": directives.prompt_tokens,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": directives.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": directives.prompt_tokens.saturating_add(directives.completion_tokens),
    })
}

/// A response object in `status`, with the output text so far and its usage.
fn response(id: &str, created: u64, model: &str, status: &str, text: Option<&str>, usage: Value) -> Value {
    let output = match text {
        Some(text) => json!([{
            "type": "message", "id": format!("{id}_msg"), "status": "completed", "role": "assistant",
            "content": [{ "type": "output_text", "text": text, "annotations": [] }],
        }]),
        None => json!([]),
    };
    json!({
        "id": id, "object": "response", "created_at": created, "status": status, "model": model,
        "output": output, "usage": usage, "error": null, "incomplete_details": null, "instructions": null,
        "metadata": {}, "parallel_tool_calls": true, "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto",
        "tools": [], "text": { "format": { "type": "text" } }, "truncation": "disabled",
    })
}

fn event(sequence: &mut u64, name: &str, mut data: Value) -> Bytes {
    data["type"] = Value::String(name.to_owned());
    data["sequence_number"] = json!(*sequence);
    *sequence += 1;
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

pub(crate) async fn responses(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let directives = prelude(&inner, &headers).await?;
    let (body, model) = parse_body(&body)?;
    let model = directives.model.clone().unwrap_or(model);
    match body.get("input") {
        Some(Value::String(_) | Value::Array(_)) => {}
        _ => return Err(crate::bad_request("'input' must be a string or an array of items.", Some("input"))),
    }
    let id = format!("resp_mock_{}", inner.next_id());
    let created = unix_now();
    let text = REPLY_PIECES.concat();
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let reply = response(&id, created, &model, "completed", Some(&text), usage(&directives));
        return Ok(json_reply(reply, directives.fault));
    }
    let item_id = format!("{id}_msg");
    let mut n = 0u64;
    let mut events = vec![
        event(
            &mut n,
            "response.created",
            json!({ "response": response(&id, created, &model, "in_progress", None, Value::Null) }),
        ),
        event(
            &mut n,
            "response.output_item.added",
            json!({ "output_index": 0, "item": {
                "type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": [] } }),
        ),
        event(
            &mut n,
            "response.content_part.added",
            json!({ "item_id": item_id, "output_index": 0, "content_index": 0,
                "part": { "type": "output_text", "text": "", "annotations": [] } }),
        ),
    ];
    if directives.fault == Some(Fault::Malformed) {
        events.push(Bytes::from_static(b"event: response.output_text.delta\ndata: {\"type\": \"response.output\n\n"));
    } else {
        let count = directives.chunks.unwrap_or(REPLY_PIECES.len());
        for piece in REPLY_PIECES.iter().cycle().take(count) {
            let delta = json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "delta": piece });
            events.push(event(&mut n, "response.output_text.delta", delta));
        }
    }
    let done = json!({ "item_id": item_id, "output_index": 0, "content_index": 0, "text": text });
    events.push(event(&mut n, "response.output_text.done", done));
    let completed = response(&id, created, &model, "completed", Some(&text), usage(&directives));
    events.push(event(&mut n, "response.completed", json!({ "response": completed })));
    Ok(sse_reply(events, directives.fault, &inner.usage_gate))
}
