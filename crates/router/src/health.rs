//! The health of each target, from live traffic only (passive): a circuit breaker
//! over the outcomes of its last calls, the `Retry-After` skip after a 429, and the
//! recent error rate and latency that `/health/detailed` reports.
//!
//! The breaker: *closed* while fewer than `min_calls` of the last `window` calls are
//! known or their failure rate is below `failure_rate_percent`; then *open* for
//! `cooldown_ms`, when the target is skipped; then *half-open*, when one call at a
//! time is let through as a probe: its success closes the breaker (with a fresh
//! window), its failure opens it for another cooldown. A probe whose outcome never
//! comes back (its task was dropped) frees the half-open slot after `probe_lease_ms`.
//!
//! Only failures that are the target's fault count ([`Failure::counts_against_target`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, RwLock};

use serde::Deserialize;

use crate::attempt::Failure;

/// The breaker's settings (`[routing.breaker]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// How many recent calls the failure rate is computed over.
    pub window: usize,
    /// No opening before this many calls are in the window.
    pub min_calls: usize,
    /// Open at or above this failure rate.
    pub failure_rate_percent: u8,
    /// How long an open breaker skips its target.
    pub cooldown_ms: i64,
    /// How long a half-open probe holds the one slot before another may go.
    pub probe_lease_ms: i64,
    /// A 429 without a readable `Retry-After` skips its target this long.
    pub default_retry_after_ms: i64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        BreakerSettings {
            window: 20,
            min_calls: 5,
            failure_rate_percent: 50,
            cooldown_ms: 30_000,
            probe_lease_ms: 30_000,
            default_retry_after_ms: 1_000,
        }
    }
}

impl BreakerSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.window == 0 || self.min_calls == 0 || self.min_calls > self.window {
            return Err("routing.breaker: need 0 < min_calls <= window".into());
        }
        if self.failure_rate_percent == 0 || self.failure_rate_percent > 100 {
            return Err("routing.breaker.failure_rate_percent must be 1 to 100".into());
        }
        if self.cooldown_ms < 0 || self.probe_lease_ms <= 0 || self.default_retry_after_ms < 0 {
            return Err("routing.breaker: durations must not be negative".into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Whether a target may be tried now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe: report its outcome.
    Probe,
    /// No: skip it until this time (Unix ms).
    Skip {
        until_ms: i64,
    },
}

impl Admit {
    pub fn allowed(self) -> bool {
        !matches!(self, Admit::Skip { .. })
    }
}

#[derive(Clone, Copy, Debug)]
struct Call {
    failed: bool,
    latency_ms: u64,
}

#[derive(Debug)]
struct TargetState {
    calls: VecDeque<Call>,
    state: BreakerState,
    /// Open: until when. Half-open: until when the probe holds the slot (0: free).
    until_ms: i64,
    retry_after_until_ms: i64,
    last_call_ms: i64,
    total_calls: u64,
    total_failures: u64,
}

impl TargetState {
    fn new() -> Self {
        TargetState {
            calls: VecDeque::new(),
            state: BreakerState::Closed,
            until_ms: 0,
            retry_after_until_ms: 0,
            last_call_ms: 0,
            total_calls: 0,
            total_failures: 0,
        }
    }
}

/// What `/health/detailed` shows of one target.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TargetHealth {
    pub target: String,
    pub state: BreakerState,
    /// Failures among the calls in the window, in percent (0 when none).
    pub error_rate_percent: f64,
    pub recent_calls: usize,
    /// Mean latency of the successful calls in the window.
    pub latency_ms_mean: Option<u64>,
    /// When an open breaker or a `Retry-After` lets the target be tried again.
    pub skipped_until_ms: Option<i64>,
    pub last_call_ms: Option<i64>,
    pub total_calls: u64,
    pub total_failures: u64,
}

/// Every target's health, shared by the gateway's requests. A target's state has
/// its own lock, found under a read lock on the map (no allocation, no global lock
/// on the request path); the map is written only the first time a target is seen.
#[derive(Debug, Default)]
pub struct Health {
    settings: BreakerSettings,
    targets: RwLock<HashMap<String, Mutex<TargetState>>>,
}

impl Health {
    pub fn new(settings: BreakerSettings) -> Health {
        Health { settings, targets: RwLock::new(HashMap::new()) }
    }

    fn with<R>(&self, target: &str, f: impl FnOnce(&mut TargetState) -> R) -> R {
        // A poisoned lock only means another request panicked mid-update of plain
        // counters; they are still usable.
        {
            let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
            if let Some(state) = targets.get(target) {
                return f(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
            }
        }
        let mut targets = self.targets.write().unwrap_or_else(|p| p.into_inner());
        let state = targets.entry(target.to_owned()).or_insert_with(|| Mutex::new(TargetState::new()));
        f(state.get_mut().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether `target` may be tried at `now_ms`; a [`Admit::Probe`] holds the
    /// half-open slot until its outcome is recorded (or its lease ends).
    pub fn admit(&self, target: &str, now_ms: i64) -> Admit {
        let lease = self.settings.probe_lease_ms;
        self.with(target, |t| {
            if now_ms < t.retry_after_until_ms {
                return Admit::Skip { until_ms: t.retry_after_until_ms };
            }
            match t.state {
                BreakerState::Closed => Admit::Yes,
                BreakerState::Open if now_ms < t.until_ms => Admit::Skip { until_ms: t.until_ms },
                BreakerState::Open => {
                    t.state = BreakerState::HalfOpen;
                    t.until_ms = now_ms + lease;
                    Admit::Probe
                }
                BreakerState::HalfOpen if now_ms < t.until_ms => Admit::Skip { until_ms: t.until_ms },
                BreakerState::HalfOpen => {
                    t.until_ms = now_ms + lease;
                    Admit::Probe
                }
            }
        })
    }

    /// Records a call that gave the client its answer (any status that is not a
    /// [`Failure`]).
    pub fn success(&self, target: &str, now_ms: i64, latency_ms: u64) {
        let window = self.settings.window;
        self.with(target, |t| {
            t.last_call_ms = now_ms;
            t.total_calls += 1;
            if t.state != BreakerState::Closed {
                t.state = BreakerState::Closed;
                t.calls.clear();
                t.until_ms = 0;
            }
            push(&mut t.calls, window, Call { failed: false, latency_ms });
        })
    }

    /// Records a failed attempt; a 429 sets the `Retry-After` skip (`retry_after_ms`
    /// as read by [`crate::parse_retry_after_ms`], else the default).
    pub fn failure(&self, target: &str, now_ms: i64, latency_ms: u64, failure: Failure, retry_until_ms: Option<i64>) {
        let s = self.settings;
        self.with(target, |t| {
            t.last_call_ms = now_ms;
            t.total_calls += 1;
            if failure == Failure::Status(429) {
                let until = retry_until_ms.unwrap_or(now_ms + s.default_retry_after_ms);
                t.retry_after_until_ms = t.retry_after_until_ms.max(until);
            }
            if !failure.counts_against_target() {
                // A throttled call says nothing of the target's health; a half-open
                // probe that got one frees the slot for the next probe.
                if t.state == BreakerState::HalfOpen {
                    t.until_ms = 0;
                }
                return;
            }
            t.total_failures += 1;
            match t.state {
                BreakerState::HalfOpen | BreakerState::Open => {
                    t.state = BreakerState::Open;
                    t.until_ms = now_ms + s.cooldown_ms;
                }
                BreakerState::Closed => {
                    push(&mut t.calls, s.window, Call { failed: true, latency_ms });
                    let failed = t.calls.iter().filter(|c| c.failed).count();
                    if t.calls.len() >= s.min_calls
                        && failed * 100 >= usize::from(s.failure_rate_percent) * t.calls.len()
                    {
                        t.state = BreakerState::Open;
                        t.until_ms = now_ms + s.cooldown_ms;
                    }
                }
            }
        })
    }

    /// Targets (of `known`) with no call since `idle_ms` before `now_ms`: the ones a
    /// cheap probe (`GET /models`) should look at.
    pub fn idle(&self, known: &[String], now_ms: i64, idle_ms: i64) -> Vec<String> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        known
            .iter()
            .filter(|k| {
                targets
                    .get(k.as_str())
                    .is_none_or(|t| now_ms - t.lock().unwrap_or_else(|p| p.into_inner()).last_call_ms >= idle_ms)
            })
            .cloned()
            .collect()
    }

    /// The health of `known` targets (and any other seen), sorted by name.
    pub fn snapshot(&self, known: &[String], now_ms: i64) -> Vec<TargetHealth> {
        let targets = self.targets.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&str> = known.iter().map(String::as_str).collect();
        names.extend(targets.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        let empty = TargetState::new();
        names
            .into_iter()
            .map(|name| {
                let guard = targets.get(name).map(|t| t.lock().unwrap_or_else(|p| p.into_inner()));
                let t = guard.as_deref().unwrap_or(&empty);
                let failed = t.calls.iter().filter(|c| c.failed).count();
                let ok: Vec<u64> = t.calls.iter().filter(|c| !c.failed).map(|c| c.latency_ms).collect();
                let skipped = [
                    (t.state == BreakerState::Open && now_ms < t.until_ms).then_some(t.until_ms),
                    (now_ms < t.retry_after_until_ms).then_some(t.retry_after_until_ms),
                ]
                .into_iter()
                .flatten()
                .max();
                TargetHealth {
                    target: name.to_owned(),
                    state: t.state,
                    error_rate_percent: if t.calls.is_empty() {
                        0.0
                    } else {
                        failed as f64 * 100.0 / t.calls.len() as f64
                    },
                    recent_calls: t.calls.len(),
                    latency_ms_mean: (!ok.is_empty()).then(|| ok.iter().sum::<u64>() / ok.len() as u64),
                    skipped_until_ms: skipped,
                    last_call_ms: (t.last_call_ms > 0).then_some(t.last_call_ms),
                    total_calls: t.total_calls,
                    total_failures: t.total_failures,
                }
            })
            .collect()
    }
}

fn push(calls: &mut VecDeque<Call>, window: usize, call: Call) {
    if calls.len() == window {
        calls.pop_front();
    }
    calls.push_back(call);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(BreakerSettings {
            window: 10,
            min_calls: 4,
            failure_rate_percent: 50,
            cooldown_ms: 1_000,
            probe_lease_ms: 500,
            default_retry_after_ms: 200,
        })
    }

    #[test]
    fn the_breaker_opens_over_the_failure_rate_after_min_calls_and_closes_after_a_good_probe() {
        let h = health();
        // Three failures are not enough calls to judge.
        for i in 0..3 {
            h.failure("t", 10 + i, 5, Failure::Status(500), None);
        }
        assert_eq!(h.admit("t", 20), Admit::Yes);
        h.failure("t", 20, 5, Failure::Timeout, None);
        assert_eq!(h.admit("t", 21), Admit::Skip { until_ms: 1_020 });
        assert_eq!(h.snapshot(&["t".into()], 21)[0].state, BreakerState::Open);
        // After the cooldown one probe goes; others wait for it.
        assert_eq!(h.admit("t", 1_020), Admit::Probe);
        assert_eq!(h.admit("t", 1_021), Admit::Skip { until_ms: 1_520 });
        // It fails: open for another cooldown.
        h.failure("t", 1_030, 5, Failure::Connect, None);
        assert_eq!(h.admit("t", 1_031), Admit::Skip { until_ms: 2_030 });
        // The next probe succeeds: closed, with a fresh window.
        assert_eq!(h.admit("t", 2_030), Admit::Probe);
        h.success("t", 2_040, 7);
        assert_eq!(h.admit("t", 2_041), Admit::Yes);
        let snap = &h.snapshot(&[], 2_041)[0];
        assert_eq!((snap.state, snap.recent_calls, snap.error_rate_percent), (BreakerState::Closed, 1, 0.0));
        assert_eq!(snap.latency_ms_mean, Some(7));
        assert_eq!((snap.total_calls, snap.total_failures), (6, 5));
    }

    #[test]
    fn failures_below_the_rate_keep_it_closed_and_client_errors_do_not_count() {
        let h = health();
        for i in 0..10 {
            if i % 3 == 0 {
                h.failure("t", i, 1, Failure::Status(502), None);
            } else {
                h.success("t", i, 1);
            }
        }
        for i in 0..20 {
            h.failure("t", 100 + i, 1, Failure::Status(400), None);
        }
        assert_eq!(h.admit("t", 200), Admit::Yes);
    }

    #[test]
    fn a_429_skips_its_target_until_retry_after_without_opening_the_breaker() {
        let h = health();
        for i in 0..10 {
            h.failure("t", 100, 1, Failure::Status(429), if i == 0 { Some(5_100) } else { None });
        }
        assert_eq!(h.admit("t", 200), Admit::Skip { until_ms: 5_100 });
        assert_eq!(h.admit("t", 5_100), Admit::Yes);
        assert_eq!(h.snapshot(&[], 5_100)[0].state, BreakerState::Closed);
        h.failure("u", 0, 1, Failure::Status(429), None);
        assert_eq!(h.admit("u", 199), Admit::Skip { until_ms: 200 });
    }

    #[test]
    fn a_lost_probe_frees_its_slot_after_its_lease() {
        let h = health();
        for i in 0..4 {
            h.failure("t", i, 1, Failure::Status(500), None);
        }
        assert_eq!(h.admit("t", 1_003), Admit::Probe);
        assert!(!h.admit("t", 1_400).allowed());
        assert_eq!(h.admit("t", 1_503), Admit::Probe);
    }

    #[test]
    fn idle_targets_are_those_without_a_recent_call() {
        let h = health();
        h.success("a", 1_000, 1);
        let known = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(h.idle(&known, 1_500, 1_000), vec!["b".to_owned()]);
        assert_eq!(h.idle(&known, 2_000, 1_000), known);
        assert_eq!(h.snapshot(&known, 2_000).len(), 2);
    }

    #[test]
    fn settings_are_checked() {
        assert!(BreakerSettings::default().validate().is_ok());
        assert!(BreakerSettings { min_calls: 30, ..Default::default() }.validate().is_err());
        assert!(BreakerSettings { failure_rate_percent: 0, ..Default::default() }.validate().is_err());
    }
}
