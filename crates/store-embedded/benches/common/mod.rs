//! Helpers shared by the store benchmarks (included with `mod common;`).

#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tollgate_core::{LimitSpec, Metric, Window};
use tollgate_store::LimitItem;

/// Polls a future that completes without waiting (the embedded limiter and key index
/// never await) once, with no runtime: the measurement is the store's own work plus
/// the `async_trait` box the server pays too, and nothing of an executor.
pub fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked call waited; it is not in-memory any more"),
    }
}

/// A realistic plan of eight limits: requests over four windows, tokens over two and
/// cost over two. Limits are high enough never to refuse during a benchmark.
pub fn plan_of_eight() -> Vec<LimitSpec> {
    let high = u64::MAX / 4;
    vec![
        LimitSpec::new(Metric::Requests, Window::Minute, high),
        LimitSpec::new(Metric::Requests, Window::Hour, high),
        LimitSpec::new(Metric::Requests, Window::Day, high),
        LimitSpec::new(Metric::Requests, Window::Month, high),
        LimitSpec::new(Metric::TotalTokens, Window::Minute, high),
        LimitSpec::new(Metric::TotalTokens, Window::Day, high),
        LimitSpec::new(Metric::CostMicros, Window::Day, high),
        LimitSpec::new(Metric::CostMicros, Window::Month, high),
    ]
}

/// The limiter items of one key on that plan, as `Authed::limit_items` builds them.
pub fn items_for(key_id: &str, limits: &[LimitSpec]) -> Vec<LimitItem> {
    let subject: Arc<str> = Arc::from(format!("key:{key_id}"));
    limits.iter().map(|spec| LimitItem::new(subject.clone(), spec.clone())).collect()
}

/// Resident set size of this process in bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A small deterministic generator (xorshift64*) for key material and picks.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// 2026-01-15T12:00:00Z, away from any calendar edge.
pub const NOW_MS: i64 = 1_768_478_400_000;
