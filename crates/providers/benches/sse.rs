//! Usage extraction from a streamed answer, per SSE chunk: the `SseRewriter` scans
//! every chunk as it passes (and, when tollgate asked for the usage chunk on the
//! client's behalf, cuts it out). A typical stream is measured whole (role chunk, 50
//! content chunks, finish chunk, usage chunk, `[DONE]`), and criterion's element rate
//! is per event: time per chunk = 1 / rate.
//!
//! `cargo bench -p tollgate-providers --bench sse`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_providers::{SseRewriter, request_with_include_usage};

const CONTENT_CHUNKS: usize = 50;

fn event(choices: &str, usage: &str) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\
         \"created\":1741570283,\"model\":\"gpt-4o-mini-2024-07-18\",\"service_tier\":\"default\",\
         \"system_fingerprint\":\"fp_06737a9306\",\"choices\":{choices},\"usage\":{usage}}}\n\n"
    )
}

/// The events of one OpenAI chat stream with `include_usage`, one event per string.
fn stream_events() -> Vec<String> {
    let mut events = vec![event(
        r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#,
        "null",
    )];
    let words = ["The", " quarterly", " report", " shows", " growth", ",", " mostly", " in", " Europe", "."];
    for i in 0..CONTENT_CHUNKS {
        let choices = format!(
            r#"[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}]"#,
            words[i % words.len()]
        );
        events.push(event(&choices, "null"));
    }
    events.push(event(r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#, "null"));
    events.push(event(
        "[]",
        r#"{"prompt_tokens":19,"completion_tokens":50,"total_tokens":69,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
    ));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

fn run(chunks: &[Bytes], strip: bool) -> usize {
    let mut rewriter = SseRewriter::new(strip);
    let mut forwarded = 0;
    for chunk in chunks {
        forwarded += rewriter.process(chunk.clone()).len();
    }
    forwarded += rewriter.flush().len();
    let summary = rewriter.finish();
    debug_assert!(summary.usage.is_some());
    forwarded
}

fn sse_benches(c: &mut Criterion) {
    let events = stream_events();
    let whole: String = events.concat();
    // As the upstream sends them: one event per chunk.
    let per_event: Vec<Bytes> = events.iter().map(|e| Bytes::from(e.clone())).collect();
    // As a network may cut them: 100-byte pieces, events split anywhere.
    let cut: Vec<Bytes> = whole.as_bytes().chunks(100).map(Bytes::copy_from_slice).collect();

    let mut group = c.benchmark_group("sse stream (per event)");
    group.throughput(Throughput::Elements(events.len() as u64));
    for (name, chunks) in [("one event per chunk", &per_event), ("100-byte chunks", &cut)] {
        for strip in [false, true] {
            let id = format!("{name}, strip_usage_chunk={strip}");
            group.bench_with_input(BenchmarkId::new(id, events.len()), chunks, |b, chunks| {
                b.iter(|| run(black_box(chunks), strip))
            });
        }
    }
    group.finish();

    let request = Bytes::from_static(
        br#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello! How are you today?"}]}"#,
    );
    assert!(request_with_include_usage(&request).is_some());
    c.bench_function("request_with_include_usage (insert stream_options)", |b| {
        b.iter(|| request_with_include_usage(black_box(&request)))
    });
}

criterion_group!(benches, sse_benches);
criterion_main!(benches);
