//! The one parse of a request body (`RequestView::parse`): model, stream flags, output
//! limits, `n`/`best_of`, the prompt's shape, checked before admission. A small chat
//! request and one with a 4 KB prompt (the target: a 4 KB prompt costs at most 3 µs
//! more than a small one on the whole path).
//!
//! `cargo bench -p tollgate-providers --bench request`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_providers::{Endpoint, RequestView};

fn chat(prompt_len: usize) -> Vec<u8> {
    let text: String =
        "The quarterly report shows that revenue grew by twelve percent. ".chars().cycle().take(prompt_len).collect();
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [
            { "role": "system", "content": "You are a helpful assistant." },
            { "role": "user", "content": text }
        ]
    }))
    .expect("json")
}

fn request_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("request view (one parse)");
    for prompt_len in [26usize, 4_096, 65_536] {
        let body = chat(prompt_len);
        assert!(RequestView::parse(Endpoint::ChatCompletions, &body).is_ok());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("chat", body.len()), &body, |b, body| {
            b.iter(|| RequestView::parse(Endpoint::ChatCompletions, black_box(body)).map(|v| v.prompts))
        });
    }
    group.finish();
}

criterion_group!(benches, request_benches);
criterion_main!(benches);
