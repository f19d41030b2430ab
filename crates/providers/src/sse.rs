//! Watching an OpenAI streaming response (Server-Sent Events) as it passes through:
//! the final usage, the delivered completion text, and, when tollgate asked for the
//! usage chunk on the client's behalf, removing that chunk from what the client sees.
//!
//! The proxy feeds every upstream chunk to [`SseRewriter::process`] and forwards what
//! it returns. Chunks are cut wherever the network cut them, so events (and lines,
//! and `\r\n` pairs) may be split across chunks; the scanner keeps only the
//! unfinished line and the current event's `data` between chunks.
//!
//! What the client gets:
//! - Without stripping, the input chunk itself, always (zero-copy).
//! - With stripping, also the input chunk itself in the common case. A usage-only
//!   event (`"usage": {…}` with `"choices": []`) is cut out of the bytes, and only an
//!   *unfinished* event that might still turn out to be that chunk is held back until
//!   its end arrives. An SSE client cannot act on half an event, so holding it back
//!   delays nothing the client could use; complete events are never delayed. An
//!   unfinished event is released early as soon as its bytes show a non-empty
//!   `choices` array.
//!
//! Each event's JSON is read with small borrowing serde structs that skip every
//! field but `choices[].delta`/`text`, `usage` and `error`: no JSON tree per chunk.
//!
//! Anthropic's Messages streams and OpenAI's Responses streams are read the same way
//! by their own event parsers ([`Dialect`], `sse/anthropic.rs`, `sse/responses.rs`):
//! they always carry their usage (`message_start` and `message_delta`;
//! `response.completed`), so nothing is ever cut out of them.
//!
//! Also here: [`request_with_include_usage`], which sets
//! `stream_options.include_usage` on a streaming request when the client did not.

use std::borrow::Cow;
use std::fmt;

use bytes::{Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Endpoint;
use crate::usage::{AnthropicUsage, TokenUsage};

mod anthropic;
mod responses;

/// The wire format of a stream's events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions and completions chunks, ending with `data: [DONE]`.
    #[default]
    OpenAi,
    /// Anthropic's Messages events, ending with `message_stop`.
    Anthropic,
    /// OpenAI's Responses events, ending with `response.completed`.
    Responses,
}

impl Dialect {
    pub fn of(endpoint: Endpoint) -> Self {
        match endpoint {
            Endpoint::Messages => Dialect::Anthropic,
            Endpoint::Responses => Dialect::Responses,
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => Dialect::OpenAi,
        }
    }

    /// The event tollgate ends a stream with when it has to cut it (the upstream broke
    /// off, the deadline passed, the usage record failed), in this format, so the
    /// client's SDK raises an error instead of taking a truncated answer for whole.
    /// `kind` is the OpenAI error type (`upstream_error`, `api_error`), `code` the
    /// stable code of docs/errors.md.
    pub fn error_event(self, kind: &str, code: &str, message: &str) -> Bytes {
        let error = serde_json::json!({ "message": message, "type": kind, "code": code });
        let text = match self {
            Dialect::OpenAi => format!("data: {}\n\n", serde_json::json!({ "error": error })),
            Dialect::Anthropic => {
                // Anthropic's SDKs raise on an `error` event; `api_error` is its type
                // for a failure on the server side.
                let event = serde_json::json!({
                    "type": "error",
                    "error": { "type": "api_error", "message": message, "code": code },
                });
                format!("event: error\ndata: {event}\n\n")
            }
            Dialect::Responses => {
                // The Responses API's `error` event, with OpenAI's error object too:
                // the openai SDK raises `APIError` on an event that has one.
                let event = serde_json::json!({
                    "type": "error", "code": code, "message": message, "param": null, "error": error,
                });
                format!("event: error\ndata: {event}\n\n")
            }
        };
        Bytes::from(text)
    }

    /// Splits the stream's clean last event (`data: [DONE]`, `message_stop`,
    /// `response.completed`) and what follows it off `out`, if `out` has it: the
    /// gateway sends it only once the request's record is committed.
    pub fn split_clean_end(self, out: &Bytes) -> Option<(Bytes, Bytes)> {
        let marker: &[u8] = match self {
            Dialect::OpenAi => return split_done(out),
            Dialect::Anthropic => b"event: message_stop",
            Dialect::Responses => b"event: response.completed",
        };
        let start = memchr::memmem::rfind(out, marker)?;
        // The marker must begin its line.
        if start > 0 && !matches!(out[start - 1], b'\n' | b'\r') {
            return None;
        }
        Some((out.slice(..start), out.slice(start..)))
    }
}

/// Splits a trailing `data: [DONE]` event (an OpenAI stream's clean end) off `out`.
fn split_done(out: &Bytes) -> Option<(Bytes, Bytes)> {
    let trimmed = out.len() - out.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
    let body = &out[..trimmed];
    let start = [&b"data: [DONE]"[..], &b"data:[DONE]"[..]]
        .iter()
        .find(|marker| body.ends_with(marker))
        .map(|marker| trimmed - marker.len())?;
    // The marker must begin its line.
    if start > 0 && out[start - 1] != b'\n' {
        return None;
    }
    Some((out.slice(..start), out.slice(start..)))
}

/// An event longer than this cannot be the usage chunk (a few hundred bytes), so it
/// is never held back past this size.
const MAX_HELD_EVENT: u64 = 64 * 1024;
/// An event's `data` beyond this is not kept (nor parsed): it bounds memory against
/// a broken upstream that never ends a line.
const MAX_EVENT_DATA: usize = 16 * 1024 * 1024;

/// What a stream delivered, for accounting.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// The last non-null `usage` the upstream sent.
    pub usage: Option<TokenUsage>,
    /// The completion text of every dispatched event: `choices[].delta.content`,
    /// `.refusal`, `.reasoning_content`, tool calls' names and argument deltas, and
    /// `choices[].text` (completions), in arrival order. Count it when no usage came.
    pub completion_text: String,
    /// The stream ended with `data: [DONE]`.
    pub saw_done: bool,
    /// The message of an `{"error": …}` event, if the upstream sent one mid-stream.
    pub error: Option<String>,
    /// Usage-only events removed from what the client saw.
    pub stripped_events: u32,
    /// The model the chunks name (the first non-empty `model`): what the answer is
    /// priced by.
    pub model: Option<String>,
}

/// The incremental scanner and (optionally) usage-chunk remover for one stream.
pub struct SseRewriter {
    dialect: Dialect,
    /// An Anthropic stream's usage so far (`message_start`, then each `message_delta`);
    /// boxed to keep the scanner of OpenAI streams as small as it was.
    anthropic_usage: Option<Box<AnthropicUsage>>,
    strip_usage_chunk: bool,
    /// Bytes of the stream before the current chunk.
    offset: u64,
    /// Where the current (unfinished) event began, as a stream offset.
    event_start: u64,
    /// The current event was shown not to be a usage-only chunk: never hold it.
    event_cleared: bool,
    /// Stream bytes `[offset - held_len, offset)` not yet given to the client.
    held: Vec<Bytes>,
    /// The unfinished last line of the previous chunks, without its terminator.
    line: Vec<u8>,
    /// The last line ended in a `\r` that was the last byte of a chunk: a `\n` at the
    /// start of the next one is the rest of that line's terminator.
    after_cr: bool,
    /// ... and that line ended an event that was cut out, so the `\n` goes too.
    after_cr_in_cut: bool,
    /// The current event's `data` lines, joined by `\n`.
    data: Vec<u8>,
    data_lines: u32,
    data_overflowed: bool,
    summary: StreamSummary,
}

impl SseRewriter {
    /// `strip_usage_chunk`: remove usage-only events from the bytes returned (set it
    /// when tollgate added `include_usage` and the client did not ask for it).
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self::with_dialect(Dialect::OpenAi, strip_usage_chunk)
    }

    /// A scanner for a stream in `dialect`; only an OpenAI stream has a usage chunk
    /// to strip.
    pub fn with_dialect(dialect: Dialect, strip_usage_chunk: bool) -> Self {
        Self {
            dialect,
            anthropic_usage: None,
            strip_usage_chunk: strip_usage_chunk && dialect == Dialect::OpenAi,
            offset: 0,
            event_start: 0,
            event_cleared: false,
            held: Vec::new(),
            line: Vec::new(),
            after_cr: false,
            after_cr_in_cut: false,
            data: Vec::new(),
            data_lines: 0,
            data_overflowed: false,
            summary: StreamSummary::default(),
        }
    }

    /// Scans one upstream chunk and returns the bytes to forward now (possibly empty).
    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        if chunk.is_empty() {
            // Nothing to scan, and a pending `\r` must wait for a byte to pair with.
            return chunk;
        }
        let base = self.offset;
        let end = base + chunk.len() as u64;
        let held_len: u64 = self.held.iter().map(|b| b.len() as u64).sum();
        let given_up_to = base - held_len;
        // Stream ranges to cut out of what the client gets, in order.
        let mut cuts: Vec<(u64, u64)> = Vec::new();

        let bytes = &chunk[..];
        let mut pos = 0usize;
        if std::mem::take(&mut self.after_cr) && bytes.first() == Some(&b'\n') {
            // The second half of a `\r\n` split across chunks: part of the line before.
            pos = 1;
            if self.event_start == base {
                self.event_start = base + 1;
            }
            if std::mem::take(&mut self.after_cr_in_cut) {
                cuts.push((base, base + 1));
            }
        }
        self.after_cr_in_cut = false;

        while pos < bytes.len() {
            let Some(found) = memchr::memchr2(b'\n', b'\r', &bytes[pos..]) else {
                self.push_line_part(&bytes[pos..]);
                break;
            };
            let line_end = pos + found;
            let terminator = match bytes[line_end] {
                b'\r' if line_end + 1 == bytes.len() => {
                    self.after_cr = true;
                    1
                }
                b'\r' if bytes[line_end + 1] == b'\n' => 2,
                _ => 1,
            };
            let next = line_end + terminator;
            let next_abs = base + next as u64;
            let cut = if self.line.is_empty() {
                self.on_line(&bytes[pos..line_end], next_abs, given_up_to)
            } else {
                self.push_line_part(&bytes[pos..line_end]);
                let line = std::mem::take(&mut self.line);
                let cut = self.on_line(&line, next_abs, given_up_to);
                self.line = line;
                self.line.clear();
                cut
            };
            if let Some(range) = cut {
                if self.after_cr {
                    self.after_cr_in_cut = true;
                }
                cuts.push(range);
            }
            pos = next;
        }

        // Hold back the unfinished event if it might be the usage chunk.
        let hold_from = if self.should_hold(end) { self.event_start.max(given_up_to) } else { end };
        self.offset = end;

        if cuts.is_empty() && self.held.is_empty() && hold_from == end {
            return chunk; // the common case: the chunk as it came
        }
        let held = std::mem::take(&mut self.held);
        let mut out: Vec<Bytes> = Vec::new();
        let mut from = given_up_to;
        for (cut_start, cut_end) in cuts {
            slice_into(&mut out, &held, given_up_to, &chunk, from, cut_start);
            from = cut_end;
        }
        slice_into(&mut out, &held, given_up_to, &chunk, from, hold_from);
        slice_into(&mut self.held, &held, given_up_to, &chunk, hold_from.max(from), end);
        concat(out)
    }

    /// The wire format this scanner reads.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether a usage block has been read (the stream's accounting is complete; for
    /// an Anthropic stream, its `message_delta`).
    pub fn has_usage(&self) -> bool {
        self.summary.usage.is_some()
    }

    /// Call when the upstream body ended normally, before [`finish`](Self::finish):
    /// returns what was still held back (an event the upstream never finished, which
    /// SSE clients discard anyway), unless it is a usage-only chunk to remove.
    pub fn flush(&mut self) -> Bytes {
        let held = concat(std::mem::take(&mut self.held));
        if held.is_empty() || !self.strip_usage_chunk {
            return held;
        }
        match self.pending_event() {
            Some(data) if parse_chunk(&data).is_some_and(|c| c.usage.is_some() && c.choices_empty) => {
                self.summary.stripped_events += 1;
                Bytes::new()
            }
            _ => held,
        }
    }

    /// What the stream delivered so far; call once, when it ended, broke, or the
    /// client went away. Text of an unfinished last event is not counted (the client
    /// never got it as an event), but a complete usage object in it is taken.
    pub fn finish(&mut self) -> StreamSummary {
        if self.summary.usage.is_none()
            && self.dialect == Dialect::OpenAi
            && let Some(data) = self.pending_event()
            && let Some(chunk) = parse_chunk(&data)
        {
            self.summary.usage = chunk.usage;
        }
        self.held.clear();
        std::mem::take(&mut self.summary)
    }

    /// The `data` of the unfinished event, its unfinished line included.
    fn pending_event(&self) -> Option<Vec<u8>> {
        let mut data = self.data.clone();
        if let Some(value) = data_field(&self.line) {
            if self.data_lines > 0 {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
        }
        (!data.is_empty()).then_some(data)
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.line.len() + part.len() <= MAX_EVENT_DATA {
            self.line.extend_from_slice(part);
        } else {
            self.data_overflowed = true;
        }
    }

    /// One complete line; `next` is the stream offset just after its terminator.
    /// Returns the range to cut when it ends a usage-only event that is removed.
    fn on_line(&mut self, line: &[u8], next: u64, given_up_to: u64) -> Option<(u64, u64)> {
        if line.is_empty() {
            return self.dispatch(next, given_up_to);
        }
        if let Some(value) = data_field(line) {
            if self.data.len() + value.len() + 1 > MAX_EVENT_DATA {
                self.data_overflowed = true;
            } else {
                if self.data_lines > 0 {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
            }
            self.data_lines += 1;
        }
        // Comments (`: ping`) and other fields (`event:`, `id:`, `retry:`) carry no
        // accounting; they stay in the event's bytes.
        None
    }

    /// A blank line: the event `[event_start, next)` is complete.
    fn dispatch(&mut self, next: u64, given_up_to: u64) -> Option<(u64, u64)> {
        let start = std::mem::replace(&mut self.event_start, next);
        let cleared = std::mem::take(&mut self.event_cleared);
        let lines = std::mem::take(&mut self.data_lines);
        let overflowed = std::mem::take(&mut self.data_overflowed);
        if lines == 0 || overflowed {
            self.data.clear();
            return None;
        }
        let data = std::mem::take(&mut self.data);
        let usage_only = self.on_event(&data);
        self.data = data;
        self.data.clear();
        // Only an event none of whose bytes reached the client can be removed.
        if usage_only && self.strip_usage_chunk && !cleared && start >= given_up_to {
            self.summary.stripped_events += 1;
            return Some((start, next));
        }
        None
    }

    /// Reads one event's data; true when it is a usage-only chunk.
    fn on_event(&mut self, data: &[u8]) -> bool {
        match self.dialect {
            Dialect::OpenAi => {}
            Dialect::Anthropic => {
                anthropic::on_event(data, &mut self.anthropic_usage, &mut self.summary);
                return false;
            }
            Dialect::Responses => {
                responses::on_event(data, &mut self.summary);
                return false;
            }
        }
        if data.trim_ascii() == b"[DONE]" {
            self.summary.saw_done = true;
            return false;
        }
        let Some(chunk) = parse_chunk_into(data, &mut self.summary.completion_text, &mut self.summary.model) else {
            return false;
        };
        if let Some(message) = chunk.error
            && self.summary.error.is_none()
        {
            self.summary.error = Some(message);
        }
        if chunk.usage.is_some() {
            self.summary.usage = chunk.usage;
        }
        chunk.usage.is_some() && chunk.choices_empty
    }

    /// Whether to keep the unfinished event's bytes back at the end of a chunk.
    fn should_hold(&mut self, end: u64) -> bool {
        if !self.strip_usage_chunk || self.event_cleared || self.event_start >= end {
            return false;
        }
        if end - self.event_start > MAX_HELD_EVENT
            || shows_nonempty_choices(&self.data)
            || shows_nonempty_choices(&self.line)
        {
            self.event_cleared = true;
            return false;
        }
        true
    }
}

/// The value of a `data` field line (`data:value`, one leading space dropped).
fn data_field(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.first() {
        None => Some(rest),
        Some(b':') => Some(rest[1..].strip_prefix(b" ").unwrap_or(&rest[1..])),
        Some(_) => None,
    }
}

/// Whether JSON text (possibly cut short) already shows `"choices": [` followed by
/// something other than `]`: such an event cannot be a usage-only chunk. Inside a
/// JSON string the quotes would be escaped, so content cannot fake it.
fn shows_nonempty_choices(text: &[u8]) -> bool {
    let finder = memchr::memmem::find_iter(text, b"\"choices\"");
    for at in finder {
        let mut rest = &text[at + b"\"choices\"".len()..];
        let expect = |byte: u8, rest: &mut &[u8]| {
            *rest = rest.trim_ascii_start();
            match rest.split_first() {
                Some((b, tail)) if *b == byte => {
                    *rest = tail;
                    true
                }
                _ => false,
            }
        };
        if expect(b':', &mut rest) && expect(b'[', &mut rest) {
            match rest.trim_ascii_start().first() {
                Some(b']') | None => {}
                Some(_) => return true,
            }
        }
    }
    false
}

/// Appends the bytes of stream range `[from, to)` to `out`, as slices of the held
/// buffers (starting at stream offset `held_start`) and of `chunk`, which follows them.
fn slice_into(out: &mut Vec<Bytes>, held: &[Bytes], held_start: u64, chunk: &Bytes, from: u64, to: u64) {
    if from >= to {
        return;
    }
    let mut at = held_start;
    for piece in held.iter().chain(std::iter::once(chunk)) {
        let piece_end = at + piece.len() as u64;
        let (lo, hi) = (from.max(at), to.min(piece_end));
        if lo < hi {
            out.push(piece.slice((lo - at) as usize..(hi - at) as usize));
        }
        at = piece_end;
        if at >= to {
            break;
        }
    }
}

fn concat(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            for piece in pieces {
                out.extend_from_slice(&piece);
            }
            out.freeze()
        }
    }
}

// ---- the chunk's JSON, borrowed and mostly skipped ----

/// A string field that is `None` for null or for any other type, instead of failing
/// the whole chunk: a provider's odd field must not lose the chunk's usage.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or anything else")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(v))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }
        }
        d.deserialize_any(TextVisitor)
    }
}

#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<WireChoice<'a>>>,
    /// Raw, and read apart: a usage block of an odd shape loses only itself.
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Text<'a>,
}

#[derive(Deserialize)]
struct WireChoice<'a> {
    #[serde(default, borrow)]
    delta: Option<WireDelta<'a>>,
    /// `/v1/completions` streams `text` instead of a delta.
    #[serde(default, borrow)]
    text: Text<'a>,
}

#[derive(Deserialize)]
struct WireDelta<'a> {
    #[serde(default, borrow)]
    content: Text<'a>,
    #[serde(default, borrow)]
    refusal: Text<'a>,
    /// Reasoning text some OpenAI-compatible servers stream (billed as output).
    #[serde(default, borrow)]
    reasoning_content: Text<'a>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<WireToolCall<'a>>>,
    #[serde(default, borrow)]
    function_call: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<WireFunction<'a>>,
}

#[derive(Deserialize)]
struct WireFunction<'a> {
    #[serde(default, borrow)]
    name: Text<'a>,
    #[serde(default, borrow)]
    arguments: Text<'a>,
}

#[derive(Deserialize)]
struct WireError<'a> {
    #[serde(default, borrow)]
    message: Text<'a>,
}

/// What one event said.
struct ParsedChunk {
    usage: Option<TokenUsage>,
    /// `choices` absent, null or `[]`.
    choices_empty: bool,
    error: Option<String>,
}

fn parse_chunk(data: &[u8]) -> Option<ParsedChunk> {
    parse_chunk_into(data, &mut String::new(), &mut None)
}

/// Parses one event's JSON, appending its completion text to `text`; `None` when
/// the data is not a JSON object.
fn parse_chunk_into(data: &[u8], text: &mut String, model: &mut Option<String>) -> Option<ParsedChunk> {
    let chunk: WireChunk<'_> = serde_json::from_slice(data).ok()?;
    if model.is_none()
        && let Some(named) = chunk.model.0.as_deref().filter(|m| !m.is_empty() && m.len() <= 256)
    {
        *model = Some(named.to_owned());
    }
    let mut push = |t: &Text<'_>| {
        if let Some(s) = &t.0 {
            text.push_str(s);
        }
    };
    let choices = chunk.choices.unwrap_or_default();
    for choice in &choices {
        push(&choice.text);
        if let Some(delta) = &choice.delta {
            push(&delta.content);
            push(&delta.refusal);
            push(&delta.reasoning_content);
            let calls = delta.tool_calls.iter().flatten().filter_map(|c| c.function.as_ref());
            for function in calls.chain(delta.function_call.as_ref()) {
                push(&function.name);
                push(&function.arguments);
            }
        }
    }
    let usage = chunk.usage.and_then(|raw| serde_json::from_str::<Option<TokenUsage>>(raw.get()).ok().flatten());
    let error = chunk.error.map(|raw| {
        let message = serde_json::from_str::<WireError<'_>>(raw.get())
            .ok()
            .and_then(|e| e.message.0.map(Cow::into_owned))
            .or_else(|| serde_json::from_str::<String>(raw.get()).ok());
        message.unwrap_or_else(|| raw.get().to_owned())
    });
    Some(ParsedChunk { usage, choices_empty: choices.is_empty(), error })
}

// ---- the request side ----

#[derive(Deserialize)]
struct StreamRequest<'a> {
    #[serde(default, borrow)]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
}

/// A field that is present, even as `null` (plain `Option` would turn null into None).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Serialize)]
struct IncludeUsage {
    include_usage: bool,
}

/// For a `"stream": true` request, the body to send upstream with
/// `stream_options.include_usage` set to `true`, and whether the client had set it
/// itself (then the body is returned as it was, without a copy). `None` for a
/// request that does not stream or is not a JSON object: send it as it is.
///
/// Everything but `stream_options` stays byte for byte: an absent `stream_options`
/// is inserted as the object's first member, a `null` one is replaced, and an object
/// is rewritten with `include_usage: true` (its other members kept). A
/// `stream_options` of another type is left alone for the upstream to refuse.
pub fn request_with_include_usage(body: &Bytes) -> Option<(Bytes, bool)> {
    let request: StreamRequest<'_> = serde_json::from_slice(body).ok()?;
    if request.stream.map(RawValue::get) != Some("true") {
        return None;
    }
    let Some(options) = request.stream_options else {
        let open = body.iter().position(|b| !b.is_ascii_whitespace()).filter(|at| body[*at] == b'{')?;
        let mut out = BytesMut::with_capacity(body.len() + 40);
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
        out.extend_from_slice(&body[open + 1..]);
        return Some((out.freeze(), false));
    };
    let raw = options.get();
    let replacement = match raw.as_bytes().first() {
        Some(b'n') => serde_json::to_vec(&IncludeUsage { include_usage: true }).ok()?,
        Some(b'{') => {
            let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
            if map.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
                return Some((body.clone(), true));
            }
            map.insert("include_usage".to_owned(), serde_json::Value::Bool(true));
            serde_json::to_vec(&map).ok()?
        }
        _ => return Some((body.clone(), false)),
    };
    // The raw value borrows from `body`: its address gives its position.
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.len()).filter(|end| *end <= body.len())?;
    let mut out = BytesMut::with_capacity(body.len() + replacement.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(&replacement);
    out.extend_from_slice(&body[end..]);
    Some((out.freeze(), false))
}

#[cfg(test)]
mod tests;
