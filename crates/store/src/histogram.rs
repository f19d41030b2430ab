//! A latency histogram made of atomics, for `/metrics`: observing is a short scan of
//! fixed bucket bounds and three relaxed atomic adds, with no lock and no allocation,
//! so it can sit on the request path. Buckets are kept per bucket (not cumulative) and
//! summed when rendered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in microseconds: 50 µs to 60 s, covering both
/// tollgate's own overhead (tens of microseconds) and an upstream's answer (seconds).
pub const BOUNDS_MICROS: [u64; 20] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 20_000_000, 30_000_000, 60_000_000,
];

/// Bucket bounds for token counts (OpenTelemetry's advice for
/// `gen_ai.client.token.usage`: powers of four from 1 to 4^13).
pub const BOUNDS_TOKENS: [u64; 14] =
    [1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216, 67_108_864];

/// See the module doc. `Default` is an empty latency histogram ([`BOUNDS_MICROS`]).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One count per bound, then one for everything above the last bound.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&BOUNDS_MICROS)
    }
}

/// A histogram read at one moment: cumulative counts per bound, as Prometheus wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in µs, observations at or below it)`, ascending.
    pub cumulative: Vec<(u64, u64)>,
    pub sum_micros: u64,
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn with_bounds(bounds: &'static [u64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: Duration) {
        self.observe_micros(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn observe_micros(&self, micros: u64) {
        let index = self.bounds.iter().position(|&b| micros <= b).unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observes a plain number (a token count) in a histogram made with
    /// [`BOUNDS_TOKENS`]: the sum then counts units, not microseconds.
    pub fn observe_value(&self, value: u64) {
        self.observe_micros(value);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = self
            .bounds
            .iter()
            .enumerate()
            .map(|(i, &bound)| {
                running += self.buckets[i].load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        let above = self.buckets[self.bounds.len()].load(Ordering::Relaxed);
        // The count is read after the buckets, so `+Inf` is never below a bucket even
        // when observations land while this runs.
        let count = self.count.load(Ordering::Relaxed).max(running + above);
        HistogramSnapshot { cumulative, sum_micros: self.sum_micros.load(Ordering::Relaxed), count }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them_and_counts_are_cumulative() {
        let h = Histogram::default();
        h.observe_micros(10);
        h.observe_micros(50);
        h.observe_micros(51);
        h.observe(Duration::from_secs(120));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.sum_micros, 10 + 50 + 51 + 120_000_000);
        assert_eq!(s.cumulative[0], (50, 2));
        assert_eq!(s.cumulative[1], (100, 3));
        assert_eq!(s.cumulative.last(), Some(&(60_000_000, 3)), "120 s is only in +Inf");
    }
}
