//! The shape of the prompt fields (`messages`, `tools`, `functions`, `prompt`,
//! `input`), checked before admission so that a body the upstream would refuse is a
//! 400 from tollgate that charges nothing, not a forwarded request whose upstream 400
//! counts. Only the located slices are read, with borrowing structs that skip every
//! value they do not check (no JSON tree).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::RequestError;

/// Checks a chat request's `messages`: a non-empty array of objects, each with a
/// string `role`, a `content` that is a string, `null` or an array of content-part
/// objects, and a string `name` if any.
pub(super) fn check_messages(raw: &RawValue) -> Result<(), RequestError> {
    let messages =
        serde_json::from_str::<Messages>(raw.get()).map_err(|e| RequestError::field("messages", strip_position(&e)))?;
    if messages.0 == 0 {
        return Err(RequestError::field("messages", "must contain at least one message"));
    }
    Ok(())
}

/// Checks `tools` / `functions`: `null` or an array of objects.
pub(super) fn check_definitions(field: &str, raw: Option<&RawValue>) -> Result<(), RequestError> {
    let Some(raw) = raw else { return Ok(()) };
    serde_json::from_str::<Option<Vec<Object>>>(raw.get())
        .map(|_| ())
        .map_err(|_| RequestError::field(field, "must be an array of objects"))
}

/// Checks a field that is a string or an array of objects (Anthropic's `system`, the
/// Responses API's `input`).
pub(super) fn check_text_or_objects(field: &str, raw: &RawValue) -> Result<(), RequestError> {
    let text = raw.get();
    let fits = if text.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(text).is_ok()
    } else {
        serde_json::from_str::<Vec<Object>>(text).is_ok()
    };
    if fits { Ok(()) } else { Err(RequestError::field(field, "must be a string or an array of objects")) }
}

/// Checks a completions `prompt` or an embeddings `input` and returns how many prompts
/// it holds: a string or an array of token ids is one; an array of strings or of
/// token-id arrays is one per element. Empty arrays and mixed arrays are refused.
pub(super) fn check_text_input(field: &str, raw: &RawValue) -> Result<u64, RequestError> {
    let invalid = || {
        RequestError::field(
            field,
            "must be a string, an array of strings, an array of token ids or an array of token-id arrays",
        )
    };
    match serde_json::from_str::<TextInput>(raw.get()).map_err(|_| invalid())? {
        TextInput::Text => Ok(1),
        TextInput::Items { count: 0, .. } => Err(RequestError::field(field, "must not be empty")),
        TextInput::Items { kind: ItemKind::Token, .. } => Ok(1),
        TextInput::Items { count, .. } => Ok(count),
    }
}

/// serde_json ends messages with " at line L column C": useless to an API client.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Any JSON object, its members skipped.
struct Object;

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Object)
            }
        }
        d.deserialize_map(V)
    }
}

/// The number of messages, each checked.
struct Messages(usize);

impl<'de> Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut count = 0;
                loop {
                    match seq.next_element::<Message>() {
                        Ok(Some(_)) => count += 1,
                        Ok(None) => return Ok(Messages(count)),
                        Err(e) => return Err(de::Error::custom(format_args!("[{count}]: {e}"))),
                    }
                }
            }
        }
        d.deserialize_seq(V)
    }
}

/// One message: only what the upstream would refuse is checked. An object with a
/// string `role`, a `content` that is null, a string or content parts, and a string
/// (or null) `name`. Written by hand: a derived struct also accepts a JSON array as
/// its fields in order (`["user"]` would pass as a message with role "user").
struct Message;

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let (mut role, mut content, mut name) = (false, false, false);
                while let Some(field) = map.next_key::<Cow<'de, str>>()? {
                    let seen = match field.as_ref() {
                        "role" => {
                            map.next_value::<Text>()?;
                            &mut role
                        }
                        "content" => {
                            map.next_value::<Option<Content>>()?;
                            &mut content
                        }
                        "name" => {
                            map.next_value::<Option<Text>>()?;
                            &mut name
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(seen, true) {
                        return Err(de::Error::custom(format_args!("duplicate field `{field}`")));
                    }
                }
                if !role {
                    return Err(de::Error::missing_field("role"));
                }
                Ok(Message)
            }
        }
        d.deserialize_map(V)
    }
}

/// A string, whatever it holds.
struct Text;

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Text, E> {
                Ok(Text)
            }
        }
        d.deserialize_str(V)
    }
}

/// A message's `content`: a string, or an array of content-part objects.
struct Content;

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("content: a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Content, E> {
                Ok(Content)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                while seq.next_element::<Object>()?.is_some() {}
                Ok(Content)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ItemKind {
    Text,
    Token,
    Tokens,
}

/// A `prompt` / `input`, by shape.
enum TextInput {
    Text,
    Items { kind: ItemKind, count: u64 },
}

impl<'de> Deserialize<'de> for TextInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TextInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TextInput, E> {
                Ok(TextInput::Text)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextInput, A::Error> {
                let mut kind = None;
                let mut count = 0u64;
                while let Some(item) = seq.next_element::<Item>()? {
                    if kind.is_some_and(|k| k != item.0) {
                        return Err(de::Error::custom("mixed array"));
                    }
                    kind = Some(item.0);
                    count += 1;
                }
                Ok(TextInput::Items { kind: kind.unwrap_or(ItemKind::Text), count })
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of a `prompt` / `input` array.
struct Item(ItemKind);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Item, E> {
                Ok(Item(ItemKind::Text))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
                Ok(Item(ItemKind::Token))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Item, E> {
                if v < 0 { Err(E::custom("negative token id")) } else { Ok(Item(ItemKind::Token)) }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
                let mut any = false;
                while seq.next_element::<u32>()?.is_some() {
                    any = true;
                }
                if !any {
                    return Err(de::Error::custom("empty token array"));
                }
                Ok(Item(ItemKind::Tokens))
            }
        }
        d.deserialize_any(V)
    }
}
