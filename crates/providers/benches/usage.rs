//! Usage extraction from a non-streaming answer: the `UsageScanner` keeps the chunks as
//! they pass to the client and parses once at the end, skipping every field but
//! `usage`.
//!
//! `cargo bench -p tollgate-providers --bench usage`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_providers::UsageScanner;
use tollgate_providers::usage::usage_from_json;

/// A chat completion as OpenAI answers it, with `content` of about `content_len` bytes.
fn completion(content_len: usize) -> Vec<u8> {
    let content: String =
        "lorem ipsum dolor sit amet, \\\"quoted\\\" text. ".chars().cycle().take(content_len).collect();
    format!(
        r#"{{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_06737a9306"}}"#
    )
    .into_bytes()
}

fn usage_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage scanner (non-streaming)");
    for content_len in [40usize, 4_000, 64_000] {
        let body = completion(content_len);
        assert!(usage_from_json(&body).is_some(), "the sample body must carry usage");
        group.throughput(Throughput::Bytes(body.len() as u64));
        let one = Bytes::from(body.clone());
        group.bench_with_input(BenchmarkId::new("one chunk", body.len()), &one, |b, one| {
            b.iter(|| {
                let mut scanner = UsageScanner::new(8 << 20);
                scanner.observe(black_box(one));
                scanner.finish()
            })
        });
        // As hyper hands a larger body over: in pieces of up to 16 KB.
        let pieces: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
        if pieces.len() > 1 {
            group.bench_with_input(BenchmarkId::new("16 KB chunks", body.len()), &pieces, |b, pieces| {
                b.iter(|| {
                    let mut scanner = UsageScanner::new(8 << 20);
                    for p in pieces {
                        scanner.observe(black_box(p));
                    }
                    scanner.finish()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, usage_benches);
criterion_main!(benches);
