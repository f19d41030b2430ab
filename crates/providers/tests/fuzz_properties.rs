//! The `sse_usage` fuzz target's checks (fuzz/harness/sse_usage.rs), run in the test
//! command on generated inputs: arbitrary bytes, SSE-shaped byte soup built from the
//! pieces real streams are made of, and realistic streams cut at arbitrary points.
//! cargo-fuzz needs a nightly toolchain; these need nothing (docs/testing.md).
//!
//! Case counts are fixed and small (`ProptestConfig::cases`) so this runs in a couple
//! of seconds in a debug build; `PROPTEST_CASES=20000` searches longer.

mod harness {
    include!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/harness/sse_usage.rs"));
}

use proptest::prelude::*;
use tollgate_providers::TokenUsage;

use harness::{rewrite_in_chunks, sse_usage};

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// The pieces SSE streams and their JSON are made of, for inputs that reach deep
/// into the parser instead of failing on the first byte.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"data: ",
        b"data:",
        b"data",
        b"event: message",
        b": ping",
        b"id: 7",
        b"retry: 10",
        b"\n",
        b"\r\n",
        b"\r",
        b"\n\n",
        b"[DONE]",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b"\"",
        b"\\",
        b"null",
        br#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":3,"total_tokens":8}}"#,
        br#"{"choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}"#,
        br#"{"choices":[{"text":"yo"}]}"#,
        br#"{"error":{"message":"boom"}}"#,
        br#""choices":[]"#,
        br#""choices": [ {"#,
        br#""usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":1}}"#,
        br#""usage":{"prompt_tokens":-1}"#,
        br#""delta":{"content":null,"tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}"#,
        br#""stream":true"#,
        br#""stream_options":null"#,
        br#""stream_options":{"include_usage":false}"#,
        "é🦀".as_bytes(),
        b"\xff\xfe",
    ];
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ]
}

fn soup() -> impl Strategy<Value = Vec<u8>> {
    (any::<[u8; 3]>(), prop::collection::vec(piece(), 0..40)).prop_map(|(head, pieces)| {
        let mut data = head.to_vec();
        for p in pieces {
            data.extend_from_slice(&p);
        }
        data
    })
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        sse_usage(&data);
    }

    #[test]
    fn sse_shaped_bytes(data in soup()) {
        sse_usage(&data);
    }
}

const HEAD: &str = r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini""#;

/// A realistic stream with these contents and line ending: content events, maybe a
/// usage-only event, `[DONE]`. Returns it and the usage event's byte range.
fn stream(contents: &[String], usage: Option<TokenUsage>, eol: &str) -> (String, std::ops::Range<usize>) {
    let mut s = String::new();
    for content in contents {
        let content = serde_json::to_string(content).unwrap_or_default();
        s.push_str(&format!(
            "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{content}}},\"finish_reason\":null}}],\"usage\":null}}{eol}{eol}"
        ));
    }
    let start = s.len();
    if let Some(u) = usage {
        s.push_str(&format!(
            "data: {{{HEAD},\"choices\":[],\"usage\":{{\"prompt_tokens\":{},\"completion_tokens\":{},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{}}}}}}}{eol}{eol}",
            u.prompt_tokens, u.completion_tokens, u.total_tokens, u.cached_tokens
        ));
    }
    let end = s.len();
    s.push_str(&format!("data: [DONE]{eol}{eol}"));
    (s, start..end)
}

fn usage() -> impl Strategy<Value = TokenUsage> {
    (0u64..100_000, 0u64..100_000, 0u64..1_000).prop_map(|(p, c, cached)| TokenUsage {
        prompt_tokens: p,
        completion_tokens: c,
        total_tokens: p + c,
        cached_tokens: cached,
    })
}

proptest! {
    #![proptest_config(config(300))]

    /// Wherever the network cuts a real stream, the client sees every byte but the
    /// usage chunk tollgate asked for (and all of them when it does not strip), and the
    /// summary has the upstream's usage and every delivered character.
    #[test]
    fn a_real_stream_cut_anywhere_loses_exactly_the_usage_chunk(
        contents in prop::collection::vec("(\\PC|[\"\\\\\n\r])*", 0..6),
        usage in prop::option::of(usage()),
        eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        cut_fractions in prop::collection::vec(0.0f64..=1.0, 0..6),
    ) {
        let (text, usage_range) = stream(&contents, usage, eol);
        let body = text.as_bytes();
        let mut cuts: Vec<usize> = cut_fractions.iter().map(|f| (f * body.len() as f64) as usize).collect();
        cuts.sort_unstable();

        let (out, summary) = rewrite_in_chunks(body, &cuts, true);
        let mut expected = body[..usage_range.start].to_vec();
        expected.extend_from_slice(&body[usage_range.end..]);
        prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected));
        prop_assert_eq!(summary.usage, usage);
        prop_assert_eq!(&summary.completion_text, &contents.concat());
        prop_assert!(summary.saw_done);
        prop_assert_eq!(summary.stripped_events, u32::from(usage.is_some()));

        let (out, summary) = rewrite_in_chunks(body, &cuts, false);
        prop_assert_eq!(out.as_slice(), body);
        prop_assert_eq!(summary.usage, usage);
        prop_assert_eq!(summary.stripped_events, 0);
    }
}
