//! The first step of every authenticated request: format and checksum of the presented
//! key (no store), then its SHA-256, which is what the catalog is looked up by.
//!
//! `cargo bench -p tollgate-core --bench key`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tollgate_core::key::RANDOM_BYTES;
use tollgate_core::{ApiKey, KeyHash};

fn sample_key() -> String {
    let random: Vec<u8> = (0..RANDOM_BYTES).map(|i| (i as u8).wrapping_mul(151).wrapping_add(7)).collect();
    ApiKey::generate(&random).expect("enough random bytes").expose().to_owned()
}

fn key_benches(c: &mut Criterion) {
    let key = sample_key();
    // Same length and alphabet, one character changed: fails only at the checksum.
    let mut typo = key.clone().into_bytes();
    let last = typo.len() - 1;
    typo[last] = if typo[last] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).expect("ascii");

    let mut group = c.benchmark_group("key");
    group.bench_function("parse (format + CRC-32 checksum)", |b| b.iter(|| ApiKey::parse(black_box(&key))));
    group.bench_function("hash (SHA-256)", |b| b.iter(|| KeyHash::of(black_box(&key))));
    group.bench_function("parse + hash (all auth work before the lookup)", |b| {
        b.iter(|| ApiKey::parse(black_box(&key)).map(|k| k.hash()))
    });
    group.bench_function("parse, bad checksum (refused without a lookup)", |b| {
        b.iter(|| ApiKey::parse(black_box(&typo)).is_err())
    });
    group.finish();
}

criterion_group!(benches, key_benches);
criterion_main!(benches);
