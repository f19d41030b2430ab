//! The fixed-bucket latency histogram of a rollup.
//!
//! Fixed bounds (not a sketch) so that histograms add by component: an hour's is
//! the sum of its requests', a day's the sum of its hours'. The bounds grow by about
//! 1.5-2x, so a percentile read from them is within one bucket of the truth; it is
//! interpolated linearly inside its bucket and never exceeds the observed maximum.

/// The upper bounds (inclusive, milliseconds) of every bucket but the last, which
/// holds everything slower.
pub const BOUNDS_MS: [u64; LATENCY_BUCKETS - 1] = [
    1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    20_000, 60_000,
];

/// Buckets per histogram (the stores keep one column each, `lat_0` ...).
pub const LATENCY_BUCKETS: usize = 24;

/// The bucket a latency falls in.
pub fn bucket_of(latency_ms: u64) -> usize {
    BOUNDS_MS.partition_point(|&bound| bound < latency_ms)
}

/// The lower (exclusive) and upper (inclusive) bounds of bucket `i`; the last
/// bucket's upper bound is `max_ms`.
fn bucket_range(i: usize, max_ms: u64) -> (u64, u64) {
    let lower = if i == 0 { 0 } else { BOUNDS_MS[i - 1] };
    let upper = BOUNDS_MS.get(i).copied().unwrap_or(max_ms).min(max_ms.max(lower));
    (lower, upper)
}

/// The `q` quantile (0 < q <= 1) of a histogram whose slowest value was `max_ms`,
/// or `None` when it is empty.
pub fn quantile(buckets: &[u64; LATENCY_BUCKETS], max_ms: u64, q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    // The rank of the value asked for, 1-based.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut below = 0;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && below + n >= rank {
            let (lower, upper) = bucket_range(i, max_ms);
            let within = (rank - below) as f64 / n as f64;
            let value = lower as f64 + (upper.saturating_sub(lower)) as f64 * within;
            return Some((value.round() as u64).min(max_ms));
        }
        below += n;
    }
    Some(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latencies: impl IntoIterator<Item = u64>) -> ([u64; LATENCY_BUCKETS], u64) {
        let mut buckets = [0; LATENCY_BUCKETS];
        let mut max = 0;
        for l in latencies {
            buckets[bucket_of(l)] += 1;
            max = max.max(l);
        }
        (buckets, max)
    }

    #[test]
    fn buckets_are_inclusive_of_their_upper_bound() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(60_000), LATENCY_BUCKETS - 2);
        assert_eq!(bucket_of(60_001), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0, 0.5), None);
    }

    #[test]
    fn quantiles_land_in_the_right_bucket_and_never_pass_the_max() {
        // 1..=1000 ms uniformly: p50 is about 500, p99 about 990.
        let (buckets, max) = histogram(1..=1_000);
        let p50 = quantile(&buckets, max, 0.5).expect("p50");
        let p99 = quantile(&buckets, max, 0.99).expect("p99");
        assert!((300..=500).contains(&p50), "p50 {p50} is in the (300, 500] bucket");
        assert!((750..=1_000).contains(&p99), "p99 {p99} is in the (750, 1000] bucket");
        assert_eq!(quantile(&buckets, max, 1.0), Some(1_000));
        // One slow outlier beyond every bound: the max caps the last bucket.
        let (buckets, max) = histogram([10, 10, 10, 90_000]);
        assert_eq!(quantile(&buckets, max, 1.0), Some(90_000));
        assert!(quantile(&buckets, max, 0.5).expect("p50") <= 10);
    }

    proptest::proptest! {
        /// A quantile is monotonic in q and bounded by the observed maximum.
        #[test]
        fn quantiles_are_monotonic(latencies in proptest::collection::vec(0u64..200_000, 1..200)) {
            let (buckets, max) = histogram(latencies);
            let mut last = 0;
            for q in [0.01, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0] {
                let v = quantile(&buckets, max, q).expect("non-empty");
                proptest::prop_assert!(v >= last && v <= max);
                last = v;
            }
        }
    }
}
