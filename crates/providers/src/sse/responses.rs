//! OpenAI's Responses stream events, read for accounting: the usage of
//! `response.completed` (or `response.incomplete` / `response.failed`), the text of
//! every `*.delta` event (counted when no usage came), the model, and `error` events.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{StreamSummary, Text};
use crate::usage::{ResponsesUsage, TokenUsage};

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default, borrow)]
    delta: Text<'a>,
    #[serde(default, borrow)]
    response: Option<Response<'a>>,
    #[serde(default, borrow)]
    message: Text<'a>,
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default, borrow)]
    message: Text<'a>,
}

/// Reads one event's data into `summary`.
pub(super) fn on_event(data: &[u8], summary: &mut StreamSummary) {
    let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else { return };
    let Some(kind) = event.kind.0.as_deref() else { return };
    if let Some(response) = &event.response
        && summary.model.is_none()
        && let Some(model) = response.model.0.as_deref().filter(|m| !m.is_empty() && m.len() <= 256)
    {
        summary.model = Some(model.to_owned());
    }
    match kind {
        "response.completed" | "response.incomplete" | "response.failed" => {
            let response = event.response.as_ref();
            let usage = response.and_then(|r| r.usage).and_then(|raw| {
                serde_json::from_str::<Option<ResponsesUsage>>(raw.get()).ok().flatten().map(TokenUsage::from)
            });
            if usage.is_some() {
                summary.usage = usage;
            }
            if kind == "response.failed" {
                let message = response.and_then(|r| r.error).and_then(|raw| {
                    serde_json::from_str::<WireError<'_>>(raw.get()).ok().and_then(|e| e.message.0.map(Cow::into_owned))
                });
                summary.error.get_or_insert_with(|| message.unwrap_or_else(|| "response.failed".to_owned()));
            } else {
                summary.saw_done = true;
            }
        }
        "error" => {
            let message = event.message.0.map(Cow::into_owned).unwrap_or_else(|| "error event".to_owned());
            summary.error.get_or_insert(message);
        }
        // Text, refusals, tool-call arguments and reasoning stream as `*.delta`;
        // audio deltas are base64, not text.
        kind if kind.ends_with(".delta") && !kind.contains("audio") => {
            if let Some(text) = &event.delta.0 {
                summary.completion_text.push_str(text);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::{Dialect, SseRewriter};
    use crate::usage::TokenUsage;

    const STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4o-mini\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi there\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4o-mini\",",
        "\"usage\":{\"input_tokens\":11,\"output_tokens\":4,\"total_tokens\":15,\"input_tokens_details\":{\"cached_tokens\":3}}}}\n\n",
    );

    #[test]
    fn usage_comes_from_response_completed_across_any_cut() {
        for cut in [1, 9, 64, 1000] {
            let mut rewriter = SseRewriter::with_dialect(Dialect::Responses, true);
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(cut) {
                out.extend_from_slice(&rewriter.process(Bytes::copy_from_slice(piece)));
            }
            out.extend_from_slice(&rewriter.flush());
            assert_eq!(out, STREAM.as_bytes());
            let summary = rewriter.finish();
            assert_eq!(
                summary.usage,
                Some(TokenUsage { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15, cached_tokens: 3 })
            );
            assert_eq!(summary.completion_text, "Hi there");
            assert_eq!(summary.model.as_deref(), Some("gpt-4o-mini"));
            assert!(summary.saw_done);
        }
        let whole = Bytes::from_static(STREAM.as_bytes());
        let (_, end) = Dialect::Responses.split_clean_end(&whole).expect("response.completed");
        assert!(end.starts_with(b"event: response.completed"));
    }
}
