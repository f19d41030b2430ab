//! How the mock's answers go on the wire: whole JSON bodies and SSE streams, each
//! bent by the fault a request asked for (cut short, reset, stalled, malformed).

use std::io;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};

use crate::{Directives, Fault, REPLY_PIECES, RESET_DELAY};

/// A complete JSON answer, bent by the requested fault.
pub(crate) fn json_reply(mut value: Value, fault: Option<Fault>) -> Response {
    // Half of the real answer: enough for a client to start parsing.
    let partial = |value: &Value| {
        let text = value.to_string();
        let half = text.len() / 2;
        Bytes::from(text).slice(..half)
    };
    match fault {
        None | Some(Fault::HoldUsage) => Json(value).into_response(),
        Some(Fault::NoUsage) => {
            if let Some(object) = value.as_object_mut() {
                object.remove("usage");
            }
            Json(value).into_response()
        }
        Some(Fault::Malformed) => {
            // Claims JSON but is cut off mid-object, like a broken upstream.
            let body = r#"{"id": "mock-malformed", "object": "chat.completion", "choices": [{"#;
            ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
        }
        Some(Fault::Reset) => {
            let head = partial(&value);
            let body = stream::iter([Ok(head)]).chain(reset_after_delay()).boxed();
            json_stream_response(body)
        }
        Some(Fault::Stall) => {
            let head = partial(&value);
            let body = stream::iter([Ok(head)]).chain(stream::pending()).boxed();
            json_stream_response(body)
        }
        Some(Fault::Cut) => json_stream_response(reset_after_delay().boxed()),
    }
}

fn json_stream_response(body: BoxStream<'static, Result<Bytes, io::Error>>) -> Response {
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn reset_after_delay() -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send {
    stream::once(async {
        tokio::time::sleep(RESET_DELAY).await;
        Err(io::Error::new(io::ErrorKind::ConnectionReset, "mock upstream: injected connection reset"))
    })
}

/// What is common to every chunk of one streamed answer.
pub(crate) struct StreamSpec {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) object: &'static str,
    pub(crate) include_usage: bool,
}

/// A chat choice: `delta` carries the text, or the role in the first chunk.
pub(crate) fn chat_choice(piece: ChunkPiece<'_>) -> Value {
    let (delta, finish) = match piece {
        ChunkPiece::Start => (json!({ "role": "assistant", "content": "" }), None),
        ChunkPiece::Text(text) => (json!({ "content": text }), None),
        ChunkPiece::Finish => (json!({}), Some("stop")),
    };
    json!({ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish })
}

/// A legacy completions choice: plain `text`.
pub(crate) fn text_choice(piece: ChunkPiece<'_>) -> Value {
    let (text, finish) = match piece {
        ChunkPiece::Start => ("", None),
        ChunkPiece::Text(text) => (text, None),
        ChunkPiece::Finish => ("", Some("stop")),
    };
    json!({ "index": 0, "text": text, "logprobs": null, "finish_reason": finish })
}

#[derive(Clone, Copy)]
pub(crate) enum ChunkPiece<'a> {
    Start,
    Text(&'a str),
    Finish,
}

impl StreamSpec {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_mock",
            "choices": choices,
        });
        // OpenAI sends `"usage": null` on every chunk once usage was requested.
        if self.include_usage
            && let Some(object) = chunk.as_object_mut()
        {
            object.insert("usage".to_owned(), usage.unwrap_or(Value::Null));
        }
        chunk
    }

    /// All SSE events of a complete stream, `[DONE]` included.
    pub(crate) fn events(&self, directives: &Directives, choice: fn(ChunkPiece<'_>) -> Value) -> Vec<Bytes> {
        let mut events = vec![sse_event(&self.chunk(json!([choice(ChunkPiece::Start)]), None))];
        if directives.fault == Some(Fault::Malformed) {
            events.push(Bytes::from_static(b"data: {\"id\": \"mock-malformed\", \"choices\": [{\"delta\n\n"));
        } else {
            let count = directives.chunks.unwrap_or(REPLY_PIECES.len());
            events.extend(
                REPLY_PIECES
                    .iter()
                    .cycle()
                    .take(count)
                    .map(|p| sse_event(&self.chunk(json!([choice(ChunkPiece::Text(p))]), None))),
            );
        }
        events.push(sse_event(&self.chunk(json!([choice(ChunkPiece::Finish)]), None)));
        if self.include_usage && directives.fault != Some(Fault::NoUsage) {
            events.push(sse_event(&self.chunk(json!([]), Some(directives.usage()))));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

fn sse_event(chunk: &Value) -> Bytes {
    Bytes::from(format!("data: {chunk}\n\n"))
}

/// An SSE answer made of `events`, cut short as the fault demands.
pub(crate) fn sse_reply(
    mut events: Vec<Bytes>,
    fault: Option<Fault>,
    usage_gate: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Response {
    let body: BoxStream<'static, Result<Bytes, io::Error>> = match fault {
        Some(Fault::HoldUsage) => {
            // The usage chunk (`"choices":[]`, Anthropic's `message_delta`, the Responses
            // API's `response.completed`) and what follows wait for a release.
            let held_from = events
                .iter()
                .position(|e| {
                    e.windows(12).any(|w| w == br#""choices":[]"#)
                        || e.starts_with(b"event: message_delta")
                        || e.starts_with(b"event: response.completed")
                })
                .unwrap_or(events.len().saturating_sub(1));
            let held = events.split_off(held_from);
            let gate = usage_gate.clone();
            let release = stream::once(async move {
                if let Ok(permit) = gate.acquire().await {
                    permit.forget();
                }
                stream::iter(held.into_iter().map(Ok))
            })
            .flatten();
            stream::iter(events.into_iter().map(Ok)).chain(release).boxed()
        }
        Some(Fault::Reset) => stream::iter(events.into_iter().take(2).map(Ok)).chain(reset_after_delay()).boxed(),
        Some(Fault::Stall) => stream::iter(events.into_iter().take(1).map(Ok)).chain(stream::pending()).boxed(),
        Some(Fault::Cut) => reset_after_delay().boxed(),
        _ => stream::iter(events.into_iter().map(Ok)).boxed(),
    };
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
