//! Key lookup from the embedded catalog's in-memory index (what every request does
//! after the checksum), with 1,000 and with 1,000,000 keys, and the memory the index
//! takes.
//!
//! Keys are created through the `Catalog` trait, as the admin API does. With a million
//! keys that is a million SQLite commits: the store goes to `/dev/shm` when it exists
//! (set `TOLLGATE_BENCH_DIR` to choose), and `TOLLGATE_BENCH_KEYS` changes the large
//! count (default 1,000,000). Creating them takes about a minute; filter with
//! `cargo bench -p tollgate-store-embedded --bench catalog -- 1000/` to skip it.
//!
//! Printed besides criterion's figures: the time to create the keys and the growth of
//! this process's resident set size (RSS) from before the store was opened to after the
//! keys were created (the index, plus SQLite's page cache of a few MB).

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate_core::key::RANDOM_BYTES;
use tollgate_core::{ApiKey, KeyHash, KeyRecord, Project};
use tollgate_store::Catalog;
use tollgate_store_embedded::EmbeddedStore;

use common::{NOW_MS, Rng, ready, rss_bytes};

/// Hashes kept for lookups (a sample: keeping all of them would inflate the RSS figure).
const SAMPLE: usize = 4_096;

struct Fixture {
    _dir: tempfile::TempDir,
    store: EmbeddedStore,
    hits: Vec<KeyHash>,
}

fn bench_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TOLLGATE_BENCH_DIR") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

fn build(n: usize, runtime: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
    let rss_before = rss_bytes();
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    let started = Instant::now();
    let mut hits = Vec::with_capacity(SAMPLE);
    runtime.block_on(async {
        let project = Project::new("bench", "bench", NOW_MS);
        store.create_project(project).await.expect("project");
        let mut rng = Rng::new(0x7011_6a7e ^ n as u64);
        let mut random = [0u8; RANDOM_BYTES];
        let stride = (n / SAMPLE).max(1);
        for i in 0..n {
            let key = loop {
                rng.fill(&mut random);
                if let Some(key) = ApiKey::generate(&random) {
                    break key;
                }
            };
            let record = KeyRecord {
                id: key.public_id().to_owned(),
                project_id: "bench".into(),
                name: None,
                plan: "pro".into(),
                metadata: serde_json::Map::new(),
                limit_overrides: Vec::new(),
                created_at_ms: NOW_MS,
                expires_at_ms: None,
                revoked_at_ms: None,
                version: 1,
            };
            let hash = key.hash();
            store.create_key(record, hash).await.expect("create key");
            if i % stride == 0 && hits.len() < SAMPLE {
                hits.push(hash);
            }
        }
    });
    let elapsed = started.elapsed();
    let grown = rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "catalog: created {n} keys through Catalog::create_key in {:.1} s ({:.0} keys/s); \
         RSS grew by {:.1} MB ({:.0} bytes per key); index holds {} secrets",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        grown as f64 / 1e6,
        grown as f64 / n as f64,
        store.catalog().indexed_secrets(),
    );
    Fixture { _dir: dir, store, hits }
}

fn lookup_benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let large: usize =
        std::env::var("TOLLGATE_BENCH_KEYS").ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(1_000_000);
    let mut group = c.benchmark_group("catalog lookup_key");
    for n in [1_000, large] {
        // Built lazily so a filter that skips the large case skips creating its keys.
        let mut fixture: Option<Arc<Fixture>> = None;
        let get =
            |fixture: &mut Option<Arc<Fixture>>| fixture.get_or_insert_with(|| Arc::new(build(n, &runtime))).clone();
        group.bench_function(BenchmarkId::new("hit", n), |b| {
            let f = get(&mut fixture);
            let mut i = 0usize;
            b.iter(|| {
                i = i.wrapping_add(1);
                let hash = &f.hits[i % f.hits.len()];
                let found = ready(f.store.lookup_key(black_box(hash), NOW_MS)).expect("lookup");
                debug_assert!(found.is_some());
                found
            })
        });
        group.bench_function(BenchmarkId::new("miss", n), |b| {
            let f = get(&mut fixture);
            let misses: Vec<KeyHash> = (0..SAMPLE).map(|i| KeyHash::of(&format!("tg_unknown_{i}"))).collect();
            let mut i = 0usize;
            b.iter(|| {
                i = i.wrapping_add(1);
                ready(f.store.lookup_key(black_box(&misses[i % misses.len()]), NOW_MS)).expect("lookup")
            })
        });
        if let Some(f) = fixture.take() {
            let store = f.store.clone();
            drop(f);
            runtime.block_on(store.close()).expect("close");
        }
    }
    group.finish();
}

criterion_group!(benches, lookup_benches);
criterion_main!(benches);
