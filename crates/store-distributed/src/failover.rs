//! The distributed limiter: Redis with a bound on every call, a circuit breaker, and
//! the configured behaviour while Redis is down (a local limiter with every limit
//! divided by `instances`, or 503).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;
use tollgate_core::{Amounts, Decision};
use tollgate_store::{LimitItem, Limiter, ReserveRequest, SettleRequest, StoreError, StoreResult};
use tollgate_store_embedded::EmbeddedLimiter;
use tollgate_store_redis::RedisLimiter;

use crate::{BREAKER_THRESHOLD, OnStoreError};

/// How long a local decision waits for the ledger's totals at the start of an outage.
const SEED_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Counters of the failover limiter, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct FailoverStats {
    /// Decisions made by the local limiter because Redis was unavailable.
    pub local_decisions: AtomicU64,
    /// Requests refused with 503 because Redis was unavailable (fail closed).
    pub refused_unavailable: AtomicU64,
    /// Times the breaker opened.
    pub breaker_opened: AtomicU64,
}

/// The distributed limiter: Redis, with a timeout on every call, a circuit breaker,
/// and the configured behaviour while Redis is down (see the module documentation).
pub struct FailoverLimiter {
    redis: Arc<RedisLimiter>,
    local: EmbeddedLimiter,
    mode: OnStoreError,
    instances: u64,
    open: AtomicBool,
    failures: AtomicU32,
    /// Reservations the local limiter holds, so their settlement goes there.
    local_held: Mutex<HashSet<String>>,
    recovered: Notify,
    /// The local limiter holds the ledger's day and month totals for this outage.
    seeded: AtomicBool,
    /// A seeding was asked for (by the first local decision of an outage).
    seeding: AtomicBool,
    /// Wakes the seeding job.
    seed_wanted: Notify,
    /// Wakes local decisions waiting for the seed.
    seed_done: Notify,
    stats: FailoverStats,
}

impl FailoverLimiter {
    pub fn new(redis: Arc<RedisLimiter>, mode: OnStoreError, instances: u32) -> Self {
        Self {
            redis,
            local: EmbeddedLimiter::new(),
            mode,
            instances: u64::from(instances.max(1)),
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            local_held: Mutex::new(HashSet::new()),
            recovered: Notify::new(),
            seeded: AtomicBool::new(false),
            seeding: AtomicBool::new(false),
            seed_wanted: Notify::new(),
            seed_done: Notify::new(),
            stats: FailoverStats::default(),
        }
    }

    pub fn stats(&self) -> &FailoverStats {
        &self.stats
    }

    /// True while Redis is considered down.
    pub fn is_down(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens the breaker (logged once per transition).
    pub fn mark_down(&self, why: &str) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.stats.breaker_opened.fetch_add(1, Ordering::Relaxed);
            match self.mode {
                OnStoreError::Open => tracing::warn!(
                    error = why,
                    instances = self.instances,
                    "Redis unavailable: failing OPEN, limits are now counted by this instance alone \
                     (each limit divided by `instances`) until Redis answers again"
                ),
                OnStoreError::Closed => tracing::warn!(
                    error = why,
                    "Redis unavailable: failing CLOSED, limited requests get 503 until Redis answers again"
                ),
            }
        }
    }

    /// Closes the breaker (logged once per transition) and wakes the counter rebuild.
    pub fn mark_up(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("Redis is back: exact shared counting resumed");
            // The next outage starts again from the ledger, not from this one's counts.
            self.seeded.store(false, Ordering::Release);
            self.seeding.store(false, Ordering::Release);
            self.recovered.notify_one();
        }
    }

    /// Resolves when local decisions need the ledger's totals (the first local
    /// decision of an outage): the seeding job then calls [`seed`](Self::seed) for
    /// every counter and [`seeded`](Self::seeded) once done.
    pub async fn seed_wanted(&self) {
        self.seed_wanted.notified().await;
    }

    /// Charges the local limiter with this instance's share (`÷ instances`) of
    /// usage the ledger already holds for `items` in their current windows.
    pub async fn seed(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<()> {
        let local = self.local_items(items);
        let share = Amounts {
            requests: amounts.requests / self.instances,
            input_tokens: amounts.input_tokens / self.instances,
            output_tokens: amounts.output_tokens / self.instances,
            cost_micros: amounts.cost_micros / self.instances,
        };
        self.local.apply(partition, &local, share, now_ms).await
    }

    /// The seed is in (or could not be had): local decisions go ahead.
    pub fn seeded(&self) {
        self.seeded.store(true, Ordering::Release);
        self.seed_done.notify_waiters();
    }

    /// Whether the local limiter holds the ledger's totals for this outage (tests).
    pub fn is_seeded(&self) -> bool {
        self.seeded.load(Ordering::Acquire)
    }

    /// Before a local decision: the first of an outage clears what an earlier outage
    /// counted and asks for the seed; every one waits (bounded) until it is in, so a
    /// spent monthly budget is not handed out again while Redis is down.
    async fn await_seed(&self) {
        if self.seeded.load(Ordering::Acquire) {
            return;
        }
        if !self.seeding.swap(true, Ordering::AcqRel) {
            self.local.clear();
            self.held().clear();
            self.seed_wanted.notify_one();
        }
        let wait = async {
            loop {
                let done = self.seed_done.notified();
                if self.seeded.load(Ordering::Acquire) {
                    return;
                }
                done.await;
            }
        };
        if tokio::time::timeout(SEED_WAIT, wait).await.is_err() {
            tracing::warn!("the ledger's totals did not arrive in time: deciding locally without them");
        }
    }

    /// Resolves the next time the breaker closes.
    pub async fn recovered(&self) {
        self.recovered.notified().await;
    }

    fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn failure(&self, error: &StoreError) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= BREAKER_THRESHOLD {
            self.mark_down(&error.to_string());
        } else {
            tracing::debug!(%error, failures = n, "Redis call failed");
        }
    }

    /// Each limit shared out among the instances (at least 1 where the limit is not 0).
    fn local_items(&self, items: &[LimitItem]) -> Vec<LimitItem> {
        items
            .iter()
            .map(|item| {
                let mut spec = item.spec.clone();
                if spec.limit > 0 {
                    spec.limit = (spec.limit / self.instances).max(1);
                }
                LimitItem { subject: item.subject.clone(), spec, zone: item.zone.clone() }
            })
            .collect()
    }

    /// The answer while Redis is down: `Ok` to decide locally (fail open), or the
    /// error to return (fail closed).
    fn when_down(&self) -> StoreResult<()> {
        match self.mode {
            OnStoreError::Open => {
                self.stats.local_decisions.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            OnStoreError::Closed => {
                self.stats.refused_unavailable.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::unavailable("the counter store (Redis) is unavailable"))
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.local_held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on Redis unless the breaker is open; `None` means "Redis is down".
    async fn try_redis<T, F>(&self, call: F) -> StoreResult<Option<T>>
    where
        F: std::future::Future<Output = StoreResult<T>>,
    {
        if self.is_down() {
            return Ok(None);
        }
        match call.await {
            Ok(value) => {
                self.success();
                Ok(Some(value))
            }
            Err(error @ StoreError::Unavailable { .. }) => {
                self.failure(&error);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Whether the local limiter holds this reservation (tests).
    pub fn holds_locally(&self, request_id: &str) -> bool {
        self.held().contains(request_id)
    }
}

#[async_trait]
impl Limiter for FailoverLimiter {
    async fn reserve(&self, request: ReserveRequest<'_>) -> StoreResult<Decision> {
        if let Some(decision) = self.try_redis(self.redis.reserve(request.clone())).await? {
            return Ok(decision);
        }
        self.when_down()?;
        self.await_seed().await;
        let items = self.local_items(request.items);
        let decision = self.local.reserve(ReserveRequest { items: &items, ..request.clone() }).await?;
        if request.hold && decision.allowed() {
            self.held().insert(request.request_id.to_owned());
        }
        Ok(decision)
    }

    async fn settle(&self, request: SettleRequest<'_>) -> StoreResult<()> {
        if self.held().remove(request.request_id) {
            return self.local.settle(request).await;
        }
        // A reservation made in Redis that cannot be settled now keeps its reserved
        // charge until it expires there: the error is the caller's to log.
        if self.is_down() {
            return Err(StoreError::unavailable("Redis is down: settlement skipped, the estimate stays"));
        }
        let result = self.redis.settle(request).await;
        match &result {
            Ok(()) => self.success(),
            Err(error @ StoreError::Unavailable { .. }) => self.failure(error),
            Err(_) => {}
        }
        result
    }

    async fn peek(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<Decision> {
        if let Some(decision) = self.try_redis(self.redis.peek(partition, items, amounts, now_ms)).await? {
            return Ok(decision);
        }
        self.when_down()?;
        self.await_seed().await;
        let local = self.local_items(items);
        let mut decision = self.local.peek(partition, &local, amounts, now_ms).await?;
        // Report the configured limits, not the local shares, in the statuses' specs.
        for (status, item) in decision.statuses.iter_mut().zip(items) {
            status.spec = item.spec.clone();
        }
        Ok(decision)
    }

    async fn apply(&self, partition: &str, items: &[LimitItem], amounts: Amounts, at_ms: i64) -> StoreResult<()> {
        if self.try_redis(self.redis.apply(partition, items, amounts, at_ms)).await?.is_some() {
            return Ok(());
        }
        self.when_down()?;
        // Counted here until Redis is back; the rebuild job then restores the shared
        // day and month counters from the ledger.
        self.local.apply(partition, &self.local_items(items), amounts, at_ms).await
    }

    async fn prune(&self, now_ms: i64) -> StoreResult<usize> {
        let local = self.local.prune(now_ms).await?;
        let redis = self.redis.prune(now_ms).await?;
        Ok(local + redis)
    }

    async fn held_reservations(&self) -> StoreResult<usize> {
        Ok(self.local.held_reservations().await? + self.redis.held_reservations().await?)
    }
}
