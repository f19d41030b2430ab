//! Ledger write throughput: append N usage records (what the proxy does once per
//! request, a channel send) and flush (wait until the writer thread has committed them
//! all in batches). Criterion reports elements per second = rows per second.
//!
//! The store lives in the system temp dir (a real disk here, with `synchronous = FULL`
//! fsyncs per batch); set `TOLLGATE_BENCH_DIR` to measure elsewhere.
//!
//! `cargo bench -p tollgate-store-embedded --bench ledger`

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tollgate_core::{UsageRecord, UsageSource};
use tollgate_store::Ledger;
use tollgate_store_embedded::EmbeddedStore;

use common::NOW_MS;

fn record(n: u64) -> UsageRecord {
    UsageRecord {
        id: format!("req_{:016x}{n:012x}", 0x5eed_u64),
        ts_ms: NOW_MS + (n / 50) as i64,
        project_id: "bench".into(),
        key_id: format!("k{:011}", n % 1_000),
        endpoint: "chat.completions".into(),
        provider: "openai".into(),
        model: Some("gpt-4o-mini".into()),
        status: 200,
        counted: true,
        requests: 1,
        prompt_tokens: 10,
        completion_tokens: 20,
        cost_micros: 45,
        latency_ms: 3,
        usage_source: UsageSource::Reported,
        ..UsageRecord::default()
    }
}

fn ledger_benches(c: &mut Criterion) {
    let base = std::env::var("TOLLGATE_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(base).expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    let ledger = store.ledger();
    let mut next = 0u64;
    let mut group = c.benchmark_group("ledger");
    group.sample_size(10);
    // 1: a one-record commit (what each request costs the ledger writer at c=1).
    for n in [1u64, 10_000, 100_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("append + flush (rows)", n), &n, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Records are built outside the timed part: the proxy builds its
                    // record anyway; what is measured is the ledger's work.
                    let records: Vec<UsageRecord> = (next..next + n).map(record).collect();
                    next += n;
                    let started = Instant::now();
                    for r in records {
                        ledger.append(r);
                    }
                    runtime.block_on(ledger.flush()).expect("flush");
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
    runtime.block_on(store.close()).expect("close");
}

criterion_group!(benches, ledger_benches);
criterion_main!(benches);
