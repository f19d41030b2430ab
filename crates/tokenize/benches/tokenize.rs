//! Token counting of a 1 KB prompt with the shared BPE encoders: what the proxy pays
//! to reserve input tokens before forwarding (and to count a stream that reported no
//! usage). The one-time encoder load is printed, not benchmarked.
//!
//! `cargo bench -p tollgate-tokenize --bench tokenize`

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_tokenize::{self as tokenize, count_chat_prompt, count_text, estimate_output_tokens};

/// About 1 KB of ordinary English prose.
fn prose(len: usize) -> String {
    const TEXT: &str = "The quarterly report shows that revenue grew by twelve percent, driven mostly by \
        subscriptions in Europe and a strong holiday season. Costs rose less than expected, although \
        shipping prices remain volatile. Please summarise the main risks for next year, list three \
        actions the team should take, and explain each one in two sentences. ";
    TEXT.chars().cycle().take(len).collect()
}

fn chat_body(content: &str) -> Vec<u8> {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "You are a concise analyst."},
            {"role": "user", "content": content},
        ],
    })
    .to_string()
    .into_bytes()
}

fn tokenize_benches(c: &mut Criterion) {
    let started = Instant::now();
    tokenize::preload();
    eprintln!(
        "tokenize: loading o200k_base and cl100k_base took {:.0} ms (once per process)",
        started.elapsed().as_secs_f64() * 1e3
    );

    let text = prose(1024);
    let body = chat_body(&text);
    let mut group = c.benchmark_group("tokenize 1 KB");
    group.throughput(Throughput::Bytes(text.len() as u64));
    for model in ["gpt-4o-mini", "gpt-3.5-turbo"] {
        group.bench_with_input(BenchmarkId::new("count_text", model), &text, |b, text| {
            b.iter(|| count_text(model, black_box(text)))
        });
    }
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_with_input(BenchmarkId::new("count_chat_prompt (whole body)", "gpt-4o-mini"), &body, |b, body| {
        b.iter(|| count_chat_prompt("gpt-4o-mini", black_box(body)))
    });
    group.bench_with_input(BenchmarkId::new("estimate_output_tokens (whole body)", body.len()), &body, |b, body| {
        b.iter(|| estimate_output_tokens(black_box(body)))
    });
    group.finish();
}

criterion_group!(benches, tokenize_benches);
criterion_main!(benches);
