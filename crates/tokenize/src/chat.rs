//! Chat completions: the request's wire shapes as the counter reads them, OpenAI's
//! per-message overhead, and the cookbook's formula for tool definitions.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Counter, Encoding};

#[derive(Deserialize)]
pub(crate) struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Vec<ChatMessage<'a>>,
    /// Parsed separately, leniently: an odd tool schema must not lose the count.
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default, borrow)]
    functions: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(crate) struct ChatMessage<'a> {
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<Content<'a>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    tool_call_id: Option<Cow<'a, str>>,
    /// The legacy single function call of an assistant message.
    #[serde(default, borrow)]
    function_call: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Parts(#[serde(borrow)] Vec<ContentPart<'a>>),
    /// Anything else (a number, an object): nothing to count.
    Other(IgnoredAny),
}

/// A content part: `{"type": "text", "text": …}` is counted, and so is a refusal;
/// image, audio and file parts carry no `text` and are skipped.
#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    refusal: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionCall<'a>>,
}

#[derive(Deserialize)]
struct FunctionCall<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

/// `tools[]` entries: `{"type": "function", "function": {…}}`.
#[derive(Deserialize)]
struct ToolDef<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionDef<'a>>,
}

#[derive(Deserialize)]
struct FunctionDef<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    #[serde(default)]
    properties: Option<BTreeMap<String, Property>>,
}

#[derive(Deserialize)]
struct Property {
    #[serde(default, rename = "type")]
    kind: Option<Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "enum")]
    enumeration: Option<Vec<Value>>,
}

/// Tokens OpenAI adds around each message (`<|start|>{role}<|message|>…<|end|>`).
const TOKENS_PER_MESSAGE: u64 = 3;
/// A `name` costs one token more than its text.
const TOKENS_PER_NAME: u64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
pub(crate) const REPLY_PRIMING: u64 = 3;

/// Prompt tokens of an OpenAI chat completions request body, with OpenAI's
/// documented per-message overhead (3 per message, 1 more per `name`, 3 for the
/// reply priming) and the cookbook's formula for tool definitions. Counts the role,
/// text content (a string or the text of content parts), name, tool calls' function
/// names and arguments, and tool_call_id. `None` when the body has no `messages`
/// array this can read.
pub fn count_chat_prompt(model: &str, body: &[u8]) -> Option<u64> {
    let request: ChatRequest<'_> = serde_json::from_slice(body).ok()?;
    Some(count_chat(Counter::for_model(model), &request.messages, request.tools, request.functions))
}

pub(crate) fn count_chat(
    counter: Counter,
    messages: &[ChatMessage<'_>],
    tools: Option<&RawValue>,
    functions: Option<&RawValue>,
) -> u64 {
    let mut total = 0u64;
    for message in messages {
        total += TOKENS_PER_MESSAGE;
        total += message.role.as_deref().map_or(0, |r| counter.text(r));
        match &message.content {
            Some(Content::Text(text)) => total += counter.text(text),
            Some(Content::Parts(parts)) => {
                for part in parts {
                    total += part.text.as_deref().map_or(0, |t| counter.text(t));
                    total += part.refusal.as_deref().map_or(0, |t| counter.text(t));
                }
            }
            Some(Content::Other(_)) | None => {}
        }
        if let Some(name) = &message.name {
            total += counter.text(name) + TOKENS_PER_NAME;
        }
        let calls = message.tool_calls.iter().flatten().filter_map(|c| c.function.as_ref());
        for call in calls.chain(message.function_call.as_ref()) {
            total += call.name.as_deref().map_or(0, |n| counter.text(n));
            total += call.arguments.as_deref().map_or(0, |a| counter.text(a));
        }
        total += message.tool_call_id.as_deref().map_or(0, |id| counter.text(id));
    }
    total += REPLY_PRIMING;
    total += count_tool_definitions(counter, tools, functions);
    total
}

/// Tool definitions, by the OpenAI cookbook's formula (verified there against the
/// API for gpt-3.5/gpt-4 and gpt-4o): per function `func_init` + tokens of
/// "name:description", per property `prop_key` + "name:type:description", per enum
/// item `enum_item` + its text, and `func_end` once. A definition this cannot read
/// is counted as the tokens of its JSON text, which over-counts a little.
fn count_tool_definitions(counter: Counter, tools: Option<&RawValue>, functions: Option<&RawValue>) -> u64 {
    let mut defs: Vec<FunctionDef<'_>> = Vec::new();
    let mut unreadable = 0u64;
    if let Some(raw) = tools {
        match serde_json::from_str::<Vec<ToolDef<'_>>>(raw.get()) {
            Ok(tools) => defs.extend(tools.into_iter().filter_map(|t| t.function)),
            Err(_) => unreadable += counter.text(raw.get()),
        }
    }
    if let Some(raw) = functions {
        match serde_json::from_str::<Vec<FunctionDef<'_>>>(raw.get()) {
            Ok(functions) => defs.extend(functions),
            Err(_) => unreadable += counter.text(raw.get()),
        }
    }
    if defs.is_empty() {
        return unreadable;
    }
    // The cookbook's constants: o200k models (gpt-4o) and cl100k models (gpt-4,
    // gpt-3.5), the latter also used for every other model.
    let (func_init, prop_init, prop_key, enum_init, enum_item, func_end): (i64, i64, i64, i64, i64, i64) =
        match counter.encoding {
            Encoding::O200kBase => (7, 3, 3, -3, 3, 12),
            Encoding::Cl100kBase => (10, 3, 3, -3, 3, 12),
        };
    let tokens = |text: &str| i64::try_from(counter.text(text)).unwrap_or(i64::MAX);
    let mut total: i64 = func_end;
    for def in &defs {
        let description = trim_period(def.description.as_deref().unwrap_or(""));
        total += func_init + tokens(&format!("{}:{description}", def.name.as_deref().unwrap_or("")));
        let properties = def.parameters.as_ref().and_then(|p| p.properties.as_ref());
        let Some(properties) = properties.filter(|p| !p.is_empty()) else { continue };
        total += prop_init;
        for (key, property) in properties {
            total += prop_key;
            if let Some(items) = &property.enumeration {
                total += enum_init;
                for item in items {
                    total += enum_item + tokens(&json_text(item));
                }
            }
            let kind = property.kind.as_ref().map(json_text).unwrap_or_default();
            let description = trim_period(property.description.as_deref().unwrap_or(""));
            total += tokens(&format!("{key}:{kind}:{description}"));
        }
    }
    u64::try_from(total).unwrap_or(0).saturating_add(unreadable)
}

/// The cookbook drops one trailing period from descriptions.
fn trim_period(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// A string as its text, anything else as its JSON.
fn json_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(s) => Cow::Borrowed(s.as_str()),
        other => Cow::Owned(other.to_string()),
    }
}
