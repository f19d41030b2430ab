// The checks of the `request_parsing` fuzz target, shared with the test suite
// (`include!`d by fuzz/fuzz_targets/request_parsing.rs and by
// crates/server/tests/gateway/parsing.rs), so both run the same assertions. `http` is
// the `http` crate (the test suite names axum's re-export so).

/// Request inspection on every endpoint: a 400 that says what is wrong, or a request
/// whose fields are within bounds. Never a panic, never another status.
pub fn inspect_any(data: &[u8]) {
    use tollgate_providers::{Endpoint, RequestView};
    for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions, Endpoint::Embeddings] {
        match RequestView::parse(endpoint, data) {
            Ok(info) => {
                assert!(serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(), "accepted a body that is not JSON");
                assert!(!info.model.trim().is_empty() && info.model.len() <= 256, "model {:?}", info.model);
                assert!(info.max_output_tokens.is_none_or(|n| (1..=10_000_000).contains(&n)));
                assert!(!(info.stream && endpoint == Endpoint::Embeddings), "embeddings do not stream");
            }
            Err(e) => {
                let e = tollgate_server::http::error::ApiError::from(tollgate_gateway::GatewayError::from(e));
                assert_eq!(e.status().as_u16(), 400, "{endpoint:?}: {e}");
                assert!(!e.to_string().is_empty());
            }
        }
    }
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
