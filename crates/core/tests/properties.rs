//! Property tests of the window arithmetic: calendar conversions, calendar window
//! bounds, and the sliding window's admission, clock and settlement rules.
//!
//! Every property runs a fixed, small number of cases (`ProptestConfig::cases`) so the
//! whole file stays well under a second or two in a debug build: it runs in the test
//! command. `PROPTEST_CASES=5000 cargo test -p tollgate-core --test properties` runs a
//! longer search locally.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tollgate_core::calendar::{
    MS_PER_DAY, MS_PER_MINUTE, civil_from_days, day_start, days_from_civil, month_start, next_month_start,
    parse_timestamp, to_rfc3339,
};
use tollgate_core::counter::{BUCKETS, CalendarCounter, SlidingWindow};
use tollgate_core::{LimitState, Window};

/// About ±27,000 years around 1970, in days.
const WIDE_DAYS: i64 = 10_000_000;
/// About ±3,000 years around 1970, in milliseconds.
const WIDE_MS: i64 = 100_000_000_000_000;
/// 0000-01-01 and 9999-12-31T23:59:59.999: what RFC 3339's four-digit year can show.
const RFC3339_MIN: i64 = -62_167_219_200_000;
const RFC3339_MAX: i64 = 253_402_300_799_999;

fn config(cases: u32) -> ProptestConfig {
    // `PROPTEST_CASES` still wins when set, for a longer local search.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(year) => 29,
        _ => 28,
    }
}

/// A valid civil date: year, month, and a day that exists in that month.
fn civil_date() -> impl Strategy<Value = (i64, u32, u32)> {
    (-25_000i64..25_000, 1u32..=12).prop_flat_map(|(y, m)| (Just(y), Just(m), 1..=days_in_month(y, m)))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn civil_from_days_round_trips(days in -WIDE_DAYS..WIDE_DAYS) {
        let (y, m, d) = civil_from_days(days);
        prop_assert!((1..=12).contains(&m), "month {m}");
        prop_assert!(d >= 1 && d <= days_in_month(y, m), "{y}-{m}-{d}");
        prop_assert_eq!(days_from_civil(y, m, d), days);
        // The next day is the next date of the calendar.
        let (ny, nm, nd) = civil_from_days(days + 1);
        let expected = if d < days_in_month(y, m) {
            (y, m, d + 1)
        } else if m < 12 {
            (y, m + 1, 1)
        } else {
            (y + 1, 1, 1)
        };
        prop_assert_eq!((ny, nm, nd), expected);
    }

    #[test]
    fn days_from_civil_round_trips((y, m, d) in civil_date()) {
        prop_assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
    }

    #[test]
    fn month_bounds_contain_the_instant(t in -WIDE_MS..WIDE_MS) {
        let start = month_start(t);
        let end = next_month_start(t);
        prop_assert!(start <= t && t < end, "{start} <= {t} < {end}");
        prop_assert_eq!(start.rem_euclid(MS_PER_DAY), 0);
        prop_assert_eq!(civil_from_days(start / MS_PER_DAY).2, 1, "a month starts on the 1st");
        let length_days = (end - start) / MS_PER_DAY;
        prop_assert!((28..=31).contains(&length_days), "{length_days} days");
        // Consecutive months tile the line: no gap, no overlap.
        prop_assert_eq!(month_start(end), end);
        prop_assert_eq!(month_start(end - 1), start);
        prop_assert_eq!(next_month_start(start), end);
        if start > i64::MIN + MS_PER_DAY {
            prop_assert_eq!(next_month_start(start - 1), start);
        }
    }

    #[test]
    fn day_bounds_contain_the_instant(t in -WIDE_MS..WIDE_MS) {
        let start = day_start(t);
        prop_assert!(start <= t && t < start + MS_PER_DAY);
        prop_assert_eq!(start.rem_euclid(MS_PER_DAY), 0);
        prop_assert_eq!(day_start(start + MS_PER_DAY - 1), start);
        prop_assert_eq!(day_start(start + MS_PER_DAY), start + MS_PER_DAY);
        // A day never straddles a month edge.
        prop_assert_eq!(month_start(start), month_start(start + MS_PER_DAY - 1));
    }

    #[test]
    fn rfc3339_round_trips(t in RFC3339_MIN..=RFC3339_MAX) {
        let text = to_rfc3339(t);
        prop_assert_eq!(parse_timestamp(&text), Some(t), "{}", text);
    }

    #[test]
    fn parse_timestamp_never_panics(text in "\\PC{0,40}") {
        let _ = parse_timestamp(&text);
    }

    #[test]
    fn calendar_counter_counts_only_its_window(
        window in prop_oneof![Just(Window::Day), Just(Window::Month)],
        start in -WIDE_MS..WIDE_MS,
        steps in prop::collection::vec((0i64..10 * MS_PER_DAY, 0u64..100), 1..40),
    ) {
        let mut counter = CalendarCounter::new(window, start);
        let mut now = start;
        let mut charges: Vec<(i64, u64)> = vec![];
        for (step, amount) in steps {
            now += step;
            let id = counter.charge(now, amount);
            prop_assert!(counter.start_ms() <= now && now < counter.end_ms());
            prop_assert_eq!(id, counter.start_ms());
            charges.push((now, amount));
            let expected: u64 =
                charges.iter().filter(|(t, _)| *t >= counter.start_ms()).map(|(_, a)| a).sum();
            prop_assert_eq!(counter.used(now), expected);
        }
    }
}

/// Admitted charges in every interval `[t, t + window)` starting at an admitted
/// charge (the worst intervals), checked against the log by brute force.
fn worst_interval(log: &[(i64, u64)], window_ms: i64) -> (i64, u64) {
    let mut worst = (0, 0);
    for &(start, _) in log {
        let sum: u64 = log.iter().filter(|(t, _)| *t >= start && *t < start + window_ms).map(|(_, a)| a).sum();
        if sum > worst.1 {
            worst = (start, sum);
        }
    }
    worst
}

/// A time step: mostly short (many in the same window), sometimes long (whole
/// buckets and windows go by), sometimes zero.
fn step(window_ms: i64) -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        10 => 0..window_ms / 20,
        4 => 0..window_ms * 2,
        1 => 0..window_ms * 10,
    ]
}

fn window_ms() -> impl Strategy<Value = i64> {
    prop_oneof![Just(MS_PER_MINUTE), Just(60 * MS_PER_MINUTE), 60i64..10_000]
}

proptest! {
    #![proptest_config(config(256))]

    /// The guarantee behind "no 2x burst at a window edge": greedy admission
    /// (`used + amount <= limit`) never lets more than `limit` into any interval of
    /// one window length.
    #[test]
    fn no_interval_of_one_window_admits_more_than_the_limit(
        (window_ms, ops) in window_ms().prop_flat_map(|w| (Just(w), prop::collection::vec((step(w), 0u64..8), 1..200))),
        limit in 1u64..20,
        start in -WIDE_MS..WIDE_MS,
    ) {
        let mut w = SlidingWindow::new(window_ms, start);
        let mut now = start;
        let mut log: Vec<(i64, u64)> = vec![];
        for (step, amount) in ops {
            now += step;
            let used = w.used(now);
            if used + amount <= limit {
                w.charge(now, amount);
                log.push((now, amount));
            }
            // Everything admitted in the last window length is still counted.
            let recent: u64 = log.iter().filter(|(t, _)| *t > now - window_ms).map(|(_, a)| a).sum();
            prop_assert!(w.used(now) >= recent, "used {} < {recent} admitted in the last window", w.used(now));
        }
        let (at, worst) = worst_interval(&log, window_ms);
        prop_assert!(worst <= limit, "{worst} admitted in the window from {at} (limit {limit})");
    }

    /// A clock that steps backwards never un-counts: `used` at an earlier instant is
    /// what it was at the latest one, and a charge made while the clock is behind
    /// counts in full.
    #[test]
    fn a_clock_stepping_back_never_uncounts(
        start in -WIDE_MS..WIDE_MS,
        ops in prop::collection::vec((-90_000i64..90_000, 0u64..5), 1..150),
    ) {
        let mut w = SlidingWindow::new(MS_PER_MINUTE, start);
        let mut now = start;
        let mut latest = start;
        let mut previous = w.used(now);
        for (step, amount) in ops {
            now += step;
            let used = w.used(now);
            if now <= latest {
                prop_assert_eq!(used, previous, "stepping back from {} to {} changed the count", latest, now);
            } else {
                latest = now;
            }
            w.charge(now, amount);
            prop_assert_eq!(w.used(now), used + amount);
            previous = used + amount;
        }
    }

    /// Settlement (`adjust`) never takes a bucket below zero (the subtraction would
    /// panic in this debug build), and it only moves the bucket the charge went to, and
    /// only while that bucket still counts. Checked against a model of the buckets.
    #[test]
    fn settlement_never_goes_negative_and_touches_only_its_window(
        start in -WIDE_MS..WIDE_MS,
        ops in prop::collection::vec(
            prop_oneof![
                (step(MS_PER_MINUTE), 0u64..50).prop_map(|(s, a)| Op::Charge(s, a)),
                (any::<prop::sample::Index>(), -200i64..200, step(MS_PER_MINUTE)).prop_map(|(i, d, s)| Op::Adjust(i, d, s)),
                (any::<prop::sample::Index>(), step(MS_PER_MINUTE)).prop_map(|(i, s)| Op::Adjust(i, 0, s)),
            ],
            1..150,
        ),
    ) {
        let bucket_ms = MS_PER_MINUTE / BUCKETS as i64;
        let mut w = SlidingWindow::new(MS_PER_MINUTE, start);
        let mut model: BTreeMap<i64, u64> = BTreeMap::new();
        let mut ids: Vec<(i64, u64)> = vec![];
        let mut now = start;
        let live = |model: &BTreeMap<i64, u64>, now: i64| -> u64 {
            let head = now.div_euclid(bucket_ms);
            model.range(head - BUCKETS as i64..=head).map(|(_, v)| v).sum()
        };
        for op in ops {
            match op {
                Op::Charge(step, amount) => {
                    now += step;
                    let id = w.charge(now, amount);
                    prop_assert_eq!(id, now.div_euclid(bucket_ms));
                    *model.entry(id).or_default() += amount;
                    ids.push((id, amount));
                }
                Op::Adjust(index, delta, step) if !ids.is_empty() => {
                    now += step;
                    let (id, reserved) = ids[index.index(ids.len())];
                    // Zero stands for a refund: minus what the charge reserved.
                    let delta = if delta == 0 { -(reserved as i64) } else { delta };
                    let others_before = live(&model, now) - live_bucket(&model, id, now, bucket_ms);
                    w.adjust(now, id, delta);
                    let head = now.div_euclid(bucket_ms);
                    if id > head - SLOTS && id <= head {
                        let slot = model.entry(id).or_default();
                        *slot = if delta >= 0 { *slot + delta as u64 } else { slot.saturating_sub(delta.unsigned_abs()) };
                    }
                    let others_after = live(&model, now) - live_bucket(&model, id, now, bucket_ms);
                    prop_assert_eq!(others_before, others_after, "another bucket moved");
                }
                Op::Adjust(..) => {}
            }
            prop_assert_eq!(w.used(now), live(&model, now));
        }
    }

    /// `retry_at` is when the amount fits again, and not earlier.
    #[test]
    fn retry_at_is_the_earliest_instant_that_fits(
        start in 0i64..WIDE_MS,
        ops in prop::collection::vec((step(MS_PER_MINUTE), 0u64..6), 1..60),
        limit in 1u64..30,
        amount in 0u64..35,
    ) {
        let mut w = SlidingWindow::new(MS_PER_MINUTE, start);
        let mut now = start;
        for (step, charge) in ops {
            now += step;
            w.charge(now, charge);
        }
        let used = w.used(now);
        match w.retry_at(amount, limit) {
            None => prop_assert!(amount > limit),
            Some(at) => {
                prop_assert!(amount <= limit);
                let mut later = w.clone();
                prop_assert!(later.used(at.max(now)) + amount <= limit, "does not fit at {}", at);
                if at > now {
                    prop_assert!(used + amount > limit, "fits now but retry_at is later");
                    let mut earlier = w.clone();
                    prop_assert!(earlier.used(at - 1) + amount > limit, "already fits at {}", at - 1);
                }
            }
        }
    }

    /// The calendar half of `LimitState`: settlement applies only to the window the
    /// charge was made in and never goes below zero.
    #[test]
    fn calendar_settlement_stays_in_its_window(
        start in -WIDE_MS..WIDE_MS,
        amount in 0u64..1_000,
        delta in -5_000i64..5_000,
        gap in 0i64..40 * MS_PER_DAY,
        window in prop_oneof![Just(Window::Day), Just(Window::Month)],
    ) {
        let mut state = LimitState::new(window, start);
        let id = state.charge(start, amount);
        let later = start + gap;
        let before = state.used(later);
        state.adjust(later, id, delta);
        let after = state.used(later);
        let (window_start, window_end) = tollgate_core::counter::calendar_bounds(window, later);
        prop_assert_eq!(state.reset_at(), window_end);
        if window_start == id {
            prop_assert_eq!(before, amount);
            prop_assert_eq!(after, (amount as i64 + delta).max(0) as u64);
        } else {
            prop_assert_eq!(before, 0);
            prop_assert_eq!(after, 0, "a settlement leaked into the next window");
        }
    }
}

const SLOTS: i64 = BUCKETS as i64 + 1;

fn live_bucket(model: &BTreeMap<i64, u64>, id: i64, now: i64, bucket_ms: i64) -> u64 {
    let head = now.div_euclid(bucket_ms);
    if id > head - SLOTS && id <= head { model.get(&id).copied().unwrap_or(0) } else { 0 }
}

#[derive(Clone, Debug)]
enum Op {
    /// Step the clock, then charge.
    Charge(i64, u64),
    /// Step the clock, then adjust an earlier charge by a delta (0: refund it, i.e.
    /// minus its amount).
    Adjust(prop::sample::Index, i64, i64),
}

/// Zones with the shapes that break naive arithmetic: whole and half and 45-minute
/// offsets, daylight saving north and south, a midnight gap, the date line.
const ZONES: &[&str] = &[
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Los_Angeles",
    "America/Santiago",
    "America/Havana",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
];

/// 1990 to 2060, where the bundled tz database has rules for every zone above.
const ZONED_FROM: i64 = 631_152_000_000;
const ZONED_TO: i64 = 2_840_140_800_000;

proptest! {
    #![proptest_config(config(512))]

    /// A zone's calendar windows tile time: the window containing an instant holds
    /// it, the next starts where it ends, a day is 23 to 25 hours (or one of the few
    /// shorter days a zone skipped a date on), a month holds its days, and every edge
    /// is a whole quarter hour (the ledger replay's buckets rely on it).
    #[test]
    fn zone_windows_tile_time(zone in prop::sample::select(ZONES), ms in ZONED_FROM..ZONED_TO) {
        let zone = tollgate_core::Zone::parse(zone).expect("zone");
        for window in [Window::Day, Window::Month] {
            let (start, end) = zone.bounds(window, ms);
            prop_assert!(start <= ms && ms < end, "{zone} {window:?} {start} <= {ms} < {end}");
            prop_assert_eq!(zone.bounds(window, start), (start, end));
            prop_assert_eq!(zone.bounds(window, end - 1), (start, end));
            prop_assert_eq!(zone.bounds(window, end).0, end, "the next window starts where this one ends");
            prop_assert_eq!(zone.bounds(window, start - 1).1, start);
            prop_assert_eq!(start.rem_euclid(15 * MS_PER_MINUTE), 0, "quarter-hour edges");
            let [e0, e1, e2, e3] = zone.edges(window, ms);
            prop_assert!(e0 < e1 && e1 == start && e2 == end && e2 < e3);
        }
        let (day_start, day_end) = zone.bounds(Window::Day, ms);
        let hours = (day_end - day_start) / (MS_PER_MINUTE * 60);
        prop_assert!((22..=25).contains(&hours), "{zone}: a day of {hours} hours");
        let (month_start, month_end) = zone.bounds(Window::Month, ms);
        prop_assert!(month_start <= day_start && day_end <= month_end, "{zone}: the month holds the day");
        prop_assert!((27..=32).contains(&((month_end - month_start) / MS_PER_DAY)));
        // Usage counts now exactly when it is in the current window.
        prop_assert!(zone.counts_now(Window::Day, day_start, ms));
        prop_assert!(!zone.counts_now(Window::Day, day_start - 1, ms));
    }
}
