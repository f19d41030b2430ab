//! Anthropic's Messages stream turned into chat-completion chunks, as it arrives.
//!
//! The translator is fed the upstream's bytes exactly as the network cut them, so an
//! event, a line, a `\r\n` pair or a UTF-8 character may be split across pushes. It
//! keeps only the unfinished line and the current event's `data` between pushes,
//! bounded by [`MAX_PENDING_EVENT`]: an upstream that never ends a line cannot grow
//! memory without end; past the bound the client gets an error chunk and nothing
//! more. Each complete event is translated at once, so nothing the client could use
//! is delayed, and the output does not depend on where the input was cut.
//!
//! | Anthropic event | chat chunk |
//! |---|---|
//! | `message_start` | `delta: {role: "assistant", content: ""}` |
//! | `content_block_start` text | nothing |
//! | `content_block_delta` `text_delta` | `delta: {content}` |
//! | `content_block_start` tool_use | `delta: {tool_calls: [{index, id, type, function: {name, arguments: ""}}]}` |
//! | `content_block_delta` `input_json_delta` | `delta: {tool_calls: [{index, function: {arguments}}]}` |
//! | `message_delta` with `stop_reason` | `delta: {}` with `finish_reason`, then the usage chunk (`choices: []`) when asked for |
//! | `message_stop` | `data: [DONE]` |
//! | `error` | `data: {"error": {...}}`, then nothing |
//! | `ping`, `content_block_stop`, thinking deltas, unknown events | nothing |
//!
//! A stream that ends without `message_stop` gets no `[DONE]` from here: the client
//! must see that it was cut (the gateway adds its own error event).

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChatUsage, chat_id, error_json, error_type, finish_reason};
use crate::usage::{AnthropicUsage, TokenUsage};

/// The longest unfinished line plus event data kept between pushes (1 MiB). Anthropic's
/// events are small (one delta each); a longer one is a broken or hostile upstream.
pub const MAX_PENDING_EVENT: usize = 1024 * 1024;

/// Translates one Messages stream into chat-completion chunks.
pub struct MessagesToChatStream {
    model: String,
    created: i64,
    include_usage: bool,
    /// `chatcmpl-` + the message id, once `message_start` named it.
    id: String,
    usage: AnthropicUsage,
    /// `tool_use` blocks seen so far: the next one's `index` in `tool_calls`.
    tool_calls: u64,
    /// The content block being streamed, if it is a tool_use: (block index, tool index).
    current_tool: Option<(u64, u64)>,
    usage_sent: bool,
    /// `message_stop`, an `error` event or a broken stream ended the translation:
    /// nothing more is sent.
    stopped: bool,
    /// The unfinished last line, without its terminator.
    line: Vec<u8>,
    /// The last push ended in `\r`: a `\n` starting the next one completes it.
    after_cr: bool,
    /// The current event's `data` lines, joined by `\n`.
    data: Vec<u8>,
    data_lines: u32,
}

impl MessagesToChatStream {
    /// A translator whose chunks name `model` (the model the client asked for) and
    /// `created_secs`; `include_usage`: send the usage chunk (the client asked for it
    /// with `stream_options.include_usage`).
    pub fn new(model: &str, created_secs: i64, include_usage: bool) -> Self {
        Self {
            model: model.to_owned(),
            created: created_secs,
            include_usage,
            id: chat_id(""),
            usage: AnthropicUsage::default(),
            tool_calls: 0,
            current_tool: None,
            usage_sent: false,
            stopped: false,
            line: Vec::new(),
            after_cr: false,
            data: Vec::new(),
            data_lines: 0,
        }
    }

    /// Reads the next bytes of the upstream stream and returns the chat chunks to send
    /// now (possibly none).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::new();
        let mut rest = chunk;
        if std::mem::take(&mut self.after_cr)
            && let Some((b'\n', tail)) = rest.split_first()
        {
            rest = tail;
        }
        while !rest.is_empty() && !self.stopped {
            let Some(at) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.push_line_part(rest, &mut out);
                break;
            };
            let terminator = match (rest[at], rest.get(at + 1)) {
                (b'\r', None) => {
                    self.after_cr = true;
                    1
                }
                (b'\r', Some(b'\n')) => 2,
                _ => 1,
            };
            if self.line.is_empty() {
                self.on_line(&rest[..at], &mut out);
            } else {
                self.push_line_part(&rest[..at], &mut out);
                let mut line = std::mem::take(&mut self.line);
                if !self.stopped {
                    self.on_line(&line, &mut out);
                }
                // The buffer is kept for the next partial line, unless translation
                // stopped (then it is let go).
                if !self.stopped {
                    line.clear();
                    self.line = line;
                }
            }
            rest = &rest[at + terminator..];
        }
        Bytes::from(out)
    }

    /// Call when the upstream stream ended: translates a last event the upstream did
    /// not close with a blank line, if its data is complete JSON. Adds no `[DONE]`
    /// of its own.
    pub fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        if !self.stopped {
            if !self.line.is_empty() {
                let line = std::mem::take(&mut self.line);
                self.on_line(&line, &mut out);
            }
            if self.data_lines > 0 && serde_json::from_slice::<serde::de::IgnoredAny>(&self.data).is_ok() {
                self.dispatch(&mut out);
            }
        }
        self.stopped = true;
        self.data = Vec::new();
        self.line = Vec::new();
        Bytes::from(out)
    }

    /// Bytes kept between pushes (the unfinished line and the event's data).
    pub(super) fn pending_len(&self) -> usize {
        self.line.len() + self.data.len()
    }

    fn push_line_part(&mut self, part: &[u8], out: &mut Vec<u8>) {
        if self.pending_len() + part.len() > MAX_PENDING_EVENT {
            self.overflow(out);
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn overflow(&mut self, out: &mut Vec<u8>) {
        self.fail(
            out,
            "The upstream provider's stream sent an event longer than tollgate accepts (1 MiB).",
            "upstream_error",
            Some("upstream_stream_broken"),
        );
    }

    /// Sends an error chunk and stops translating.
    fn fail(&mut self, out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&error_json(message, kind, code));
        out.extend_from_slice(b"\n\n");
        self.stopped = true;
        self.line = Vec::new();
        self.data = Vec::new();
        self.data_lines = 0;
    }

    /// One complete line of the upstream stream.
    fn on_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        // `event:` names repeat the data's `type`; `id:`, `retry:` and comments carry
        // nothing to translate.
        let Some(value) = data_field(line) else { return };
        if self.pending_len() + value.len() + 1 > MAX_PENDING_EVENT {
            self.overflow(out);
            return;
        }
        if self.data_lines > 0 {
            self.data.push(b'\n');
        }
        self.data.extend_from_slice(value);
        self.data_lines += 1;
    }

    /// A blank line: the current event is complete.
    fn dispatch(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.data_lines) == 0 {
            return;
        }
        let data = std::mem::take(&mut self.data);
        self.on_event(&data, out);
        if !self.stopped {
            self.data = data;
            self.data.clear();
        }
    }

    fn on_event(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let event = match serde_json::from_slice::<Event<'_>>(data) {
            Ok(event) => event,
            Err(_) => {
                self.fail(
                    out,
                    "The upstream provider's stream sent an event that could not be read.",
                    "upstream_error",
                    Some("upstream_stream_broken"),
                );
                return;
            }
        };
        match event.kind.as_deref().unwrap_or_default() {
            "message_start" => {
                if let Some(message) = event.message {
                    if let Some(id) = message.id {
                        self.id = chat_id(&id);
                    }
                    if let Some(usage) = usage_of(message.usage) {
                        self.usage = self.usage.merged(usage);
                    }
                }
                let delta = Delta { role: Some("assistant"), content: Some(""), ..Delta::default() };
                self.send(out, Some(delta), None, None);
            }
            "content_block_start" => {
                self.current_tool = None;
                let Some(block) = event.content_block else { return };
                if block.kind.as_deref() != Some("tool_use") {
                    // A text block starts empty; should it not, its text is sent.
                    if block.kind.as_deref() == Some("text")
                        && let Some(text) = block.text.as_deref().filter(|t| !t.is_empty())
                    {
                        self.send(out, Some(Delta { content: Some(text), ..Delta::default() }), None, None);
                    }
                    return;
                }
                let index = self.tool_calls;
                self.tool_calls += 1;
                self.current_tool = Some((event.index.unwrap_or_default(), index));
                let call = ToolCallDelta {
                    index,
                    id: Some(block.id.as_deref().unwrap_or_default()),
                    kind: Some("function"),
                    function: FunctionDelta { name: Some(block.name.as_deref().unwrap_or_default()), arguments: "" },
                };
                self.send(out, Some(Delta { tool_calls: Some([call]), ..Delta::default() }), None, None);
            }
            "content_block_delta" => {
                let Some(delta) = event.delta else { return };
                match delta.kind.as_deref() {
                    Some("text_delta") => {
                        if let Some(text) = delta.text.as_deref() {
                            self.send(out, Some(Delta { content: Some(text), ..Delta::default() }), None, None);
                        }
                    }
                    Some("input_json_delta") => {
                        let Some((block, tool)) = self.current_tool else { return };
                        if event.index.unwrap_or_default() != block {
                            return;
                        }
                        let Some(partial) = delta.partial_json.as_deref().filter(|p| !p.is_empty()) else { return };
                        let call = ToolCallDelta {
                            index: tool,
                            id: None,
                            kind: None,
                            function: FunctionDelta { name: None, arguments: partial },
                        };
                        self.send(out, Some(Delta { tool_calls: Some([call]), ..Delta::default() }), None, None);
                    }
                    // thinking_delta, signature_delta, citations_delta: no chat equivalent.
                    _ => {}
                }
            }
            "content_block_stop" => self.current_tool = None,
            "message_delta" => {
                let delta_usage = usage_of(event.usage);
                if let Some(usage) = delta_usage {
                    self.usage = self.usage.merged(usage);
                }
                if let Some(reason) = event.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    self.send(out, Some(Delta::default()), Some(finish_reason(reason)), None);
                }
                if self.include_usage && delta_usage.is_some() && !self.usage_sent {
                    self.usage_sent = true;
                    let usage = ChatUsage::from(TokenUsage::from(self.usage));
                    self.send(out, None, None, Some(usage));
                }
            }
            "message_stop" => {
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.stopped = true;
            }
            "error" => {
                let error = event.error.unwrap_or_default();
                let message = error.message.as_deref().filter(|m| !m.is_empty());
                let message = message.unwrap_or("The upstream provider's stream failed.");
                let kind = error_type(error.kind.as_deref().unwrap_or_default());
                self.fail(out, message, kind, None);
            }
            // ping, and events this code does not know.
            _ => {}
        }
    }

    /// Writes one chunk: a single choice with `delta` (and `finish_reason`), or, with
    /// `delta` `None`, the usage chunk (`choices: []`).
    fn send(
        &self,
        out: &mut Vec<u8>,
        delta: Option<Delta<'_>>,
        finish: Option<&'static str>,
        usage: Option<ChatUsage>,
    ) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: delta.map(|delta| ChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish }),
            usage,
        };
        out.extend_from_slice(b"data: ");
        // Plain strings and numbers: serializing cannot fail; if it did, the chunk
        // would be left out rather than sent half-written.
        let start = out.len();
        if serde_json::to_writer(&mut *out, &chunk).is_err() {
            out.truncate(start - b"data: ".len());
            return;
        }
        out.extend_from_slice(b"\n\n");
    }
}

/// The value of a `data` field line (`data:value`, one leading space dropped).
fn data_field(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"data")?;
    match rest.split_first() {
        None => Some(rest),
        Some((b':', value)) => Some(value.strip_prefix(b" ").unwrap_or(value)),
        Some(_) => None,
    }
}

fn usage_of(raw: Option<Value>) -> Option<AnthropicUsage> {
    raw.and_then(|raw| serde_json::from_value::<AnthropicUsage>(raw).ok())
}

// ---- Anthropic's events, the fields translated ----

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default, borrow)]
    message: Option<StartMessage<'a>>,
    #[serde(default, borrow)]
    content_block: Option<Block<'a>>,
    #[serde(default, borrow)]
    delta: Option<EventDelta<'a>>,
    /// Read apart: a usage block of an odd shape loses only itself.
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, borrow)]
    error: Option<WireError<'a>>,
}

#[derive(Deserialize)]
struct StartMessage<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// A content block's delta, or `message_delta`'s.
#[derive(Deserialize)]
struct EventDelta<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    partial_json: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    stop_reason: Option<Cow<'a, str>>,
}

#[derive(Default, Deserialize)]
struct WireError<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    message: Option<Cow<'a, str>>,
}

// ---- the chunks sent ----

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    /// One choice, or none (the usage chunk): serialized as an array either way.
    #[serde(serialize_with = "one_or_none")]
    choices: Option<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<ChatUsage>,
}

fn one_or_none<S: serde::Serializer, T: Serialize>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter())
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'a>; 1]>,
}

#[derive(Serialize)]
struct ToolCallDelta<'a> {
    index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'a>,
}

#[derive(Serialize)]
struct FunctionDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    arguments: &'a str,
}
