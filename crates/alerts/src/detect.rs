//! Crossing detection, on the decision the limiter made atomically.
//!
//! An admitted decision carries, for each limit, the usage right after this request's
//! charge (`LimitStatus::used`), read inside the limiter's atomic step: under the
//! embedded shard's lock, inside the Redis decision script. Before the charge it was
//! `used - amount`. Charges to one counter are serialised by that step, so the
//! intervals `(before, after]` of concurrent requests never overlap, and a threshold
//! `t %` of a limit `L` lies in exactly one of them: exactly one request, on exactly
//! one instance, sees `before < t·L/100 ≤ after`. The test is integer arithmetic on
//! numbers already in hand: no lock beyond a read of the rule snapshot, no store round
//! trip, no allocation unless a threshold is crossed.
//!
//! What this cannot see on its own — a refund that lowers a counter and a later charge
//! that crosses the same threshold again, a repeated reservation, a restart — is
//! absorbed by the outbox: a crossing's event id is deterministic per (rule, counter,
//! window, threshold), and an event is written once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tollgate_core::calendar::{MS_PER_HOUR, MS_PER_MINUTE};
use tollgate_core::{Amounts, Decision, LimitItem, LimitSpec, Window};
use tollgate_store::{Limiter, ReserveRequest, SettleRequest, StoreResult};

use crate::{LimitMatcher, RuleRecord};

/// A threshold crossed by one charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub rule_id: Arc<str>,
    pub channels: Arc<[String]>,
    pub project_id: String,
    pub subject: Arc<str>,
    pub spec: LimitSpec,
    pub threshold: u32,
    pub used: u64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub at_ms: i64,
}

struct CompiledRule {
    id: Arc<str>,
    matcher: LimitMatcher,
    thresholds: Box<[u32]>,
    channels: Arc<[String]>,
}

impl CompiledRule {
    fn of(record: &RuleRecord) -> Self {
        let mut thresholds = record.thresholds.clone();
        thresholds.sort_unstable();
        thresholds.dedup();
        Self {
            id: Arc::from(record.id.as_str()),
            matcher: record.matcher.clone(),
            thresholds: thresholds.into(),
            channels: record.channels.clone().into(),
        }
    }
}

/// The enabled rules, compiled: per project, and the operator defaults that apply to
/// projects with no enabled rule of their own.
#[derive(Default)]
pub struct RuleSet {
    projects: HashMap<String, Box<[CompiledRule]>>,
    defaults: Box<[CompiledRule]>,
}

impl RuleSet {
    pub fn from_records(records: &[RuleRecord]) -> Self {
        let mut projects: HashMap<String, Vec<CompiledRule>> = HashMap::new();
        let mut defaults = Vec::new();
        for record in records
            .iter()
            .filter(|r| r.enabled && r.kind == crate::RuleKind::LimitThreshold && !r.thresholds.is_empty())
        {
            match &record.project_id {
                Some(p) => projects.entry(p.clone()).or_default().push(CompiledRule::of(record)),
                None => defaults.push(CompiledRule::of(record)),
            }
        }
        Self {
            projects: projects.into_iter().map(|(p, rules)| (p, rules.into_boxed_slice())).collect(),
            defaults: defaults.into(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.projects.is_empty() && self.defaults.is_empty()
    }

    fn for_project(&self, project: &str) -> &[CompiledRule] {
        self.projects.get(project).map_or(&self.defaults, |rules| rules)
    }
}

/// The window a crossing belongs to: a calendar window's bounds, or for a sliding
/// window the aligned minute or hour it happened in (one alert per rule, threshold and
/// aligned period).
pub fn window_of(item: &LimitItem, now_ms: i64) -> (i64, i64) {
    let len = match item.spec.window {
        Window::Minute => MS_PER_MINUTE,
        Window::Hour => MS_PER_HOUR,
        Window::Day | Window::Month => return item.calendar_bounds(now_ms),
    };
    let start = now_ms.div_euclid(len) * len;
    (start, start + len)
}

/// Whether a charge from `before` to `after` crosses `percent` % of `limit`.
#[inline]
pub fn crosses(before: u64, after: u64, limit: u64, percent: u32) -> bool {
    let mark = u128::from(percent) * u128::from(limit);
    u128::from(before) * 100 < mark && mark <= u128::from(after) * 100
}

/// The rules in force and where crossings go.
pub struct Watch {
    rules: RwLock<Arc<RuleSet>>,
    any: AtomicBool,
    crossings: mpsc::UnboundedSender<Crossing>,
}

impl Watch {
    /// A watch with no rules, and the receiving end of its crossings.
    pub fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<Crossing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let watch =
            Self { rules: RwLock::new(Arc::new(RuleSet::default())), any: AtomicBool::new(false), crossings: tx };
        (Arc::new(watch), rx)
    }

    /// Puts `rules` in force.
    pub fn replace(&self, rules: RuleSet) {
        let any = !rules.is_empty();
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rules);
        self.any.store(any, Ordering::Release);
    }

    /// The thresholds one admitted decision crossed (see the module doc); empty, and
    /// nothing allocated, when none was.
    pub fn crossings(
        &self,
        partition: &str,
        items: &[LimitItem],
        amounts: Amounts,
        decision: &Decision,
        now_ms: i64,
    ) -> Vec<Crossing> {
        let mut found = Vec::new();
        if !self.any.load(Ordering::Acquire) || !decision.allowed() {
            return found;
        }
        let rules = self.rules.read().unwrap_or_else(PoisonError::into_inner);
        let rules = rules.for_project(partition);
        if rules.is_empty() {
            return found;
        }
        for (item, status) in items.iter().zip(&decision.statuses) {
            let amount = amounts.get(item.spec.metric);
            let limit = status.spec.limit;
            if amount == 0 || limit == 0 {
                continue;
            }
            let after = status.used;
            let before = after.saturating_sub(amount);
            for rule in rules.iter().filter(|r| r.matcher.matches(&item.spec)) {
                for &threshold in rule.thresholds.iter().filter(|&&t| crosses(before, after, limit, t)) {
                    let (window_start_ms, window_end_ms) = window_of(item, now_ms);
                    found.push(Crossing {
                        rule_id: rule.id.clone(),
                        channels: rule.channels.clone(),
                        project_id: partition.to_owned(),
                        subject: item.subject.clone(),
                        spec: item.spec.clone(),
                        threshold,
                        used: after,
                        window_start_ms,
                        window_end_ms,
                        at_ms: now_ms,
                    });
                }
            }
        }
        found
    }

    /// Whether any rule applies to `partition` (cheap: one map lookup).
    pub fn watches(&self, partition: &str) -> bool {
        self.any.load(Ordering::Acquire)
            && !self.rules.read().unwrap_or_else(PoisonError::into_inner).for_project(partition).is_empty()
    }

    /// Hands crossings to the background outbox writer.
    pub fn defer(&self, crossings: Vec<Crossing>) {
        for crossing in crossings {
            // The receiver lives as long as the server; after shutdown there is nobody
            // to tell.
            let _ = self.crossings.send(crossing);
        }
    }

    /// Looks at one admitted decision and defers what it crossed to the outbox writer.
    pub fn observe(&self, partition: &str, items: &[LimitItem], amounts: Amounts, decision: &Decision, now_ms: i64) {
        let found = self.crossings(partition, items, amounts, decision, now_ms);
        if !found.is_empty() {
            self.defer(found);
        }
    }
}

/// The limiter with crossing detection on every admitted reservation and every
/// charge without a check (`apply`: the ledger replayed at start, ingested usage).
///
/// A reservation that crosses a threshold writes the event to the outbox before it
/// returns (bounded by [`SYNC_OUTBOX_TIMEOUT`]; on failure the background writer
/// retries), so an answered request's crossing survives a `kill -9`; every other
/// reservation pays a comparison. A replayed `apply` that crosses a threshold finds
/// the event again (same id): a crossing lost to a crash before its outbox write is
/// recovered at the next start, and one already written adds nothing.
pub struct AlertingLimiter {
    inner: Arc<dyn Limiter>,
    alerts: Arc<crate::outbox::Alerts>,
}

/// How long a crossing reservation waits for its outbox write.
pub const SYNC_OUTBOX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl AlertingLimiter {
    pub fn new(inner: Arc<dyn Limiter>, alerts: Arc<crate::outbox::Alerts>) -> Self {
        Self { inner, alerts }
    }

    async fn record_now(&self, crossings: Vec<Crossing>) {
        let mut failed = Vec::new();
        for crossing in crossings {
            match tokio::time::timeout(SYNC_OUTBOX_TIMEOUT, self.alerts.write_crossing(&crossing)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => failed.push(crossing),
            }
        }
        self.alerts.watch.defer(failed);
    }
}

#[async_trait]
impl Limiter for AlertingLimiter {
    /// Written out rather than `async`: a project no rule watches gets the inner
    /// limiter's future itself, so the wrapper costs one map lookup and no allocation.
    fn reserve<'life0, 'life1, 'async_trait>(
        &'life0 self,
        request: ReserveRequest<'life1>,
    ) -> Pin<Box<dyn Future<Output = StoreResult<Decision>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        if !self.alerts.watch.watches(request.partition) {
            return self.inner.reserve(request);
        }
        Box::pin(async move {
            let (partition, items, amounts, now_ms) =
                (request.partition, request.items, request.amounts, request.now_ms);
            let decision = self.inner.reserve(request).await?;
            let crossings = self.alerts.watch.crossings(partition, items, amounts, &decision, now_ms);
            if !crossings.is_empty() {
                self.record_now(crossings).await;
            }
            Ok(decision)
        })
    }

    async fn settle(&self, request: SettleRequest<'_>) -> StoreResult<()> {
        self.inner.settle(request).await
    }

    async fn peek(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<Decision> {
        self.inner.peek(partition, items, amounts, now_ms).await
    }

    async fn apply(&self, partition: &str, items: &[LimitItem], amounts: Amounts, at_ms: i64) -> StoreResult<()> {
        self.inner.apply(partition, items, amounts, at_ms).await?;
        if self.alerts.watch.watches(partition) {
            let standing = self.inner.peek(partition, items, Amounts::default(), at_ms).await?;
            let standing = Decision { refused: None, ..standing };
            self.alerts.watch.observe(partition, items, amounts, &standing, at_ms);
        }
        Ok(())
    }

    async fn prune(&self, now_ms: i64) -> StoreResult<usize> {
        self.inner.prune(now_ms).await
    }

    async fn held_reservations(&self) -> StoreResult<usize> {
        self.inner.held_reservations().await
    }
}

#[cfg(test)]
mod tests {
    use tollgate_core::{LimitStatus, Metric};

    use super::*;

    #[test]
    fn a_threshold_lies_in_exactly_one_charge() {
        // 100 single charges against 100: each of 80, 90, 100 % is crossed once.
        for t in [1, 50, 80, 90, 100] {
            let hits = (0..100u64).filter(|&before| crosses(before, before + 1, 100, t)).count();
            assert_eq!(hits, 1, "{t}%");
        }
        // Uneven charges: still once.
        let steps = [0u64, 7, 33, 79, 81, 95, 100];
        let hits = steps.windows(2).filter(|w| crosses(w[0], w[1], 100, 80)).count();
        assert_eq!(hits, 1);
        assert!(!crosses(80, 85, 100, 80), "already past");
        assert!(crosses(0, u64::MAX, u64::MAX, 100), "no overflow");
    }

    fn rule(id: &str, project: Option<&str>, thresholds: &[u32]) -> RuleRecord {
        RuleRecord {
            id: id.into(),
            project_id: project.map(Into::into),
            name: None,
            matcher: LimitMatcher::default(),
            thresholds: thresholds.to_vec(),
            kind: crate::RuleKind::LimitThreshold,
            key_id: None,
            score_threshold: None,
            min_volume: None,
            notify_resolved: false,
            channels: vec!["ch".into()],
            enabled: true,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn project_rules_replace_the_defaults_and_crossings_are_sent() {
        let (watch, mut rx) = Watch::new();
        watch.replace(RuleSet::from_records(&[rule("d", None, &[50]), rule("p", Some("p1"), &[80, 90])]));
        let spec = LimitSpec::new(Metric::Requests, Window::Day, 10);
        let items = [LimitItem::new("key:k", spec.clone())];
        let decision = |used| Decision {
            statuses: vec![LimitStatus { spec: spec.clone(), used, remaining: 10 - used, reset_at_ms: 0 }],
            refused: None,
        };
        for used in 1..=10 {
            watch.observe("p1", &items, Amounts::ONE_REQUEST, &decision(used), 1_000);
            watch.observe("p2", &items, Amounts::ONE_REQUEST, &decision(used), 1_000);
        }
        let mut seen = Vec::new();
        while let Ok(c) = rx.try_recv() {
            seen.push((c.project_id, c.rule_id.to_string(), c.threshold, c.used));
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![("p1".into(), "p".into(), 80, 8), ("p1".into(), "p".into(), 90, 9), ("p2".into(), "d".into(), 50, 5)]
        );
    }
}
