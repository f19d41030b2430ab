//! One limiter decision covering a realistic plan (eight limits: requests per minute,
//! hour, day and month, tokens per minute and day, cost per day and month), as the
//! proxy and the verify endpoint make it on every request.
//!
//! - `reserve, hold=false`: the verify endpoint's decision (check all, charge all).
//! - `reserve + settle, hold=true`: the proxy's pair (reserve before forwarding,
//!   settle to the reported usage afterwards).
//! - the same with 10 and 100,000 active subjects (keys with live counters), to see
//!   what a bigger counter map costs.
//!
//! `cargo bench -p tollgate-store-embedded --bench limiter`

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tollgate_core::Amounts;
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest};
use tollgate_store_embedded::EmbeddedLimiter;

use common::{NOW_MS, items_for, plan_of_eight, ready};

fn reserve_request<'a>(items: &'a [LimitItem], id: &'a str, now_ms: i64, hold: bool) -> ReserveRequest<'a> {
    ReserveRequest {
        partition: "bench",
        request_id: id,
        items,
        amounts: Amounts::ONE_REQUEST,
        now_ms,
        hold,
        hold_ms: tollgate_store::DEFAULT_RESERVATION_TTL_MS,
    }
}

/// What a chat completion reports back: one request, 10 + 20 tokens, some cost.
const ACTUAL: Amounts = Amounts { requests: 1, input_tokens: 10, output_tokens: 20, cost_micros: 45 };

/// Subjects with live counters, all on the eight-limit plan.
fn subjects(limiter: &EmbeddedLimiter, n: usize) -> Vec<Vec<LimitItem>> {
    let plan = plan_of_eight();
    (0..n)
        .map(|i| {
            let items = items_for(&format!("k{i:011}"), &plan);
            ready(limiter.apply("bench", &items, ACTUAL, NOW_MS)).expect("apply");
            items
        })
        .collect()
}

fn limiter_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter (8 limits)");
    for active in [1usize, 10, 100_000] {
        let limiter = EmbeddedLimiter::new();
        let keys = subjects(&limiter, active);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("reserve, hold=false", active), &active, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                // Time moves a millisecond every 1,000 decisions, so bucket rotation is
                // paid at a realistic rate.
                let now = NOW_MS + (i / 1_000) as i64;
                let items = &keys[i % keys.len()];
                let decision = ready(limiter.reserve(reserve_request(items, "verify", now, false))).expect("reserve");
                debug_assert!(decision.allowed());
                black_box(decision)
            })
        });
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::new("reserve + settle, hold=true", active), &active, |b, _| {
            b.iter(|| {
                i = i.wrapping_add(1);
                let now = NOW_MS + (i / 1_000) as i64;
                let items = &keys[i % keys.len()];
                let decision = ready(limiter.reserve(reserve_request(items, "req", now, true))).expect("reserve");
                let settle = SettleRequest { partition: "bench", request_id: "req", actual: ACTUAL, now_ms: now };
                ready(limiter.settle(settle)).expect("settle");
                black_box(decision)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, limiter_benches);
criterion_main!(benches);
