//! Anthropic's Messages stream events, read for accounting: the input tokens of
//! `message_start`, the cumulative output tokens of each `message_delta` (the last one
//! is final), the text of `content_block_start` / `content_block_delta` (counted when
//! no usage came), the model, `message_stop` (the clean end) and `error` events.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{StreamSummary, Text};
use crate::usage::AnthropicUsage;

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default, borrow, rename = "type")]
    kind: Text<'a>,
    #[serde(default, borrow)]
    message: Option<Message<'a>>,
    /// Raw, and read apart: a usage block of an odd shape loses only itself.
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    delta: Option<Block<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    model: Text<'a>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
}

/// A content block or its delta: text, tool input JSON, thinking, a tool's name.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, borrow)]
    text: Text<'a>,
    #[serde(default, borrow)]
    partial_json: Text<'a>,
    #[serde(default, borrow)]
    thinking: Text<'a>,
    #[serde(default, borrow)]
    name: Text<'a>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default, borrow)]
    message: Text<'a>,
}

fn usage_of(raw: Option<&RawValue>) -> Option<AnthropicUsage> {
    raw.and_then(|raw| serde_json::from_str::<Option<AnthropicUsage>>(raw.get()).ok().flatten())
}

/// Reads one event's data into `summary`; `usage` carries the stream's usage so far.
/// The summary's usage is set by `message_delta` only: a stream cut before it has
/// no final output count, and is counted instead.
pub(super) fn on_event(data: &[u8], usage: &mut Option<Box<AnthropicUsage>>, summary: &mut StreamSummary) {
    let Ok(event) = serde_json::from_slice::<Event<'_>>(data) else { return };
    let mut push = |block: &Block<'_>| {
        for text in [&block.text, &block.partial_json, &block.thinking, &block.name] {
            if let Some(t) = &text.0 {
                summary.completion_text.push_str(t);
            }
        }
    };
    match event.kind.0.as_deref() {
        Some("message_start") => {
            if let Some(message) = &event.message {
                if summary.model.is_none()
                    && let Some(model) = message.model.0.as_deref().filter(|m| !m.is_empty() && m.len() <= 256)
                {
                    summary.model = Some(model.to_owned());
                }
                if let Some(started) = usage_of(message.usage) {
                    *usage = Some(Box::new(started));
                }
            }
        }
        Some("content_block_start") => {
            if let Some(block) = &event.content_block {
                push(block);
            }
        }
        Some("content_block_delta") => {
            if let Some(delta) = &event.delta {
                push(delta);
            }
        }
        Some("message_delta") => {
            if let Some(delta) = usage_of(event.usage) {
                let merged = usage.as_deref().copied().unwrap_or_default().merged(delta);
                *usage = Some(Box::new(merged));
                summary.usage = Some(merged.into());
            }
        }
        Some("message_stop") => summary.saw_done = true,
        Some("error") if summary.error.is_none() => {
            let message = event.error.and_then(|raw| {
                serde_json::from_str::<WireError<'_>>(raw.get()).ok().and_then(|e| e.message.0.map(Cow::into_owned))
            });
            summary.error = Some(message.unwrap_or_else(|| "error event".to_owned()));
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
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",",
        "\"model\":\"claude-sonnet-4-5\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1,",
        "\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":0}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn usage_comes_from_message_start_and_the_last_message_delta_across_any_cut() {
        for cut in [1, 7, 40, 300] {
            let mut rewriter = SseRewriter::with_dialect(Dialect::Anthropic, true);
            let mut out = Vec::new();
            for piece in STREAM.as_bytes().chunks(cut) {
                out.extend_from_slice(&rewriter.process(Bytes::copy_from_slice(piece)));
            }
            out.extend_from_slice(&rewriter.flush());
            assert_eq!(out, STREAM.as_bytes(), "nothing is cut out of an Anthropic stream");
            let summary = rewriter.finish();
            assert_eq!(
                summary.usage,
                Some(TokenUsage { prompt_tokens: 30, completion_tokens: 15, total_tokens: 45, cached_tokens: 5 })
            );
            assert_eq!(summary.completion_text, "Hello");
            assert_eq!(summary.model.as_deref(), Some("claude-sonnet-4-5"));
            assert!(summary.saw_done);
        }
    }

    #[test]
    fn a_stream_cut_before_message_delta_has_no_final_usage_and_the_clean_end_is_found() {
        let cut = STREAM.find("event: message_delta").expect("delta");
        let mut rewriter = SseRewriter::with_dialect(Dialect::Anthropic, false);
        let _ = rewriter.process(Bytes::copy_from_slice(&STREAM.as_bytes()[..cut]));
        assert!(!rewriter.has_usage());
        assert_eq!(rewriter.finish().usage, None);
        let whole = Bytes::from_static(STREAM.as_bytes());
        let (before, end) = Dialect::Anthropic.split_clean_end(&whole).expect("message_stop");
        assert!(end.starts_with(b"event: message_stop"));
        assert_eq!(before.len() + end.len(), whole.len());
        let error = Dialect::Anthropic.error_event("upstream_error", "upstream_stream_broken", "broke");
        assert!(error.starts_with(b"event: error\ndata: {"));
    }
}
