// The checks of the `sse_usage` fuzz target, shared with the test suite
// (`include!`d by fuzz/fuzz_targets/sse_usage.rs and by
// crates/providers/tests/fuzz_properties.rs), so both run the same assertions.
//
// Input layout: byte 0 holds flags, bytes 1 and 2 choose two cut points (as fractions
// of the rest), the rest is the upstream body.

/// Feeds `body` to an `SseRewriter` in `chunks`, returns what the client got and the
/// summary.
pub fn rewrite_in_chunks(body: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, tollgate_providers::StreamSummary) {
    let body = bytes::Bytes::copy_from_slice(body);
    let mut rewriter = tollgate_providers::SseRewriter::new(strip);
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&body.len())) {
        let cut = cut.clamp(from, body.len());
        out.extend_from_slice(&rewriter.process(body.slice(from..cut)));
        from = cut;
    }
    out.extend_from_slice(&rewriter.flush());
    (out, rewriter.finish())
}

/// True when `small` can be had by deleting bytes from `big`.
pub fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut rest = big.iter();
    small.iter().all(|b| rest.any(|c| c == b))
}

pub fn sse_usage(data: &[u8]) {
    let Some((&[flags, a, b], body)) = data.split_first_chunk::<3>() else {
        return;
    };
    let at = |x: u8| body.len() * usize::from(x) / 255;
    let mut cuts = [at(a), at(b)];
    cuts.sort_unstable();

    // Without stripping, the client gets exactly the upstream's bytes, however cut.
    let (whole_out, whole) = rewrite_in_chunks(body, &[], false);
    assert_eq!(whole_out, body, "pass-through changed the bytes");
    let (cut_out, cut) = rewrite_in_chunks(body, &cuts, false);
    assert_eq!(cut_out, body, "pass-through changed the bytes when cut at {cuts:?}");
    // What a stream delivered does not depend on where the network cut it.
    assert_eq!(cut.usage, whole.usage, "usage depends on the cuts {cuts:?}");
    assert_eq!(cut.completion_text, whole.completion_text, "text depends on the cuts {cuts:?}");
    assert_eq!(cut.saw_done, whole.saw_done);
    assert_eq!(cut.error, whole.error);
    assert_eq!(cut.stripped_events, 0);

    // Stripping only ever removes bytes, and reads the same usage and text.
    let (stripped_out, stripped) = rewrite_in_chunks(body, &cuts, true);
    assert!(stripped_out.len() <= body.len());
    assert!(is_subsequence(&stripped_out, body), "stripping added or reordered bytes");
    assert_eq!(stripped.usage, whole.usage);
    assert_eq!(stripped.completion_text, whole.completion_text);
    assert_eq!(stripped.saw_done, whole.saw_done);
    if stripped.stripped_events == 0 {
        assert_eq!(stripped_out, body, "nothing stripped but the bytes changed");
    }

    // A non-streamed body: the scanner finds the same usage as a whole-body parse,
    // and nothing beyond its bound.
    let max_len = if flags & 2 == 0 { usize::MAX } else { usize::from(flags) };
    let body_bytes = bytes::Bytes::copy_from_slice(body);
    let mut scanner = tollgate_providers::UsageScanner::new(max_len);
    let mut from = 0;
    for cut in cuts.into_iter().chain(std::iter::once(body.len())) {
        scanner.observe(&body_bytes.slice(from..cut));
        from = cut;
    }
    let expected = if body.len() > max_len { None } else { tollgate_providers::usage::usage_from_json(body) };
    assert_eq!(scanner.finish(), expected);
    let _ = tollgate_providers::usage::checked_usage_from_json(body);

    // The request rewrite that asks for the usage chunk keeps the body valid JSON.
    if let Some((rewritten, client_asked)) = tollgate_providers::request_with_include_usage(&body_bytes) {
        let value: serde_json::Value = serde_json::from_slice(&rewritten).expect("the rewrite is JSON");
        assert_eq!(value["stream"], serde_json::Value::Bool(true));
        if client_asked {
            assert_eq!(rewritten, body_bytes, "a request that asked for usage is sent as it was");
        }
        let options = &value["stream_options"];
        assert!(
            options["include_usage"] == serde_json::Value::Bool(true) || !(options.is_object() || options.is_null()),
            "include_usage not set: {options}"
        );
    }
}
