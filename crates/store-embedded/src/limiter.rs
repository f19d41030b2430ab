//! Rate-limit and quota counters in process memory.
//!
//! Counters live in [`SHARDS`] shards, each behind its own `std::sync::Mutex`, chosen
//! by the request's partition (its project): every counter one request touches is in
//! one project, so a decision takes one shard's lock once: check all limits, then
//! charge all of them or none. That makes admission exact (N concurrent requests
//! against M remaining admit exactly min(N, M)) and all-or-nothing across limits,
//! while requests of other projects proceed on other shards. The lock is never held
//! across an await; the trait's methods are async only because other backends need it.
//! [`Limiter::prune`] walks one shard at a time, so it never pauses every request.
//!
//! Counters are not persisted. After a restart the server replays the ledger into
//! [`Limiter::apply`] (oldest record first) to rebuild them.
//!
//! Reservations that are never settled (a request task that died, a bug) would pin
//! their counters forever, so [`Limiter::prune`] first forgets reservations whose hold
//! (`ReserveRequest::hold_ms`, derived from the request's total deadline) has run
//! out: their reserved amounts stay charged as if settled with the estimate, which
//! errs on the side of the limit.
//!
//! Client-chosen subjects (client addresses and anonymous visitors, `ip:` and `anon:`)
//! are capped per project ([`EmbeddedLimiter::set_visitor_cap`]): a client rotating
//! addresses or anonymous ids cannot make one project's counters outgrow memory. A
//! request that would need a new visitor counter beyond the cap is refused by that
//! limit until pruning frees room (see docs/quotas.md).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

/// Counter maps hash with foldhash, seeded randomly per process (so clients cannot
/// pick keys that collide: HashDoS stays closed) and several times cheaper than
/// SipHash on these short keys.
type RandomState = foldhash::fast::RandomState;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tollgate_core::{Amounts, Decision, LimitState, LimitStatus, Metric, Refusal, Window};
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest, StoreResult};

/// The hold of a reservation made without a deadline of its own (tests, tools).
pub use tollgate_store::DEFAULT_RESERVATION_TTL_MS as RESERVATION_TTL_MS;

/// Lock shards. Projects map to shards by a hash seeded per process.
pub const SHARDS: usize = 64;

/// Visitor counters (`ip:` and `anon:` subjects) one project may hold by default.
pub const DEFAULT_VISITOR_CAP: usize = 100_000;

/// How long a request refused for want of visitor room is told to wait: the next
/// prune (every minute) frees the counters of visitors gone idle.
const VISITOR_CAP_RETRY_MS: i64 = 60_000;

/// Whose counter, what it counts, over which window, for which scope of traffic
/// (provider, model, endpoint). The limit itself is not part of the key: changing a
/// plan's number keeps what was already counted.
type CounterKey = (Arc<str>, Metric, Window, Option<Arc<str>>, Option<Arc<str>>, Option<Arc<str>>);

/// One item of a held reservation: where it was charged and how much.
struct Held {
    key: CounterKey,
    window_id: i64,
    reserved: u64,
}

struct Reservation {
    reserved_at_ms: i64,
    /// `prune` forgets the reservation once this instant has passed.
    expires_at_ms: i64,
    items: Vec<Held>,
}

#[derive(Default)]
struct State {
    counters: HashMap<CounterKey, LimitState, RandomState>,
    reservations: HashMap<String, Reservation, RandomState>,
    /// Visitor counters per project (in this shard: a project lives in one shard).
    visitors: HashMap<Arc<str>, usize, RandomState>,
}

/// The in-memory limiter. Obtain it from
/// [`EmbeddedStore::limiter`](crate::EmbeddedStore::limiter), or make a standalone one
/// with [`EmbeddedLimiter::new`] (it needs no database).
pub struct EmbeddedLimiter {
    shards: Box<[Mutex<State>]>,
    hasher: RandomState,
    visitor_cap: AtomicUsize,
}

impl Default for EmbeddedLimiter {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(State::default())).collect(),
            hasher: RandomState::default(),
            visitor_cap: AtomicUsize::new(DEFAULT_VISITOR_CAP),
        }
    }
}

impl std::fmt::Debug for EmbeddedLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLimiter").finish_non_exhaustive()
    }
}

/// Whether two items count on the same counter, compared in place (no key built).
fn same_counter(a: &LimitItem, b: &LimitItem) -> bool {
    a.spec.metric == b.spec.metric
        && a.spec.window == b.spec.window
        && a.subject == b.subject
        && a.spec.provider == b.spec.provider
        && a.spec.model == b.spec.model
        && a.spec.endpoint == b.spec.endpoint
}

fn key_of(item: &LimitItem) -> CounterKey {
    let spec = &item.spec;
    (item.subject.clone(), spec.metric, spec.window, spec.provider.clone(), spec.model.clone(), spec.endpoint.clone())
}

/// The project of a client-chosen subject (`ip:<project>:…`, `anon:<project>:…`), or
/// `None` for keys and projects, which only the operator and project admins create.
fn visitor_project(subject: &str) -> Option<&str> {
    let rest = subject.strip_prefix("ip:").or_else(|| subject.strip_prefix("anon:"))?;
    rest.split_once(':').map(|(project, _)| project)
}

/// `actual - reserved` as a signed delta, saturating at the ends of `i64`.
fn delta(actual: u64, reserved: u64) -> i64 {
    let d = i128::from(actual) - i128::from(reserved);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

impl State {
    /// Runs `f` on the counter of `item`, or on a fresh (empty) one that is not kept,
    /// so that checking a limit never allocates a counter.
    fn with_counter<T>(&mut self, item: &LimitItem, now_ms: i64, f: impl FnOnce(&mut LimitState) -> T) -> T {
        match self.counters.get_mut(&key_of(item)) {
            Some(state) => {
                state.set_zone(&item.zone, now_ms);
                f(state)
            }
            None => f(&mut LimitState::in_zone(item.spec.window, now_ms, &item.zone)),
        }
    }

    /// The counter of `item`, made when missing (counting a new visitor of its project).
    fn counter_mut(&mut self, key: CounterKey, item: &LimitItem, now_ms: i64) -> &mut LimitState {
        let visitors = &mut self.visitors;
        let state = self.counters.entry(key).or_insert_with_key(|key| {
            if let Some(project) = visitor_project(&key.0) {
                *visitors.entry(Arc::from(project)).or_default() += 1;
            }
            LimitState::in_zone(item.spec.window, now_ms, &item.zone)
        });
        state.set_zone(&item.zone, now_ms);
        state
    }

    /// The first item that would need a new visitor counter in a project already at
    /// `cap`, if any.
    fn over_visitor_cap(&self, items: &[LimitItem], cap: usize) -> Option<usize> {
        let mut new_visitors: usize = 0;
        for (index, item) in items.iter().enumerate() {
            let Some(project) = visitor_project(&item.subject) else { continue };
            if self.counters.contains_key(&key_of(item)) {
                continue;
            }
            new_visitors += 1;
            if self.visitors.get(project).copied().unwrap_or(0) + new_visitors > cap {
                return Some(index);
            }
        }
        None
    }

    /// Phase 1 of a decision: every item's standing without this request, and the
    /// binding refusal if `amounts` would not fit ([`Refusal::binding`]). Charges nothing.
    fn check(&mut self, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> Decision {
        let mut statuses = Vec::with_capacity(items.len());
        let mut refused = None;
        for (index, item) in items.iter().enumerate() {
            let amount = amounts.get(item.spec.metric);
            // Items sharing a counter (same subject, metric and window) would each be
            // charged: count the earlier ones' share against this one too.
            let earlier: u64 = items[..index]
                .iter()
                .filter(|other| same_counter(other, item))
                .map(|other| amounts.get(other.spec.metric))
                .fold(0, u64::saturating_add);
            let limit = item.spec.limit;
            let (status, retry_at) = self.with_counter(item, now_ms, |state| {
                let used = state.used(now_ms);
                let status = LimitStatus {
                    spec: item.spec.clone(),
                    used,
                    remaining: limit.saturating_sub(used),
                    reset_at_ms: state.reset_at(),
                };
                let fits = used.saturating_add(earlier).saturating_add(amount) <= limit;
                let retry_at = (!fits).then(|| state.retry_at(earlier.saturating_add(amount), limit));
                (status, retry_at)
            });
            if let Some(retry_at_ms) = retry_at {
                let this = Refusal { index, retry_at_ms };
                refused = Some(refused.map_or(this, |r: Refusal| r.binding(this)));
            }
            statuses.push(status);
        }
        Decision { statuses, refused }
    }

    /// Phase 2: charges every item and brings the statuses of phase 1 up to date
    /// (this request's charges included) without looking the counters up again;
    /// returns where each charge went.
    fn charge(
        &mut self,
        items: &[LimitItem],
        amounts: Amounts,
        now_ms: i64,
        statuses: &mut [LimitStatus],
    ) -> Vec<Held> {
        let held: Vec<Held> = items
            .iter()
            .zip(statuses.iter_mut())
            .map(|(item, status)| {
                let key = key_of(item);
                let reserved = amounts.get(item.spec.metric);
                let state = self.counter_mut(key.clone(), item, now_ms);
                let window_id = state.charge(now_ms, reserved);
                status.reset_at_ms = state.reset_at();
                Held { key, window_id, reserved }
            })
            .collect();
        // A counter shared by several items was charged by each of them.
        for (i, item) in items.iter().enumerate() {
            let charged: u64 = items
                .iter()
                .filter(|other| same_counter(other, item))
                .map(|other| amounts.get(other.spec.metric))
                .fold(0, u64::saturating_add);
            let status = &mut statuses[i];
            status.used = status.used.saturating_add(charged);
            status.remaining = status.spec.limit.saturating_sub(status.used);
        }
        held
    }

    /// Every item's standing now, this request's charges included.
    fn statuses(&mut self, items: &[LimitItem], now_ms: i64) -> Vec<LimitStatus> {
        items
            .iter()
            .map(|item| {
                let limit = item.spec.limit;
                self.with_counter(item, now_ms, |state| {
                    let used = state.used(now_ms);
                    LimitStatus {
                        spec: item.spec.clone(),
                        used,
                        remaining: limit.saturating_sub(used),
                        reset_at_ms: state.reset_at(),
                    }
                })
            })
            .collect()
    }

    fn expire_reservations(&mut self, older_than_ms: i64) -> usize {
        let before = self.reservations.len();
        self.reservations.retain(|_, r| r.reserved_at_ms >= older_than_ms);
        before - self.reservations.len()
    }

    /// Forgets expired reservations and idle counters; returns (expired, pruned).
    fn prune(&mut self, now_ms: i64) -> (usize, usize) {
        let before = self.reservations.len();
        self.reservations.retain(|_, r| r.expires_at_ms >= now_ms);
        let expired = before - self.reservations.len();
        let pinned: HashSet<&CounterKey, RandomState> =
            self.reservations.values().flat_map(|r| r.items.iter().map(|h| &h.key)).collect();
        let visitors = &mut self.visitors;
        let before = self.counters.len();
        self.counters.retain(|key, counter| {
            let keep = pinned.contains(key) || !counter.is_idle(now_ms);
            if !keep
                && let Some(project) = visitor_project(&key.0)
                && let Some(count) = visitors.get_mut(project)
            {
                *count = count.saturating_sub(1);
            }
            keep
        });
        visitors.retain(|_, count| *count > 0);
        (expired, before - self.counters.len())
    }
}

impl EmbeddedLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets how many visitor counters (client addresses and anonymous ids) one
    /// project may hold; 0 means no cap.
    pub fn set_visitor_cap(&self, cap: usize) {
        self.visitor_cap.store(if cap == 0 { usize::MAX } else { cap }, Ordering::Relaxed);
    }

    fn shard(&self, partition: &str) -> MutexGuard<'_, State> {
        let index = (self.hasher.hash_one(partition) as usize) % self.shards.len();
        // Every mutation under the lock is a few arithmetic steps on plain integers;
        // a panic between them (a bug) is no reason to stop limiting.
        self.shards[index].lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn each_shard(&self) -> impl Iterator<Item = MutexGuard<'_, State>> {
        self.shards.iter().map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Forgets held reservations made before `older_than_ms`, whatever their hold;
    /// their charges stay as reserved. Returns how many were forgotten. (`prune`
    /// forgets those whose hold has run out.)
    pub fn expire_reservations(&self, older_than_ms: i64) -> usize {
        self.each_shard().map(|mut state| state.expire_reservations(older_than_ms)).sum()
    }

    /// Drops every counter and held reservation (the distributed failover limiter
    /// starts each outage afresh from the ledger's totals).
    pub fn clear(&self) {
        for mut state in self.each_shard() {
            *state = State::default();
        }
    }

    /// Counters currently kept in memory.
    pub fn counters(&self) -> usize {
        self.each_shard().map(|state| state.counters.len()).sum()
    }

    /// Visitor counters `project` holds now.
    pub fn visitors(&self, project: &str) -> usize {
        self.shard(project).visitors.get(project).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Limiter for EmbeddedLimiter {
    async fn reserve(&self, request: ReserveRequest<'_>) -> StoreResult<Decision> {
        let ReserveRequest { partition, request_id, items, amounts, now_ms, hold, hold_ms } = request;
        let cap = self.visitor_cap.load(Ordering::Relaxed);
        let mut state = self.shard(partition);
        if state.reservations.contains_key(request_id) {
            // A retry of a request whose reservation is still held: it was admitted
            // and charged already.
            return Ok(Decision { statuses: state.statuses(items, now_ms), refused: None });
        }
        let mut decision = state.check(items, amounts, now_ms);
        if decision.allowed()
            && let Some(index) = state.over_visitor_cap(items, cap)
        {
            tracing::warn!(
                project = partition,
                cap,
                "refused a request: the project holds as many visitor counters as it may (limits.max_visitors_per_project)"
            );
            decision.refused = Some(Refusal { index, retry_at_ms: Some(now_ms.saturating_add(VISITOR_CAP_RETRY_MS)) });
        }
        if !decision.allowed() {
            return Ok(decision);
        }
        let held = state.charge(items, amounts, now_ms, &mut decision.statuses);
        if hold {
            let expires_at_ms = now_ms.saturating_add(hold_ms.max(0));
            state
                .reservations
                .insert(request_id.to_owned(), Reservation { reserved_at_ms: now_ms, expires_at_ms, items: held });
        }
        Ok(decision)
    }

    async fn settle(&self, request: SettleRequest<'_>) -> StoreResult<()> {
        let mut state = self.shard(request.partition);
        let Some(reservation) = state.reservations.remove(request.request_id) else {
            return Ok(());
        };
        for held in reservation.items {
            let d = delta(request.actual.get(held.key.1), held.reserved);
            if d == 0 {
                continue;
            }
            // Counters referenced by a held reservation are never pruned, so the
            // counter is there; a missing one would have nothing left to adjust.
            if let Some(counter) = state.counters.get_mut(&held.key) {
                counter.adjust(request.now_ms, held.window_id, d);
            }
        }
        Ok(())
    }

    async fn peek(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<Decision> {
        Ok(self.shard(partition).check(items, amounts, now_ms))
    }

    async fn apply(&self, partition: &str, items: &[LimitItem], amounts: Amounts, at_ms: i64) -> StoreResult<()> {
        let mut state = self.shard(partition);
        for item in items {
            let amount = amounts.get(item.spec.metric);
            // Replayed history is what was admitted: it is never refused for the
            // visitor cap (the cap only stops new visitors).
            let counter = state.counter_mut(key_of(item), item, at_ms);
            // A usage record from a calendar window that has already closed must not
            // count in the current one (rebuilds replay oldest first, so this only
            // matters for late records). Sliding windows charge their newest bucket,
            // which can only over-count, never under-count.
            if let LimitState::Calendar(calendar) = counter
                && at_ms < calendar.start_ms()
            {
                continue;
            }
            counter.charge(at_ms, amount);
        }
        Ok(())
    }

    async fn prune(&self, now_ms: i64) -> StoreResult<usize> {
        let (mut expired, mut pruned) = (0, 0);
        // One shard at a time: requests of the other shards' projects go on meanwhile.
        for shard in self.shards.iter() {
            let (e, p) = shard.lock().unwrap_or_else(PoisonError::into_inner).prune(now_ms);
            expired += e;
            pruned += p;
        }
        if expired > 0 {
            tracing::warn!(expired, "forgot reservations never settled; their estimates stay charged");
        }
        Ok(pruned)
    }

    async fn held_reservations(&self) -> StoreResult<usize> {
        Ok(self.each_shard().map(|state| state.reservations.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use tollgate_core::LimitSpec;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn item(limit: u64) -> LimitItem {
        LimitItem::new("key:t", LimitSpec::new(Metric::Requests, Window::Minute, limit))
    }

    fn reserve<'a>(id: &'a str, items: &'a [LimitItem], now_ms: i64) -> ReserveRequest<'a> {
        ReserveRequest {
            partition: "p",
            request_id: id,
            items,
            amounts: Amounts::ONE_REQUEST,
            now_ms,
            hold: true,
            hold_ms: RESERVATION_TTL_MS,
        }
    }

    #[tokio::test]
    async fn prune_keeps_counters_of_held_reservations_until_they_expire() {
        let limiter = EmbeddedLimiter::new();
        let items = [item(10)];
        assert!(limiter.reserve(reserve("r1", &items, NOW)).await.unwrap().allowed());
        // Two minutes on, the charge has left the window, but the reservation pins it.
        assert_eq!(limiter.prune(NOW + 120_000).await.unwrap(), 0);
        assert_eq!(limiter.counters(), 1);
        // Past the TTL the reservation is forgotten and the counter goes with it.
        assert_eq!(limiter.prune(NOW + RESERVATION_TTL_MS + 1).await.unwrap(), 1);
        assert_eq!(limiter.held_reservations().await.unwrap(), 0);
        assert_eq!(limiter.counters(), 0);
        // A late settlement of a forgotten reservation is a harmless no-op.
        let settle = SettleRequest {
            partition: "p",
            request_id: "r1",
            actual: Amounts::default(),
            now_ms: NOW + RESERVATION_TTL_MS + 2,
        };
        limiter.settle(settle).await.unwrap();
    }

    #[tokio::test]
    async fn expire_reservations_keeps_the_charge() {
        let limiter = EmbeddedLimiter::new();
        let items = [item(10)];
        limiter.reserve(reserve("r1", &items, NOW)).await.unwrap();
        limiter.reserve(reserve("r2", &items, NOW + 1_000)).await.unwrap();
        assert_eq!(limiter.expire_reservations(NOW + 500), 1);
        assert_eq!(limiter.held_reservations().await.unwrap(), 1);
        let settle =
            SettleRequest { partition: "p", request_id: "r1", actual: Amounts::default(), now_ms: NOW + 2_000 };
        limiter.settle(settle).await.unwrap();
        let peek = limiter.peek("p", &items, Amounts::default(), NOW + 2_000).await.unwrap();
        assert_eq!(peek.statuses[0].used, 2, "an expired reservation's charge stays");
    }

    #[tokio::test]
    async fn items_sharing_a_counter_are_checked_together() {
        let limiter = EmbeddedLimiter::new();
        let items = [item(3), item(3)];
        let request = ReserveRequest {
            partition: "p",
            request_id: "r",
            items: &items,
            amounts: Amounts::requests(2),
            now_ms: NOW,
            hold: false,
            hold_ms: 0,
        };
        let decision = limiter.reserve(request).await.unwrap();
        assert_eq!(decision.refused.map(|r| r.index), Some(1), "2 + 2 does not fit 3");
        assert_eq!(limiter.counters(), 0, "a refused check allocates no counter");
    }

    #[tokio::test]
    async fn apply_ignores_closed_calendar_windows() {
        let limiter = EmbeddedLimiter::new();
        let month = LimitItem::new("key:t", LimitSpec::new(Metric::Requests, Window::Month, 10));
        let items = [month];
        let next_month = tollgate_core::calendar::next_month_start(NOW);
        limiter.apply("p", &items, Amounts::requests(2), next_month).await.unwrap();
        limiter.apply("p", &items, Amounts::requests(5), NOW).await.unwrap();
        let peek = limiter.peek("p", &items, Amounts::default(), next_month).await.unwrap();
        assert_eq!(peek.statuses[0].used, 2);
    }

    fn visitor(n: u32) -> LimitItem {
        let spec =
            LimitSpec::new(Metric::Requests, Window::Day, 50).with_subject(tollgate_core::SubjectKind::Anonymous);
        LimitItem::new(format!("anon:p:visitor-{n}"), spec)
    }

    #[tokio::test]
    async fn a_project_holds_at_most_its_visitor_cap_of_counters() {
        let limiter = EmbeddedLimiter::new();
        limiter.set_visitor_cap(2);
        for n in 0..2 {
            let items = [item(1_000), visitor(n)];
            let decision = limiter.reserve(reserve(&format!("v{n}"), &items, NOW)).await.unwrap();
            assert!(decision.allowed(), "visitor {n}");
        }
        assert_eq!(limiter.visitors("p"), 2);
        // A third visitor would need a third counter: refused by the visitor's limit,
        // told to come back after the next prune; nothing is charged.
        let items = [item(1_000), visitor(2)];
        let decision = limiter.reserve(reserve("v2", &items, NOW)).await.unwrap();
        let refusal = decision.refused.expect("over the cap");
        assert_eq!(refusal.index, 1);
        assert_eq!(refusal.retry_at_ms, Some(NOW + VISITOR_CAP_RETRY_MS));
        assert_eq!(decision.statuses[0].used, 2, "the key's counter was not charged");
        // Known visitors go on; other projects are not affected.
        let items = [visitor(1)];
        assert!(limiter.reserve(reserve("v1-again", &items, NOW)).await.unwrap().allowed());
        // Once visitors go idle (a new day) and are pruned, there is room again.
        limiter.expire_reservations(i64::MAX);
        limiter.prune(NOW + 2 * tollgate_core::calendar::MS_PER_DAY).await.unwrap();
        assert_eq!(limiter.visitors("p"), 0);
        let items = [visitor(2)];
        let later = NOW + 2 * tollgate_core::calendar::MS_PER_DAY;
        assert!(limiter.reserve(reserve("v2-later", &items, later)).await.unwrap().allowed());
        // Replayed history is never refused for the cap.
        limiter.set_visitor_cap(1);
        limiter.apply("p", &[visitor(7), visitor(8)], Amounts::ONE_REQUEST, later).await.unwrap();
        assert_eq!(limiter.visitors("p"), 3);
    }

    #[tokio::test]
    async fn one_projects_lock_does_not_stop_another_project() {
        let limiter = Arc::new(EmbeddedLimiter::new());
        // Find a project on another shard than "p", then hold "p"'s shard.
        let shard_of = |p: &str| (limiter.hasher.hash_one(p) as usize) % SHARDS;
        let other = (0..).map(|i| format!("other-{i}")).find(|p| shard_of(p) != shard_of("p")).unwrap();
        let held = limiter.shard("p");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let background = limiter.clone();
        std::thread::spawn(move || {
            let items = [item(10)];
            let request = ReserveRequest { partition: &other, ..reserve("o1", &items, NOW) };
            let decision = futures_lite_block_on(background.reserve(request));
            done_tx.send(decision.map(|d| d.allowed())).unwrap();
        });
        let answer = done_rx.recv_timeout(std::time::Duration::from_secs(30));
        drop(held);
        assert!(matches!(answer, Ok(Ok(true))), "a decision in another project went on: {answer:?}");
    }

    /// Runs a future that never waits on I/O (the limiter's) to completion.
    fn futures_lite_block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }
}
