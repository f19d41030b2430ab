//! The state of one limit for one subject, and the arithmetic on it.
//!
//! Rate limits (minute, hour) use a *bucketed sliding window*: the window is cut into
//! [`BUCKETS`] buckets and a decision counts the current bucket plus the `BUCKETS`
//! before it. That span always covers the last full window, so within *any* interval
//! of one window length no more than `limit` is admitted (no 2x burst across an edge);
//! the price is that capacity comes back up to one bucket (1 s for a minute window)
//! later than an exact log would give it back. Memory is fixed per limit and a token
//! limit can charge many units at once.
//!
//! Quotas (day, month) are calendar counters keyed by the window's start.
//!
//! Every charge returns a window id (bucket index or window start). Settlement applies
//! `actual - reserved` to that same window, and only while it still counts, so a late
//! settlement never leaks into the next window.

use crate::limit::Window;
use crate::zone::Zone;

/// Buckets per sliding window: 60 gives 1 s resolution for minute limits.
pub const BUCKETS: usize = 60;
const SLOTS: usize = BUCKETS + 1;

/// A sliding window of `BUCKETS` + 1 buckets in a ring.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    bucket_ms: i64,
    /// Bucket index (time / bucket_ms) of the newest slot.
    head: i64,
    slots: [u64; SLOTS],
    total: u64,
}

impl SlidingWindow {
    pub fn new(window_ms: i64, now_ms: i64) -> Self {
        // Rounded up, so the `BUCKETS` + 1 buckets always span at least `window_ms`
        // (rounding down let a 79 ms window count only the last 61 ms: found by the
        // property tests; minute and hour windows divide evenly either way).
        let bucket_ms = (window_ms.max(1) as u64).div_ceil(BUCKETS as u64) as i64;
        Self { bucket_ms, head: now_ms.div_euclid(bucket_ms), slots: [0; SLOTS], total: 0 }
    }

    fn slot(index: i64) -> usize {
        index.rem_euclid(SLOTS as i64) as usize
    }

    /// Moves the ring forward to `now`, dropping buckets that no longer count.
    /// A clock that steps backwards leaves the ring where it is (never un-counts).
    fn advance(&mut self, now_ms: i64) {
        let index = now_ms.div_euclid(self.bucket_ms);
        if index <= self.head {
            return;
        }
        if index - self.head >= SLOTS as i64 {
            self.slots = [0; SLOTS];
            self.total = 0;
        } else {
            for i in self.head + 1..=index {
                let s = Self::slot(i);
                self.total -= self.slots[s];
                self.slots[s] = 0;
            }
        }
        self.head = index;
    }

    /// Amount counted in the window ending at `now`.
    pub fn used(&mut self, now_ms: i64) -> u64 {
        self.advance(now_ms);
        self.total
    }

    /// Charges `amount` to the current bucket; returns the bucket index.
    pub fn charge(&mut self, now_ms: i64, amount: u64) -> i64 {
        self.advance(now_ms);
        let s = Self::slot(self.head);
        self.slots[s] = self.slots[s].saturating_add(amount);
        self.total = self.total.saturating_add(amount);
        self.head
    }

    /// Applies `delta` to bucket `window_id` if it still counts.
    pub fn adjust(&mut self, now_ms: i64, window_id: i64, delta: i64) {
        self.advance(now_ms);
        if window_id > self.head || window_id <= self.head - SLOTS as i64 {
            return;
        }
        let s = Self::slot(window_id);
        if delta >= 0 {
            self.slots[s] = self.slots[s].saturating_add(delta as u64);
            self.total = self.total.saturating_add(delta as u64);
        } else {
            let take = delta.unsigned_abs().min(self.slots[s]);
            self.slots[s] -= take;
            self.total -= take;
        }
    }

    /// When everything counted now has left the window.
    pub fn clear_at(&self) -> i64 {
        for back in 0..SLOTS as i64 {
            let index = self.head - back;
            if self.slots[Self::slot(index)] > 0 {
                return (index + SLOTS as i64) * self.bucket_ms;
            }
        }
        self.head * self.bucket_ms
    }

    /// The earliest time at which `amount` more would fit under `limit`, or `None` if
    /// it never can (`amount > limit`). Call after [`used`](Self::used) at `now`.
    pub fn retry_at(&self, amount: u64, limit: u64) -> Option<i64> {
        if amount > limit {
            return None;
        }
        let mut total = self.total;
        if total + amount <= limit {
            return Some(self.head * self.bucket_ms);
        }
        // Oldest bucket first: bucket `head - BUCKETS + j` drops out at `head + j + 1`.
        for j in 0..SLOTS as i64 {
            let index = self.head - BUCKETS as i64 + j;
            total -= self.slots[Self::slot(index)];
            if total + amount <= limit {
                return Some((self.head + j + 1) * self.bucket_ms);
            }
        }
        Some((self.head + SLOTS as i64) * self.bucket_ms)
    }
}

/// A counter for one calendar window (a day or month in its [`Zone`]).
#[derive(Clone, Debug)]
pub struct CalendarCounter {
    window: Window,
    zone: Zone,
    start_ms: i64,
    end_ms: i64,
    used: u64,
}

impl CalendarCounter {
    /// A counter of UTC windows.
    pub fn new(window: Window, now_ms: i64) -> Self {
        Self::in_zone(window, now_ms, Zone::UTC)
    }

    /// A counter of windows in `zone` (a day resets at its local midnight).
    pub fn in_zone(window: Window, now_ms: i64, zone: Zone) -> Self {
        let (start_ms, end_ms) = zone.bounds(window, now_ms);
        Self { window, zone, start_ms, end_ms, used: 0 }
    }

    fn advance(&mut self, now_ms: i64) {
        if now_ms >= self.end_ms {
            let (start_ms, end_ms) = self.zone.bounds(self.window, now_ms);
            self.start_ms = start_ms;
            self.end_ms = end_ms;
            self.used = 0;
        }
    }

    /// Moves the counter to `zone` (its plan's zone changed). What was counted stays
    /// counted, in the new zone's window that contains `now_ms`: changing a zone never
    /// hands a spent quota out again; the next reset is the new zone's.
    pub fn set_zone(&mut self, zone: &Zone, now_ms: i64) {
        if self.zone != *zone {
            self.advance(now_ms);
            self.zone = zone.clone();
            let (start_ms, end_ms) = self.zone.bounds(self.window, now_ms);
            self.start_ms = start_ms;
            self.end_ms = end_ms;
        }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    pub fn used(&mut self, now_ms: i64) -> u64 {
        self.advance(now_ms);
        self.used
    }

    pub fn charge(&mut self, now_ms: i64, amount: u64) -> i64 {
        self.advance(now_ms);
        self.used = self.used.saturating_add(amount);
        self.start_ms
    }

    pub fn adjust(&mut self, now_ms: i64, window_id: i64, delta: i64) {
        self.advance(now_ms);
        if window_id != self.start_ms {
            return;
        }
        self.used = if delta >= 0 {
            self.used.saturating_add(delta as u64)
        } else {
            self.used.saturating_sub(delta.unsigned_abs())
        };
    }

    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }
}

/// `[start, end)` of the UTC calendar window containing `now_ms` (minute and hour
/// never reach here from `LimitState`; they are treated as days so the function is
/// total). [`Zone::bounds`] gives the window in another zone.
pub fn calendar_bounds(window: Window, now_ms: i64) -> (i64, i64) {
    Zone::UTC.bounds(window, now_ms)
}

/// Whether usage that happened at `at_ms` still counts in `window` as it stands at
/// `now_ms`: within the last window length for a sliding window, within the current
/// calendar window for a day or month. Late usage (an event reported after the fact)
/// is charged only to the windows it falls in, and charged *now*, so a late report
/// never moves a counter's window; usage dated after `now_ms` counts as `now_ms`.
/// Calendar windows in UTC; [`Zone::counts_now`] for another zone.
pub fn counts_now(window: Window, at_ms: i64, now_ms: i64) -> bool {
    Zone::UTC.counts_now(window, at_ms, now_ms)
}

/// The state of one (subject, limit) pair.
#[derive(Clone, Debug)]
pub enum LimitState {
    /// Boxed: the ring is ~0.5 KB, a calendar counter 32 bytes.
    Sliding(Box<SlidingWindow>),
    Calendar(CalendarCounter),
}

impl LimitState {
    /// The state of a limit on `window`, calendar windows in UTC.
    pub fn new(window: Window, now_ms: i64) -> Self {
        Self::in_zone(window, now_ms, &Zone::UTC)
    }

    /// The state of a limit on `window`, calendar windows in `zone` (sliding windows
    /// have no zone).
    pub fn in_zone(window: Window, now_ms: i64, zone: &Zone) -> Self {
        match window.sliding_ms() {
            Some(ms) => LimitState::Sliding(Box::new(SlidingWindow::new(ms, now_ms))),
            None => LimitState::Calendar(CalendarCounter::in_zone(window, now_ms, zone.clone())),
        }
    }

    /// Follows a change of the limit's zone (a calendar counter only).
    pub fn set_zone(&mut self, zone: &Zone, now_ms: i64) {
        if let LimitState::Calendar(c) = self {
            c.set_zone(zone, now_ms);
        }
    }

    pub fn used(&mut self, now_ms: i64) -> u64 {
        match self {
            LimitState::Sliding(w) => w.used(now_ms),
            LimitState::Calendar(c) => c.used(now_ms),
        }
    }

    /// Charges unconditionally and returns the window id to settle against.
    pub fn charge(&mut self, now_ms: i64, amount: u64) -> i64 {
        match self {
            LimitState::Sliding(w) => w.charge(now_ms, amount),
            LimitState::Calendar(c) => c.charge(now_ms, amount),
        }
    }

    pub fn adjust(&mut self, now_ms: i64, window_id: i64, delta: i64) {
        match self {
            LimitState::Sliding(w) => w.adjust(now_ms, window_id, delta),
            LimitState::Calendar(c) => c.adjust(now_ms, window_id, delta),
        }
    }

    /// When the limit is fully available again (the `reset` of the headers).
    pub fn reset_at(&self) -> i64 {
        match self {
            LimitState::Sliding(w) => w.clear_at(),
            LimitState::Calendar(c) => c.end_ms(),
        }
    }

    /// When `amount` more would fit, or `None` if it never can. Call after `used`.
    pub fn retry_at(&self, amount: u64, limit: u64) -> Option<i64> {
        match self {
            LimitState::Sliding(w) => w.retry_at(amount, limit),
            LimitState::Calendar(c) => (amount <= limit).then_some(c.end_ms()),
        }
    }

    /// True when nothing is counted any more at `now`, so the state can be dropped.
    pub fn is_idle(&mut self, now_ms: i64) -> bool {
        self.used(now_ms) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{MS_PER_DAY, MS_PER_MINUTE};

    /// Admits greedily, one unit at a time, at the given instants.
    fn admit(state: &mut LimitState, limit: u64, at: i64) -> bool {
        if state.used(at) < limit {
            state.charge(at, 1);
            true
        } else {
            false
        }
    }

    #[test]
    fn no_window_edge_lets_twice_the_limit_through() {
        // Ten requests at 59.9 s, then as many as possible right after the minute edge.
        let mut state = LimitState::new(Window::Minute, 0);
        let mut times = vec![];
        for _ in 0..10 {
            assert!(admit(&mut state, 10, 59_900));
            times.push(59_900);
        }
        for t in (60_000..180_000).step_by(100) {
            if admit(&mut state, 10, t) {
                times.push(t);
            }
        }
        for (i, &start) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|&&t| t < start + MS_PER_MINUTE).count();
            assert!(in_window <= 10, "{in_window} admitted in the minute from {start}");
        }
        // Capacity does come back: the next batch is admitted about one minute later.
        assert!(times.iter().any(|&t| (119_900..121_100).contains(&t)));
    }

    #[test]
    fn retry_at_is_when_capacity_returns() {
        let mut w = SlidingWindow::new(MS_PER_MINUTE, 0);
        w.charge(1_500, 4);
        w.charge(10_200, 6);
        assert_eq!(w.used(20_000), 10);
        // One more fits once the bucket of second 1 leaves: at 62 s.
        assert_eq!(w.retry_at(1, 10), Some(62_000));
        assert_eq!(w.retry_at(5, 10), Some(71_000));
        assert_eq!(w.retry_at(11, 10), None);
        assert_eq!(w.clear_at(), 71_000);
        assert_eq!(w.used(61_999), 10);
        assert_eq!(w.used(62_000), 6);
        assert_eq!(w.used(71_000), 0);
    }

    #[test]
    fn settlement_adjusts_only_the_window_it_was_charged_in() {
        let mut w = SlidingWindow::new(MS_PER_MINUTE, 0);
        let id = w.charge(0, 100);
        w.adjust(30_000, id, -40);
        assert_eq!(w.used(30_000), 60);
        w.adjust(30_000, id, 25);
        assert_eq!(w.used(30_000), 85);
        w.adjust(30_000, id, -1_000);
        assert_eq!(w.used(30_000), 0);
        let id = w.charge(30_000, 5);
        w.adjust(200_000, id, 50); // long gone: ignored
        assert_eq!(w.used(200_000), 0);

        let mut c = CalendarCounter::new(Window::Day, 0);
        let id = c.charge(10, 7);
        c.adjust(MS_PER_DAY + 1, id, 3); // next day: ignored
        assert_eq!(c.used(MS_PER_DAY + 1), 0);
    }

    #[test]
    fn calendar_counter_resets_at_the_window_end() {
        let mut c = LimitState::new(Window::Month, 0);
        c.charge(5, 3);
        assert_eq!(c.used(31 * MS_PER_DAY - 1), 3);
        assert_eq!(c.reset_at(), 31 * MS_PER_DAY);
        assert_eq!(c.used(31 * MS_PER_DAY), 0);
    }

    #[test]
    fn clock_stepping_back_never_uncounts() {
        let mut w = SlidingWindow::new(MS_PER_MINUTE, 100_000);
        w.charge(100_000, 3);
        assert_eq!(w.used(50_000), 3);
        w.charge(50_000, 1);
        assert_eq!(w.used(100_000), 4);
    }
}

#[cfg(test)]
mod counts_now_tests {
    use super::*;
    use crate::calendar::{MS_PER_DAY, MS_PER_MINUTE, day_start, month_start};

    #[test]
    fn late_usage_counts_only_in_the_windows_it_falls_in() {
        let now = 1_764_633_600_000 + 10 * MS_PER_DAY + 12 * 3_600_000; // mid-month, midday
        assert!(counts_now(Window::Minute, now - 30_000, now));
        assert!(!counts_now(Window::Minute, now - 2 * MS_PER_MINUTE, now));
        assert!(counts_now(Window::Hour, now - 30 * MS_PER_MINUTE, now));
        assert!(counts_now(Window::Day, day_start(now), now));
        assert!(!counts_now(Window::Day, day_start(now) - 1, now));
        assert!(counts_now(Window::Month, now - 5 * MS_PER_DAY, now));
        assert!(!counts_now(Window::Month, month_start(now) - 1, now));
        assert!(counts_now(Window::Day, now + 4 * MS_PER_MINUTE, now), "the future is now");
    }
}
