use super::*;

const HEAD: &str = r#""id":"chatcmpl-AbC123","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1""#;

fn content_event(content: &str) -> String {
    format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n",
        serde_json::to_string(content).unwrap_or_default()
    )
}

fn usage_event() -> String {
    format!(
        "data: {{{HEAD},\"choices\":[],\"usage\":{{\"prompt_tokens\":19,\"completion_tokens\":5,\"total_tokens\":24,\"prompt_tokens_details\":{{\"cached_tokens\":3,\"audio_tokens\":0}},\"completion_tokens_details\":{{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}},\"obfuscation\":\"xY\"}}\n\n"
    )
}

/// A realistic stream: role chunk, content chunks (one with escapes), finish chunk,
/// usage chunk, [DONE]. Returns the stream and the byte range of its usage event.
fn realistic_stream() -> (String, std::ops::Range<usize>) {
    let mut s = String::new();
    s.push_str(&format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
    ));
    s.push_str(&content_event("Hello"));
    s.push_str(&content_event(" there"));
    s.push_str(&content_event("! \"quoted\"\nline é 🦀"));
    s.push_str(&format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n"
    ));
    let start = s.len();
    s.push_str(&usage_event());
    let end = s.len();
    s.push_str("data: [DONE]\n\n");
    (s, start..end)
}

const TEXT: &str = "Hello there! \"quoted\"\nline é 🦀";
const USAGE: TokenUsage = TokenUsage { prompt_tokens: 19, completion_tokens: 5, total_tokens: 24, cached_tokens: 3 };

/// Feeds `chunks`, checking after each one that nothing complete was delayed and
/// that the output is a prefix of `expected`; returns the output and the summary.
fn run(
    input: &[u8],
    cuts: &[usize],
    strip: bool,
    expected: &[u8],
    events: &[(usize, usize)],
) -> (Vec<u8>, StreamSummary) {
    let mut rewriter = SseRewriter::new(strip);
    let mut out = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&input.len())) {
        let chunk = Bytes::copy_from_slice(&input[from..to]);
        let forwarded = rewriter.process(chunk.clone());
        if !strip {
            assert_eq!(forwarded.as_ptr(), chunk.as_ptr(), "pass-through is zero-copy");
        }
        out.extend_from_slice(&forwarded);
        from = to;
        assert!(expected.starts_with(&out), "output is not a prefix of the expected stream (cuts {cuts:?})");
        // Every event complete in the input so far is in the output (minus what is cut).
        let complete_end = events.iter().filter(|(_, end)| *end <= to).map(|(_, end)| *end).max().unwrap_or(0);
        let removed: usize =
            events_removed(input, events, strip).iter().filter(|(_, e)| *e <= complete_end).map(|(s, e)| e - s).sum();
        assert!(out.len() >= complete_end - removed, "a complete event was held back (cuts {cuts:?}, at {to})");
    }
    out.extend_from_slice(&rewriter.flush());
    (out, rewriter.finish())
}

/// The usage-only events among `events` (when stripping), as byte ranges.
fn events_removed(input: &[u8], events: &[(usize, usize)], strip: bool) -> Vec<(usize, usize)> {
    if !strip {
        return Vec::new();
    }
    events
        .iter()
        .copied()
        .filter(|(s, e)| {
            let text = std::str::from_utf8(&input[*s..*e]).unwrap_or("");
            text.contains("\"choices\":[]") && text.contains("\"usage\":{")
        })
        .collect()
}

/// Event byte ranges of a stream whose events end with `sep` twice.
fn event_ranges(input: &str, sep: &str) -> Vec<(usize, usize)> {
    let blank = format!("{sep}{sep}");
    let mut ranges = Vec::new();
    let mut start = 0;
    while let Some(at) = input[start..].find(&blank) {
        let end = start + at + blank.len();
        ranges.push((start, end));
        start = end;
    }
    ranges
}

fn without(input: &str, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut v = input.as_bytes()[..range.start].to_vec();
    v.extend_from_slice(&input.as_bytes()[range.end..]);
    v
}

fn expected_summary(stripped: u32) -> StreamSummary {
    StreamSummary {
        usage: Some(USAGE),
        completion_text: TEXT.to_owned(),
        saw_done: true,
        error: None,
        stripped_events: stripped,
        model: Some("gpt-4o-mini-2024-07-18".to_owned()),
    }
}

fn check_all_splits(stream: &str, usage_range: std::ops::Range<usize>, sep: &str) {
    let events = event_ranges(stream, sep);
    let input = stream.as_bytes();
    let stripped = without(stream, usage_range);
    let n = input.len();
    let mut splits: Vec<Vec<usize>> = (0..=n).map(|i| vec![i]).collect();
    splits.push((1..n).collect()); // one byte at a time
    for i in (0..n).step_by(7) {
        for j in (i..n).step_by(29) {
            splits.push(vec![i, j]);
        }
    }
    for cuts in &splits {
        let (out, summary) = run(input, cuts, false, input, &events);
        assert_eq!(out, input, "pass-through changed the stream (cuts {cuts:?})");
        assert_eq!(summary, expected_summary(0), "cuts {cuts:?}");
        let (out, summary) = run(input, cuts, true, &stripped, &events);
        assert_eq!(out, stripped, "stripping must remove exactly the usage event (cuts {cuts:?})");
        assert_eq!(summary, expected_summary(1), "cuts {cuts:?}");
    }
}

#[test]
fn every_chunk_boundary_gives_the_same_summary_and_strips_exactly_the_usage_event() {
    let (stream, usage) = realistic_stream();
    check_all_splits(&stream, usage, "\n");
}

#[test]
fn crlf_line_endings_split_anywhere() {
    let (stream, usage) = realistic_stream();
    // The usage event's range in the CRLF stream: each "\n" before and in it doubles.
    let before = stream[..usage.start].matches('\n').count();
    let inside = stream[usage.clone()].matches('\n').count();
    // (Newlines inside the content are escaped in JSON: every raw '\n' ends a line.)
    let crlf = stream.replace('\n', "\r\n");
    let range = (usage.start + before)..(usage.end + before + inside);
    assert!(crlf[range.clone()].starts_with("data: {") && crlf[range.clone()].ends_with("\r\n\r\n"));
    check_all_splits(&crlf, range, "\r\n");
}

#[test]
fn bare_cr_line_endings_split_anywhere() {
    let (stream, usage) = realistic_stream();
    let cr = stream.replace('\n', "\r");
    check_all_splits(&cr, usage, "\r");
}

#[test]
fn a_stream_without_usage_passes_untouched_and_keeps_its_text() {
    let (stream, usage) = realistic_stream();
    let no_usage = without(&stream, usage);
    for strip in [false, true] {
        let mut rewriter = SseRewriter::new(strip);
        let mut out = Vec::new();
        for part in no_usage.chunks(50) {
            out.extend_from_slice(&rewriter.process(Bytes::copy_from_slice(part)));
        }
        out.extend_from_slice(&rewriter.flush());
        assert_eq!(out, no_usage);
        let summary = rewriter.finish();
        assert_eq!(summary.usage, None);
        assert_eq!(summary.completion_text, TEXT);
        assert!(summary.saw_done);
        assert_eq!(summary.stripped_events, 0);
    }
}

#[test]
fn complete_chunks_pass_through_without_a_copy_when_stripping() {
    let mut rewriter = SseRewriter::new(true);
    let chunk = Bytes::from(content_event("Hi"));
    let out = rewriter.process(chunk.clone());
    assert_eq!((out.as_ptr(), out.len()), (chunk.as_ptr(), chunk.len()));
    // An unfinished event that already shows non-empty choices is not held either.
    let event = content_event("Hi");
    let half = Bytes::copy_from_slice(&event.as_bytes()[..event.len() - 20]);
    let out = rewriter.process(half.clone());
    assert_eq!((out.as_ptr(), out.len()), (half.as_ptr(), half.len()));
    // But one that might still be the usage chunk is held until it ends.
    let mut rewriter = SseRewriter::new(true);
    let early = Bytes::copy_from_slice(&event.as_bytes()[..30]);
    assert!(rewriter.process(early).is_empty());
    let rest = rewriter.process(Bytes::copy_from_slice(&event.as_bytes()[30..]));
    assert_eq!(rest, event.as_bytes());
    assert_eq!(rewriter.finish().completion_text, "Hi");
}

#[test]
fn a_stream_cut_mid_event_counts_only_complete_events() {
    let (stream, _) = realistic_stream();
    let events = event_ranges(&stream, "\n");
    // Cut inside the fourth event (the third content chunk).
    let (start, end) = events[3];
    for cut in [start + 3, start + 40, (start + end) / 2, end - 1] {
        for strip in [false, true] {
            let mut rewriter = SseRewriter::new(strip);
            let out = rewriter.process(Bytes::copy_from_slice(&stream.as_bytes()[..cut]));
            let mut all = out.to_vec();
            all.extend_from_slice(&rewriter.flush());
            assert_eq!(all, stream.as_bytes()[..cut], "everything the upstream sent reaches the client");
            assert!(out.len() >= start, "complete events are not held");
            let summary = rewriter.finish();
            assert_eq!(summary.completion_text, "Hello there", "cut at {cut}");
            assert_eq!(summary.usage, None);
            assert!(!summary.saw_done);
        }
    }
}

#[test]
fn an_unterminated_final_usage_event_is_still_read_and_stripped() {
    let (stream, usage) = realistic_stream();
    // The upstream ends right after the usage JSON, without the blank line.
    let cut = usage.end - 2;
    let mut rewriter = SseRewriter::new(true);
    let mut out = rewriter.process(Bytes::copy_from_slice(&stream.as_bytes()[..cut])).to_vec();
    out.extend_from_slice(&rewriter.flush());
    assert_eq!(out, stream.as_bytes()[..usage.start]);
    let summary = rewriter.finish();
    assert_eq!(summary.usage, Some(USAGE));
    assert_eq!(summary.stripped_events, 1);
}

#[test]
fn usage_nulls_and_client_requested_usage_pass_through() {
    // The client asked for include_usage: nothing is stripped, usage is still read.
    let (stream, _) = realistic_stream();
    let mut rewriter = SseRewriter::new(false);
    let out = rewriter.process(Bytes::from(stream.clone()));
    assert_eq!(out, stream.as_bytes());
    assert_eq!(rewriter.finish(), expected_summary(0));
}

#[test]
fn usage_on_a_chunk_with_choices_is_read_but_never_stripped() {
    let event = format!(
        "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":1,\"total_tokens\":5}}}}\n\n"
    );
    let mut rewriter = SseRewriter::new(true);
    assert_eq!(rewriter.process(Bytes::from(event.clone())), event.as_bytes());
    let summary = rewriter.finish();
    assert_eq!(summary.usage.map(|u| u.total_tokens), Some(5));
    assert_eq!(summary.completion_text, "Hi");
    assert_eq!(summary.stripped_events, 0);
}

#[test]
fn an_error_event_is_reported_and_does_not_stop_the_scan() {
    let stream = format!(
        "{}data: {{\"error\":{{\"message\":\"The server had an error while processing your request.\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\n{}data: not json at all\n\ndata: [DONE]\n\n",
        content_event("Hel"),
        content_event("lo")
    );
    for strip in [false, true] {
        let mut rewriter = SseRewriter::new(strip);
        let mut out = Vec::new();
        for part in stream.as_bytes().chunks(17) {
            out.extend_from_slice(&rewriter.process(Bytes::copy_from_slice(part)));
        }
        assert_eq!(out, stream.as_bytes());
        let summary = rewriter.finish();
        assert_eq!(summary.error.as_deref(), Some("The server had an error while processing your request."));
        assert_eq!(summary.completion_text, "Hello");
        assert!(summary.saw_done);
        assert_eq!(summary.usage, None);
    }
    let mut rewriter = SseRewriter::new(false);
    rewriter.process(Bytes::from_static(b"data: {\"error\":\"overloaded\"}\n\n"));
    assert_eq!(rewriter.finish().error.as_deref(), Some("overloaded"));
}

#[test]
fn completions_text_tool_calls_comments_and_multiline_data() {
    let stream = concat!(
        ": keep-alive\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"Once\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\n",
        "event: message\nid: 7\ndata: {\"choices\":[{\"index\":0,\n",
        "data: \"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]}}]}\n\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]}}]}\n\n",
        "data:{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":7,\"total_tokens\":17}}\n\n",
        ": done\n\n",
        "data: [DONE]\n\n",
    );
    let usage_start = stream.find("data: {\"choices\":[],").unwrap_or(0);
    let usage_end = usage_start + stream[usage_start..].find("\n\n").unwrap_or(0) + 2;
    let expected = without(stream, usage_start..usage_end);
    let events = event_ranges(stream, "\n");
    for i in 0..=stream.len() {
        let (out, summary) = run(stream.as_bytes(), &[i], true, &expected, &events);
        assert_eq!(out, expected, "split at {i}");
        assert_eq!(summary.completion_text, "Onceget_weather{\"city\":\"Paris\"}");
        assert_eq!(summary.usage.map(|u| (u.prompt_tokens, u.completion_tokens, u.cached_tokens)), Some((10, 7, 0)));
        assert!(summary.saw_done);
    }
}

#[test]
fn odd_field_types_do_not_lose_the_chunk() {
    // A provider sending a non-string `reasoning_content` and a malformed usage block
    // still has its content read.
    let event = b"data: {\"choices\":[{\"delta\":{\"content\":\"ok\",\"reasoning_content\":{\"x\":[1,2]}}}],\"usage\":{\"prompt_tokens\":-1}}\n\n";
    let mut rewriter = SseRewriter::new(true);
    assert_eq!(rewriter.process(Bytes::from_static(event)), &event[..]);
    let summary = rewriter.finish();
    assert_eq!(summary.completion_text, "ok");
    assert_eq!(summary.usage, None);
}

#[test]
fn nonempty_choices_detection() {
    assert!(shows_nonempty_choices(br#"data: {"id":"x","choices":[{"index":0"#));
    assert!(shows_nonempty_choices(br#"{"choices" : [ {"#));
    assert!(!shows_nonempty_choices(br#"{"choices":[]"#));
    assert!(!shows_nonempty_choices(br#"{"choices":["#));
    assert!(!shows_nonempty_choices(br#"{"choices""#));
    // Inside a string the quotes are escaped, so content cannot fake the pattern.
    assert!(!shows_nonempty_choices(br#"{"content":"\"choices\":[1]"}"#));
    assert!(!shows_nonempty_choices(br#"{"id":"x","model":"m"#));
}

// ---- request_with_include_usage ----

fn rewrite(body: &str) -> Option<(String, bool)> {
    request_with_include_usage(&Bytes::copy_from_slice(body.as_bytes()))
        .map(|(b, asked)| (String::from_utf8(b.to_vec()).unwrap_or_default(), asked))
}

fn include_usage_of(body: &str) -> Option<bool> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v.get("stream_options")?.get("include_usage")?.as_bool()
}

#[test]
fn include_usage_is_inserted_keeping_the_rest_byte_for_byte() {
    let body =
        r#"{"model":"gpt-4o",  "stream":true, "messages":[{"role":"user","content":"Hi \u00e9"}], "temperature":0.70}"#;
    let (out, asked) = rewrite(body).unwrap_or_default();
    assert!(!asked);
    assert_eq!(out, format!("{{\"stream_options\":{{\"include_usage\":true}},{}", &body[1..]));
    assert_eq!(include_usage_of(&out), Some(true));
    let padded = format!("\n  {body}");
    let (out, _) = rewrite(&padded).unwrap_or_default();
    assert!(out.starts_with("\n  {\"stream_options\":{\"include_usage\":true},\"model\""));
}

#[test]
fn existing_stream_options_are_respected_or_completed() {
    // The client asked: the very same bytes, no copy.
    let body = Bytes::from_static(br#"{"stream":true,"stream_options":{"include_usage":true},"model":"m"}"#);
    let (out, asked) = request_with_include_usage(&body).unwrap_or_default();
    assert!(asked);
    assert_eq!(out.as_ptr(), body.as_ptr());

    let (out, asked) =
        rewrite(r#"{"model":"m","stream_options":{"include_usage":false,"x":1},"stream":true}"#).unwrap_or_default();
    assert!(!asked);
    assert_eq!(out, r#"{"model":"m","stream_options":{"include_usage":true,"x":1},"stream":true}"#);

    let (out, asked) = rewrite(r#"{"model":"m","stream_options":null,"stream":true}"#).unwrap_or_default();
    assert!(!asked);
    assert_eq!(out, r#"{"model":"m","stream_options":{"include_usage":true},"stream":true}"#);

    let (out, _) = rewrite(r#"{"model":"m","stream_options": {} ,"stream":true}"#).unwrap_or_default();
    assert_eq!(out, r#"{"model":"m","stream_options": {"include_usage":true} ,"stream":true}"#);

    // A stream_options of the wrong type is left for the upstream to refuse.
    let body = r#"{"model":"m","stream_options":"yes","stream":true}"#;
    assert_eq!(rewrite(body), Some((body.to_owned(), false)));
}

#[test]
fn requests_that_do_not_stream_are_left_alone() {
    assert_eq!(rewrite(r#"{"model":"m","messages":[]}"#), None);
    assert_eq!(rewrite(r#"{"model":"m","stream":false}"#), None);
    assert_eq!(rewrite(r#"{"model":"m","stream":"true"}"#), None);
    assert_eq!(rewrite(r#"[true]"#), None);
    assert_eq!(rewrite("not json"), None);
}

#[test]
fn each_dialect_ends_a_cut_stream_with_an_error_event_its_clients_read() {
    let data = |event: &Bytes| -> serde_json::Value {
        let text = std::str::from_utf8(event).expect("utf-8");
        let line = text.lines().find_map(|l| l.strip_prefix("data: ")).expect("data line");
        serde_json::from_str(line).expect("json")
    };
    let openai = Dialect::OpenAi.error_event("upstream_error", "upstream_stream_broken", "cut");
    assert!(openai.starts_with(b"data: "), "no event name: OpenAI SDKs read the error object");
    assert_eq!(data(&openai)["error"]["code"], "upstream_stream_broken");
    let anthropic = Dialect::Anthropic.error_event("api_error", "usage_not_recorded", "not recorded");
    assert!(anthropic.starts_with(b"event: error\n"));
    let v = data(&anthropic);
    assert_eq!((v["type"].as_str(), v["error"]["type"].as_str()), (Some("error"), Some("api_error")));
    assert_eq!(v["error"]["code"], "usage_not_recorded");
    let responses = Dialect::Responses.error_event("upstream_error", "request_timeout", "late");
    assert!(responses.starts_with(b"event: error\n"));
    let v = data(&responses);
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["message"].as_str()),
        (Some("error"), Some("request_timeout"), Some("late"))
    );
    assert_eq!(v["error"]["code"], "request_timeout");
}

#[test]
fn the_clean_end_of_an_openai_stream_is_still_its_trailing_done() {
    let stream = Bytes::from_static(b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n");
    let (before, end) = Dialect::OpenAi.split_clean_end(&stream).expect("[DONE]");
    assert_eq!((&before[..], &end[..]), (&b"data: {\"choices\":[]}\n\n"[..], &b"data: [DONE]\n\n"[..]));
    assert!(Dialect::OpenAi.split_clean_end(&Bytes::from_static(b"data: x [DONE]")).is_none());
    assert!(Dialect::Anthropic.split_clean_end(&Bytes::from_static(b"data: event: message_stop")).is_none());
}
