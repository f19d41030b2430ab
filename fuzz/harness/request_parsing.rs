// The checks of the `request_parsing` fuzz target, shared with the test suite
// (`include!`d by fuzz/fuzz_targets/request_parsing.rs and by
// crates/server/tests/gateway/parsing.rs), so both run the same assertions. `http` is
// the `http` crate (the test suite names axum's re-export so).

/// Request inspection on every endpoint: a 400 that says what is wrong, or a request
/// whose fields are within bounds. Never a panic, never another status.
pub fn inspect_any(data: &[u8]) {
    use tollgate_providers::{Endpoint, RequestView};
    for endpoint in [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Messages,
        Endpoint::Responses,
    ] {
        match RequestView::parse(endpoint, data) {
            Ok(info) => {
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(), "accepted a body that is not JSON");
                assert!(!info.model.trim().is_empty() && info.model.len() <= 256, "model {:?}", info.model);
                assert!(info.max_output_tokens.is_none_or(|n| (1..=10_000_000).contains(&n)));
                assert!(!(info.stream && endpoint == Endpoint::Embeddings), "embeddings do not stream");
                assert!(std::str::from_utf8(data).is_ok(), "accepted a body that is not UTF-8");
                check_prompt(endpoint, data, &info);
            }
            Err(e) => {
                let e = tollgate_server::http::error::ApiError::from(tollgate_gateway::GatewayError::from(e));
                assert_eq!(e.status().as_u16(), 400, "{endpoint:?}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
}

/// An accepted request's prompt is one the upstream would take: chat `messages` a
/// non-empty array of objects with a string `role`, a string/null/parts `content` and
/// a string `name`; `prompt` / `input` a string or a non-empty uniform array; and the
/// prompt count (what output is reserved for) is one per completions prompt.
pub fn check_prompt(endpoint: tollgate_providers::Endpoint, data: &[u8], info: &tollgate_providers::RequestView<'_>) {
    use serde_json::Value;
    use tollgate_providers::Endpoint;
    // Only the prompt fields, and each only where it is read (the others may nest
    // deeper than a `Value` may).
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        #[serde(default, borrow)]
        messages: Option<&'a serde_json::value::RawValue>,
        #[serde(default, borrow)]
        prompt: Option<&'a serde_json::value::RawValue>,
        #[serde(default, borrow)]
        input: Option<&'a serde_json::value::RawValue>,
    }
    let fields: Fields<'_> = serde_json::from_slice(data).expect("accepted JSON");
    let read = |raw: Option<&serde_json::value::RawValue>| -> Value {
        raw.map_or(Value::Null, |r| serde_json::from_str(r.get()).expect("accepted prompt field"))
    };
    let body = match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages => serde_json::json!({ "messages": read(fields.messages) }),
        Endpoint::Completions => serde_json::json!({ "prompt": read(fields.prompt) }),
        Endpoint::Embeddings | Endpoint::Responses => serde_json::json!({ "input": read(fields.input) }),
    };
    let text_shape = |v: &Value| -> Option<u64> {
        match v {
            Value::String(_) => Some(1),
            Value::Array(items) if items.is_empty() => None,
            Value::Array(items) if items.iter().all(Value::is_string) => Some(items.len() as u64),
            Value::Array(items) if items.iter().all(Value::is_u64) => Some(1),
            Value::Array(items)
                if items.iter().all(|i| {
                    i.as_array().is_some_and(|t| !t.is_empty() && t.iter().all(|n| n.as_u64().is_some_and(|n| n <= u32::MAX as u64)))
                }) =>
            {
                Some(items.len() as u64)
            }
            _ => None,
        }
    };
    match endpoint {
        Endpoint::ChatCompletions | Endpoint::Messages => {
            let messages = body["messages"].as_array().expect("messages is an array");
            assert!(!messages.is_empty(), "empty messages accepted");
            for m in messages {
                assert!(m["role"].is_string(), "message without a string role: {m}");
                assert!(matches!(&m["content"], Value::Null | Value::String(_)) || m["content"].as_array().is_some_and(|p| p.iter().all(Value::is_object)), "content {m}");
                assert!(matches!(&m["name"], Value::Null | Value::String(_)), "name {m}");
            }
            assert_eq!(info.prompts, 1);
        }
        Endpoint::Completions => match &body["prompt"] {
            Value::Null => assert_eq!(info.prompts, 1),
            prompt => assert_eq!(Some(info.prompts), text_shape(prompt), "prompt {prompt}"),
        },
        Endpoint::Embeddings => assert!(text_shape(&body["input"]).is_some(), "input {}", body["input"]),
        Endpoint::Responses => {
            let input = &body["input"];
            let items = input.as_array().is_some_and(|items| items.iter().all(Value::is_object));
            assert!(input.is_null() || input.is_string() || items, "input {input}");
        }
    }
    assert!(info.output_multiplier() >= 1);
}

/// Key parsing on any text: accepted keys are well formed and parse again.
pub fn parse_key_any(text: &str) {
    use tollgate_core::key::{KEY_LEN, KEY_PREFIX, PUBLIC_ID_LEN};
    if let Ok(key) = tollgate_core::ApiKey::parse(text) {
        assert_eq!(key.expose(), text);
        assert_eq!(text.len(), KEY_LEN);
        assert!(text.starts_with(KEY_PREFIX));
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert_eq!(key.public_id().len(), PUBLIC_ID_LEN);
        assert!(tollgate_core::ApiKey::parse(key.expose()).is_ok());
        assert_eq!(key.hash(), tollgate_core::KeyHash::of(text));
    }
}

/// Header parsing: any bytes hyper would accept as an `Authorization` value.
pub fn bearer_any(data: &[u8]) {
    use http::{HeaderMap, HeaderValue, header};
    let Ok(value) = HeaderValue::from_bytes(data) else { return };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value);
    if let Some(token) = tollgate_server::auth::bearer(&headers) {
        assert!(data.len() > token.len(), "the token is part of the header");
    }
    let _ = tollgate_server::http::client::anonymous_id(&headers);
    let mut forwarded = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(data) {
        forwarded.insert("x-forwarded-for", v.clone());
        forwarded.insert("x-anonymous-id", v);
    }
    let peer = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 1)));
    for hops in 0..3 {
        let _ = tollgate_server::http::client::client_ip(&forwarded, peer, hops);
    }
    let _ = tollgate_server::http::client::anonymous_id(&forwarded);
}

pub fn request_parsing(data: &[u8]) {
    inspect_any(data);
    parse_key_any(&String::from_utf8_lossy(data));
    bearer_any(data);
}
