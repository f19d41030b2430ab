//! A chat-completions request turned into a Messages request.
//!
//! The two formats differ where it matters to a client:
//! - Messages has one top-level `system` prompt; chat puts `system` and `developer`
//!   messages anywhere in the list. They are collected in order and joined.
//! - Messages alternates `user` and `assistant`; chat allows runs of one role, and
//!   tool results are their own `tool` messages. Tool results become `tool_result`
//!   blocks of a `user` message, and consecutive messages of one role are merged into
//!   one message whose blocks are concatenated (tool results first, as Messages
//!   requires of a user turn that answers tool calls).
//! - Tool calls are `tool_use` blocks whose `input` is a JSON object, where chat sends
//!   `arguments` as a JSON *string*: arguments that are not a JSON object are a 400
//!   here, not a 400 from the upstream after the request was admitted.
//! - Messages requires `max_tokens` and knows one choice only (`n` > 1 is refused).
//!
//! Only the fields Messages knows are written: Anthropic refuses unknown fields, so
//! everything without an equivalent is dropped rather than passed on (see
//! docs/providers.md, "Chat completions to Claude").

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tollgate_tokenize::validate_output_limit;

use crate::request::{RequestError, checked_text, json_error};

/// Messages' highest `temperature`; chat allows up to 2.
const MAX_TEMPERATURE: f64 = 1.0;

/// Turns the chat-completions request `body` into a Messages request body for
/// `model` (the route target's model, replacing the client's alias). A request
/// without `max_completion_tokens` / `max_tokens` gets `default_max_tokens`.
pub fn chat_to_messages(body: &[u8], model: &str, default_max_tokens: u64) -> Result<Bytes, RequestError> {
    let text = checked_text(body)?;
    let request: Map<String, Value> = serde_json::from_str(text).map_err(json_error)?;
    let mut out = Map::new();
    out.insert("model".to_owned(), Value::String(model.to_owned()));

    let (system, messages) = translate_messages(request.get("messages"))?;
    let max_tokens = match output_limit(&request, "max_completion_tokens")? {
        Some(n) => n,
        None => output_limit(&request, "max_tokens")?.unwrap_or(default_max_tokens.max(1)),
    };
    out.insert("max_tokens".to_owned(), max_tokens.into());
    if !system.is_empty() {
        out.insert("system".to_owned(), Value::String(system));
    }
    out.insert("messages".to_owned(), Value::Array(messages));

    check_choices(request.get("n"))?;
    if !is_null(request.get("functions")) {
        return Err(RequestError::field("functions", "is not supported for this model: use `tools`"));
    }
    if !is_null(request.get("function_call")) {
        return Err(RequestError::field("function_call", "is not supported for this model: use `tool_choice`"));
    }
    let tools = translate_tools(request.get("tools"))?;
    let tool_choice = translate_tool_choice(request.get("tool_choice"), request.get("parallel_tool_calls"))?;
    if !tools.is_empty() {
        out.insert("tools".to_owned(), Value::Array(tools));
        if let Some(choice) = tool_choice {
            out.insert("tool_choice".to_owned(), choice);
        }
    }

    if let Some(temperature) = number(&request, "temperature")? {
        if temperature < 0.0 {
            return Err(RequestError::field("temperature", "must be a number between 0 and 2"));
        }
        out.insert("temperature".to_owned(), json!(temperature.min(MAX_TEMPERATURE)));
    }
    if let Some(top_p) = number(&request, "top_p")? {
        out.insert("top_p".to_owned(), json!(top_p));
    }
    if let Some(stop) = stop_sequences(request.get("stop"))? {
        out.insert("stop_sequences".to_owned(), stop);
    }
    match request.get("stream") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            out.insert("stream".to_owned(), Value::Bool(true));
        }
        Some(_) => return Err(RequestError::field("stream", "must be a boolean")),
    }
    match request.get("user") {
        None | Some(Value::Null) => {}
        Some(Value::String(user)) if user.is_empty() => {}
        Some(Value::String(user)) => {
            out.insert("metadata".to_owned(), json!({ "user_id": user }));
        }
        Some(_) => return Err(RequestError::field("user", "must be a string")),
    }
    // Dropped, having no Messages equivalent: `presence_penalty`, `frequency_penalty`,
    // `logit_bias`, `logprobs`, `top_logprobs`, `seed`, `response_format` (text, and
    // also json_object / json_schema: Claude is not constrained to it), `stream_options`
    // (a Messages stream always reports its usage), `store`, `metadata`,
    // `service_tier`, `reasoning_effort`, `modalities`, `prediction`, and per-message
    // `name`s.
    serde_json::to_vec(&Value::Object(out))
        .map(Bytes::from)
        .map_err(|e| RequestError::body(format!("the translated request could not be written: {e}")))
}

fn is_null(value: Option<&Value>) -> bool {
    matches!(value, None | Some(Value::Null))
}

fn output_limit(request: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, RequestError> {
    validate_output_limit(field, request.get(field)).map_err(|e| RequestError::field(field, e.reason))
}

fn number(request: &Map<String, Value>, field: &str) -> Result<Option<f64>, RequestError> {
    match request.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| RequestError::field(field, "must be a number")),
        Some(_) => Err(RequestError::field(field, "must be a number")),
    }
}

/// `n`: absent, null or 1. Messages answers one choice per request.
fn check_choices(n: Option<&Value>) -> Result<(), RequestError> {
    match n {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n > 1) => {
            Err(RequestError::field("n", "must be 1: this model answers one choice per request"))
        }
        Some(_) => Err(RequestError::field("n", "must be 1")),
    }
}

/// `stop` (a string or an array of strings) as `stop_sequences`; empty strings are
/// left out (Anthropic refuses them), and an empty list is no list.
fn stop_sequences(stop: Option<&Value>) -> Result<Option<Value>, RequestError> {
    let sequences: Vec<Value> = match stop {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(items)) => {
            let mut sequences = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => sequences.push(Value::String(s.clone())),
                    _ => return Err(RequestError::field("stop", "must be a string or an array of strings")),
                }
            }
            sequences
        }
        Some(_) => return Err(RequestError::field("stop", "must be a string or an array of strings")),
    };
    let sequences: Vec<Value> = sequences.into_iter().filter(|s| s.as_str().is_some_and(|s| !s.is_empty())).collect();
    Ok((!sequences.is_empty()).then_some(Value::Array(sequences)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Assistant,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// The joined system prompt and the Messages `messages`.
fn translate_messages(messages: Option<&Value>) -> Result<(String, Vec<Value>), RequestError> {
    let messages = match messages {
        None | Some(Value::Null) => return Err(RequestError::field("messages", "is required")),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(RequestError::field("messages", "must contain at least one message"));
        }
        Some(Value::Array(messages)) => messages,
        Some(_) => return Err(RequestError::field("messages", "must be an array of messages")),
    };
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Value::Object(message) = message else {
            return Err(RequestError::field(&at, "must be an object"));
        };
        let role = match message.get("role") {
            Some(Value::String(role)) => role.as_str(),
            None | Some(Value::Null) => return Err(RequestError::field(&format!("{at}.role"), "is required")),
            Some(_) => return Err(RequestError::field(&format!("{at}.role"), "must be a string")),
        };
        let content = message.get("content");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_only(content, &format!("{at}.content"))?.into_iter().filter(|t| !t.is_empty()));
                continue;
            }
            "user" => (Role::User, content_blocks(content, &at, Role::User)?),
            "assistant" => {
                if !is_null(message.get("function_call")) {
                    return Err(RequestError::field(
                        &format!("{at}.function_call"),
                        "is not supported for this model: use `tool_calls`",
                    ));
                }
                let mut blocks = content_blocks(content, &at, Role::Assistant)?;
                blocks.extend(tool_use_blocks(message.get("tool_calls"), &at)?);
                (Role::Assistant, blocks)
            }
            "tool" => (Role::User, vec![tool_result_block(message, content, &at)?]),
            "function" => {
                return Err(RequestError::field(
                    &format!("{at}.role"),
                    "`function` messages are not supported for this model: use `tool` messages",
                ));
            }
            other => {
                return Err(RequestError::field(
                    &format!("{at}.role"),
                    format!("unknown role {other:?} (expected system, developer, user, assistant or tool)"),
                ));
            }
        };
        // A message with nothing to say (an empty string, `null` without tool calls)
        // is left out: Messages refuses empty content.
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, merged)) if *last == role => merged.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns.is_empty() {
        return Err(RequestError::field(
            "messages",
            "must contain at least one user or assistant message with content",
        ));
    }
    let messages = turns
        .into_iter()
        .map(|(role, mut blocks)| {
            if role == Role::User {
                // Tool results first: stable, so each group keeps its order.
                blocks.sort_by_key(|b| b.get("type").and_then(Value::as_str) != Some("tool_result"));
            }
            json!({ "role": role.name(), "content": blocks })
        })
        .collect();
    Ok((system.join("\n\n"), messages))
}

/// The texts of a content that must be text: a string or an array of text parts.
fn text_only(content: Option<&Value>, at: &str) -> Result<Vec<String>, RequestError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(text)) => Ok(vec![text.clone()]),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, part)| match part_type(part) {
                Some("text") => part_text(part, &format!("{at}[{j}]"), "text"),
                _ => Err(RequestError::field(&format!("{at}[{j}]"), "must be a text part ({\"type\": \"text\"})")),
            })
            .collect(),
        Some(_) => Err(RequestError::field(at, "must be a string or an array of text parts")),
    }
}

fn part_type(part: &Value) -> Option<&str> {
    part.get("type").and_then(Value::as_str)
}

/// The string member `field` of a content part.
fn part_text(part: &Value, at: &str, field: &str) -> Result<String, RequestError> {
    match part.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(RequestError::field(&format!("{at}.{field}"), "must be a string")),
    }
}

fn text_block(text: String) -> Value {
    json!({ "type": "text", "text": text })
}

/// A user's or assistant's `content` as Messages blocks; empty texts are left out.
fn content_blocks(content: Option<&Value>, at: &str, role: Role) -> Result<Vec<Value>, RequestError> {
    let at = format!("{at}.content");
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(text)) if text.is_empty() => return Ok(Vec::new()),
        Some(Value::String(text)) => return Ok(vec![text_block(text.clone())]),
        Some(Value::Array(parts)) => parts,
        Some(_) => return Err(RequestError::field(&at, "must be a string, an array of content parts or null")),
    };
    let mut blocks = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let at = format!("{at}[{j}]");
        if !part.is_object() {
            return Err(RequestError::field(&at, "must be a content part object"));
        }
        match (part_type(part), role) {
            (Some("text"), _) => {
                let text = part_text(part, &at, "text")?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
            // An assistant's earlier refusal, given back as what it said.
            (Some("refusal"), Role::Assistant) => {
                let text = part_text(part, &at, "refusal")?;
                if !text.is_empty() {
                    blocks.push(text_block(text));
                }
            }
            (Some("image_url"), Role::User) => blocks.push(image_block(part, &at)?),
            (Some(other), _) => {
                return Err(RequestError::field(
                    &format!("{at}.type"),
                    format!("content parts of type {other:?} are not supported for this model"),
                ));
            }
            (None, _) => return Err(RequestError::field(&format!("{at}.type"), "is required")),
        }
    }
    Ok(blocks)
}

/// An `image_url` part as an `image` block: a base64 `data:` URL becomes a base64
/// source, an http(s) URL a URL source (`detail` has no equivalent).
fn image_block(part: &Value, at: &str) -> Result<Value, RequestError> {
    let url_at = format!("{at}.image_url.url");
    let url = match part.get("image_url") {
        Some(Value::String(url)) => url.as_str(),
        Some(Value::Object(image)) => match image.get("url") {
            Some(Value::String(url)) => url.as_str(),
            _ => return Err(RequestError::field(&url_at, "must be a string")),
        },
        _ => return Err(RequestError::field(&format!("{at}.image_url"), "must be an object with a `url`")),
    };
    if let Some(data) = url.strip_prefix("data:") {
        let Some((media_type, payload)) = data.split_once(";base64,") else {
            return Err(RequestError::field(&url_at, "a data URL must be base64 (`data:image/png;base64,...`)"));
        };
        if media_type.is_empty() || payload.is_empty() {
            return Err(RequestError::field(&url_at, "a data URL needs a media type and data"));
        }
        return Ok(json!({
            "type": "image",
            "source": { "type": "base64", "media_type": media_type, "data": payload },
        }));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({ "type": "image", "source": { "type": "url", "url": url } }));
    }
    Err(RequestError::field(&url_at, "must be an http(s) URL or a base64 data URL"))
}

/// An assistant's `tool_calls` as `tool_use` blocks.
fn tool_use_blocks(calls: Option<&Value>, at: &str) -> Result<Vec<Value>, RequestError> {
    let calls = match calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(RequestError::field(&format!("{at}.tool_calls"), "must be an array")),
    };
    let mut blocks = Vec::with_capacity(calls.len());
    for (j, call) in calls.iter().enumerate() {
        let at = format!("{at}.tool_calls[{j}]");
        if !call.is_object() {
            return Err(RequestError::field(&at, "must be an object"));
        }
        match call.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "function" => {}
            Some(_) => return Err(RequestError::field(&format!("{at}.type"), "must be \"function\"")),
        }
        let id = match call.get("id") {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => return Err(RequestError::field(&format!("{at}.id"), "is required and must be a string")),
        };
        let Some(function) = call.get("function").filter(|f| f.is_object()) else {
            return Err(RequestError::field(&format!("{at}.function"), "is required and must be an object"));
        };
        let name = match function.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(RequestError::field(&format!("{at}.function.name"), "is required and must be a string")),
        };
        let arguments_at = format!("{at}.function.arguments");
        let input = match function.get("arguments") {
            // A call without arguments: an empty input.
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(arguments)) if arguments.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(arguments)) => match serde_json::from_str::<Value>(arguments) {
                Ok(Value::Object(input)) => Value::Object(input),
                Ok(_) => return Err(RequestError::field(&arguments_at, "must be a JSON object")),
                Err(_) => {
                    return Err(RequestError::field(&arguments_at, "must be valid JSON (a JSON object as a string)"));
                }
            },
            Some(_) => return Err(RequestError::field(&arguments_at, "must be a string of JSON")),
        };
        blocks.push(json!({ "type": "tool_use", "id": id, "name": name, "input": input }));
    }
    Ok(blocks)
}

/// A `tool` message as a `tool_result` block.
fn tool_result_block(message: &Map<String, Value>, content: Option<&Value>, at: &str) -> Result<Value, RequestError> {
    let id = match message.get("tool_call_id") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => return Err(RequestError::field(&format!("{at}.tool_call_id"), "is required and must be a string")),
    };
    let mut block = Map::new();
    block.insert("type".to_owned(), Value::String("tool_result".to_owned()));
    block.insert("tool_use_id".to_owned(), Value::String(id));
    match content {
        Some(Value::String(text)) if !text.is_empty() => {
            block.insert("content".to_owned(), Value::String(text.clone()));
        }
        Some(Value::Array(_)) => {
            let texts: Vec<Value> = text_only(content, &format!("{at}.content"))?
                .into_iter()
                .filter(|t| !t.is_empty())
                .map(text_block)
                .collect();
            if !texts.is_empty() {
                block.insert("content".to_owned(), Value::Array(texts));
            }
        }
        None | Some(Value::Null) | Some(Value::String(_)) => {}
        Some(_) => {
            return Err(RequestError::field(&format!("{at}.content"), "must be a string or an array of text parts"));
        }
    }
    Ok(Value::Object(block))
}

/// `tools` as Messages tool definitions.
fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, RequestError> {
    let tools = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(RequestError::field("tools", "must be an array of objects")),
    };
    let mut out = Vec::with_capacity(tools.len());
    for (k, tool) in tools.iter().enumerate() {
        let at = format!("tools[{k}]");
        if !tool.is_object() {
            return Err(RequestError::field(&at, "must be an object"));
        }
        match tool.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if kind == "function" => {}
            Some(_) => {
                return Err(RequestError::field(&format!("{at}.type"), "only \"function\" tools are supported"));
            }
        }
        let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
            return Err(RequestError::field(&format!("{at}.function"), "is required and must be an object"));
        };
        let name = match function.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            _ => return Err(RequestError::field(&format!("{at}.function.name"), "is required and must be a string")),
        };
        let mut definition = Map::new();
        definition.insert("name".to_owned(), Value::String(name));
        match function.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(description)) => {
                definition.insert("description".to_owned(), Value::String(description.clone()));
            }
            Some(_) => return Err(RequestError::field(&format!("{at}.function.description"), "must be a string")),
        }
        let schema = match function.get("parameters") {
            None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
            Some(Value::Object(schema)) => Value::Object(schema.clone()),
            Some(_) => {
                return Err(RequestError::field(&format!("{at}.function.parameters"), "must be a JSON Schema object"));
            }
        };
        definition.insert("input_schema".to_owned(), schema);
        out.push(Value::Object(definition));
    }
    Ok(out)
}

/// `tool_choice` and `parallel_tool_calls` as Messages' `tool_choice`.
fn translate_tool_choice(choice: Option<&Value>, parallel: Option<&Value>) -> Result<Option<Value>, RequestError> {
    let disable_parallel = match parallel {
        None | Some(Value::Null) | Some(Value::Bool(true)) => false,
        Some(Value::Bool(false)) => true,
        Some(_) => return Err(RequestError::field("parallel_tool_calls", "must be a boolean")),
    };
    let invalid = || {
        RequestError::field(
            "tool_choice",
            "must be \"auto\", \"required\", \"none\" or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    let mut choice = match choice {
        None | Some(Value::Null) if disable_parallel => json!({ "type": "auto" }),
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(mode)) => match mode.as_str() {
            "auto" => json!({ "type": "auto" }),
            "required" => json!({ "type": "any" }),
            // Messages' `none` takes no parallelism flag.
            "none" => return Ok(Some(json!({ "type": "none" }))),
            _ => return Err(invalid()),
        },
        Some(Value::Object(object)) => {
            if object.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid());
            }
            match object.get("function").and_then(|f| f.get("name")) {
                Some(Value::String(name)) if !name.is_empty() => json!({ "type": "tool", "name": name }),
                _ => return Err(RequestError::field("tool_choice.function.name", "is required and must be a string")),
            }
        }
        Some(_) => return Err(invalid()),
    };
    if disable_parallel && let Some(object) = choice.as_object_mut() {
        object.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
    }
    Ok(Some(choice))
}
