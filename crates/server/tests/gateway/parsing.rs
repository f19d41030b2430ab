//! The `request_parsing` fuzz target's checks (fuzz/harness/request_parsing.rs), run
//! in the test command on generated inputs: arbitrary bytes, and JSON objects built
//! from the fields the gateway reads, with values of every type. cargo-fuzz needs a
//! nightly toolchain; these need nothing (docs/testing.md).
//!
//! Case counts are fixed and small so this takes a second or two in a debug build;
//! `PROPTEST_CASES=20000` searches longer.

mod harness {
    use axum::http;

    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/harness/request_parsing.rs"));
}

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tollgate_providers::{Endpoint, RequestError, RequestView};

fn inspect(endpoint: Endpoint, body: &[u8]) -> Result<RequestView<'_>, RequestError> {
    RequestView::parse(endpoint, body)
}

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Any JSON value, a few levels deep, leaning on the edge cases of each type.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(10_000_000), Just(10_000_001), Just(i64::MAX)]
            .prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
        prop_oneof![Just(""), Just(" "), Just("gpt-4o-mini"), Just("true"), Just("10")]
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A chat message: mostly well formed, sometimes with a field of the wrong type.
fn message() -> impl Strategy<Value = Value> {
    let role = prop_oneof![4 => Just(json!("user")), 1 => json_value()];
    let content = prop_oneof![
        3 => "\\PC{0,12}".prop_map(Value::String),
        1 => Just(Value::Null),
        1 => Just(json!([{ "type": "text", "text": "hi" }])),
        1 => json_value(),
    ];
    (prop::option::of(role), prop::option::of(content), prop::option::of(json_value())).prop_map(
        |(role, content, name)| {
            let mut map = Map::new();
            for (k, v) in [("role", role), ("content", content), ("name", name)] {
                if let Some(v) = v {
                    map.insert(k.into(), v);
                }
            }
            Value::Object(map)
        },
    )
}

/// A request body: the fields `inspect` reads (each maybe absent), with any values.
fn request_object() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| prop::option::of(json_value()).prop_map(move |v| (name, v));
    (
        prop::option::of(prop_oneof![
            3 => "[a-z0-9.-]{1,20}".prop_map(Value::String),
            1 => json_value(),
            1 => Just(Value::String("m".repeat(257))),
        ]),
        field("stream"),
        field("max_tokens"),
        field("max_completion_tokens"),
        field("stream_options"),
        prop::option::of(prop_oneof![
            3 => prop::collection::vec(message(), 0..3).prop_map(Value::Array),
            1 => json_value(),
        ])
        .prop_map(|v| ("messages", v)),
    )
        .prop_map(|(model, stream, max_tokens, max_completion, options, messages)| {
            let mut map = Map::new();
            if let Some(m) = model {
                map.insert("model".into(), m);
            }
            for (name, value) in [stream, max_tokens, max_completion, options, messages] {
                if let Some(v) = value {
                    map.insert(name.into(), v);
                }
            }
            Value::Object(map)
        })
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn arbitrary_bytes_are_parsed_or_refused_with_a_400(data in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::request_parsing(&data);
    }

    #[test]
    fn arbitrary_text_is_parsed_or_refused_with_a_400(text in "\\PC{0,120}") {
        harness::request_parsing(text.as_bytes());
    }

    #[test]
    fn arbitrary_requests_are_parsed_or_refused_with_a_400(body in request_object()) {
        let bytes = serde_json::to_vec(&body).expect("serialise");
        harness::request_parsing(&bytes);
        // A model of what `inspect` accepts: well-typed requests are accepted with
        // what they asked for, anything else is refused.
        prop_assert_eq!(inspect(Endpoint::ChatCompletions, &bytes).ok().map(|i| (i.stream, i.max_output_tokens)), expected(&body), "{}", body);
    }
}

/// `(stream, max_output_tokens)` for a request `inspect` should accept, else `None`.
fn expected(body: &Value) -> Option<(bool, Option<u64>)> {
    body["model"].as_str().filter(|m| !m.trim().is_empty() && m.len() <= 256)?;
    let messages = body["messages"].as_array().filter(|m| !m.is_empty())?;
    for m in messages {
        m.as_object()?;
        m["role"].as_str()?;
        let parts_ok = m["content"].as_array().is_some_and(|p| p.iter().all(Value::is_object));
        if !(matches!(m["content"], Value::Null | Value::String(_)) || parts_ok) {
            return None;
        }
        if !matches!(m["name"], Value::Null | Value::String(_)) {
            return None;
        }
    }
    let stream = match &body["stream"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return None,
    };
    match &body["stream_options"] {
        Value::Null => {}
        Value::Object(o) if matches!(o.get("include_usage"), None | Some(Value::Null | Value::Bool(_))) => {}
        _ => return None,
    }
    // `None`: invalid; `Some(None)`: absent.
    let bound = |v: &Value| match v {
        Value::Null => Some(None),
        v => v.as_i64().filter(|n| (1..=10_000_000).contains(n)).map(|n| Some(n as u64)),
    };
    let max = match bound(&body["max_completion_tokens"])? {
        Some(n) => Some(n),
        None => bound(&body["max_tokens"])?,
    };
    Some((stream, max))
}

#[test]
fn hand_picked_bodies() {
    for body in [
        &b""[..],
        b"\xff\xfe{}",
        b"{\"model\":\"\xff\"}",
        b"[]",
        b"\"model\"",
        b"null",
        b"{\"model\":\"m\",\"max_tokens\":-1}",
        b"{\"model\":\"m\",\"max_tokens\":1e400}",
        b"{\"model\":\"m\",\"max_tokens\":18446744073709551616}",
        b"{\"model\":\"m\",\"stream\":\"yes\"}",
        b"{\"model\":\"m\",\"model\":\"n\"}",
        b"{\"model\":\"m\"} trailing",
        // Invalid UTF-8 inside a prompt the gateway does not parse field by field.
        b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\x28\"}]}",
        b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":5}]}",
        b"{\"model\":\"m\",\"messages\":[]}",
        b"{\"model\":\"m\"}",
    ] {
        harness::request_parsing(body);
        assert!(inspect(Endpoint::ChatCompletions, body).is_err(), "{}", String::from_utf8_lossy(body));
    }
    // Deeply nested JSON in a field the gateway skips is skipped without recursion.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    harness::request_parsing(deep.as_bytes());
    let deep = format!("{{\"model\":\"m\",\"messages\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    harness::request_parsing(deep.as_bytes());
    let ok = serde_json::to_vec(
        &json!({"model": "m", "max_tokens": 10_000_000, "stream": true, "messages": [{"role": "user"}]}),
    )
    .expect("json");
    assert_eq!(inspect(Endpoint::ChatCompletions, &ok).expect("valid").max_output_tokens, Some(10_000_000));
}

/// A request is a JSON object. serde also reads a struct from an array of its fields
/// in order, so without a check `["gpt-4o-mini"]` would pass for a request naming a
/// model (and `"stream_options": [true]` for `include_usage`).
#[test]
fn a_json_array_is_not_a_request() {
    for body in
        [&br#"["gpt-4o-mini"]"#[..], br#"["gpt-4o-mini", true, 5]"#, br#"{"model":"m","stream_options":[true]}"#]
    {
        let result = inspect(Endpoint::ChatCompletions, body);
        assert!(result.is_err(), "{} was accepted as a request", String::from_utf8_lossy(body));
    }
}
