//! Which store backs the server, and the machinery the distributed one needs.
//!
//! [`open`] builds the three stores the handlers use (`Arc<dyn Catalog>`,
//! `Arc<dyn Limiter>`, `Arc<dyn Ledger>`) from `store` in the configuration:
//! - `embedded` (the default): one SQLite file and in-memory counters, exactly as
//!   before; counters are rebuilt from the ledger at start (`startup::rebuild_counters`).
//! - `distributed`: PostgreSQL for the catalog and ledger, Redis for counters and for
//!   catalog change notices, so any number of instances enforce limits as one.
//!
//! In distributed mode the pieces that keep instances in step run as background jobs
//! ([`Backend::spawn_jobs`]):
//! - the change subscriber: a key change announced by any instance drops this
//!   instance's cached copy (within milliseconds); a plan change reloads the plan
//!   cache; a (re)subscription drops the whole key cache, as notices may have been
//!   missed, and while the subscription is down cached keys live at most one second;
//! - the plan refresher: reloads plans every [`PLAN_REFRESH`] whatever happens;
//! - the counter rebuild: raises Redis's day and month counters to what the ledger
//!   holds, every `counter_rebuild_secs` and as soon as Redis comes back, so a Redis
//!   restart loses quota state for at most that long ([`rebuild_calendar_counters`]);
//! - the breaker probe: while Redis is considered down, pings it and restores exact
//!   counting as soon as it answers.
//!
//! Store outages ([`FailoverLimiter`]): every Redis call is bounded by
//! `redis_timeout_ms`; after [`BREAKER_THRESHOLD`] consecutive failures the breaker
//! opens and requests stop waiting on Redis at all. With `on_store_error = "open"`
//! they are then counted by a local per-instance limiter with every limit divided by
//! `instances`; with `"closed"` they are refused with a 503 in OpenAI's error shape.
//! Each transition is logged once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_core::calendar::{day_start, month_start};
use tollgate_core::{Amounts, Decision, Window};
use tollgate_store::{Catalog, Ledger, LimitItem, Limiter, ReserveRequest, SettleRequest, StoreError, StoreResult};
use tollgate_store_embedded::{EmbeddedLimiter, EmbeddedStore};
use tollgate_store_postgres::{
    CatalogChange, ChangePublisher, PostgresCatalog, PostgresLedger, PostgresSettings, PostgresStore,
};
use tollgate_store_redis::{BusEvent, CalendarTarget, ChangeBus, KeySpace, RedisConn, RedisLimiter, RedisSettings};

use crate::config::{ConfigError, RawConfig, Secret};
use crate::state::{AppState, now_ms};
use crate::traffic::{Traffic, limit_items};

/// How often plans are reloaded from PostgreSQL in distributed mode, notices or not.
pub const PLAN_REFRESH: Duration = Duration::from_secs(1);
/// Consecutive Redis failures that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// How often an open breaker checks whether Redis is back.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a cached key may be served while change notices cannot arrive.
const DEGRADED_KEY_TTL: Duration = Duration::from_secs(1);

/// What to do with requests while the counter store (Redis) is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStoreError {
    /// Keep serving, each instance counting on its own with `limit / instances`.
    Open,
    /// Refuse with 503.
    Closed,
}

/// The distributed store's settings, checked.
#[derive(Clone, Debug)]
pub struct DistributedConfig {
    pub redis_url: Secret,
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub redis_timeout: Duration,
    pub database_url: Secret,
    pub database_pool_size: usize,
    pub database_timeout: Duration,
    pub on_store_error: OnStoreError,
    pub instances: u32,
    pub ledger_buffer: usize,
    pub key_cache_ttl: Duration,
    pub counter_rebuild_every: Duration,
}

/// Which backend the server runs on.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Embedded,
    Distributed(Box<DistributedConfig>),
}

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.to_owned(), message: message.into() }
}

impl StoreConfig {
    /// Checks `store` and the settings it needs; every error names its setting.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        match raw.store.as_str() {
            "embedded" => Ok(StoreConfig::Embedded),
            "distributed" => {
                let redis_url = raw
                    .redis_url
                    .clone()
                    .filter(|u| !u.expose().trim().is_empty())
                    .ok_or_else(|| invalid("redis_url", "is required with store = \"distributed\""))?;
                let schemes: &[&str] = &["redis://", "rediss://", "unix://", "redis+unix://"];
                for node in redis_url.expose().split(',').map(str::trim) {
                    if !schemes.iter().any(|s| node.starts_with(s)) {
                        return Err(invalid("redis_url", "must start with redis:// or rediss://"));
                    }
                }
                if !raw.redis_cluster && redis_url.expose().contains(',') {
                    return Err(invalid("redis_url", "lists several nodes: set redis_cluster = true for a cluster"));
                }
                let database_url = raw
                    .database_url
                    .clone()
                    .filter(|u| !u.expose().trim().is_empty())
                    .ok_or_else(|| invalid("database_url", "is required with store = \"distributed\""))?;
                let db = database_url.expose();
                if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
                    return Err(invalid("database_url", "must start with postgres://"));
                }
                let on_store_error = match raw.on_store_error.as_str() {
                    "open" => OnStoreError::Open,
                    "closed" => OnStoreError::Closed,
                    other => {
                        return Err(invalid("on_store_error", format!("'{other}' must be \"open\" or \"closed\"")));
                    }
                };
                if !(1..=60_000).contains(&raw.redis_timeout_ms) {
                    return Err(invalid("redis_timeout_ms", "must be between 1 and 60000"));
                }
                if raw.instances == 0 {
                    return Err(invalid("instances", "must be at least 1"));
                }
                if raw.ledger_buffer == 0 {
                    return Err(invalid("ledger_buffer", "must be at least 1"));
                }
                if !(1..=1024).contains(&raw.database_pool_size) {
                    return Err(invalid("database_pool_size", "must be between 1 and 1024"));
                }
                if raw.counter_rebuild_secs == 0 {
                    return Err(invalid("counter_rebuild_secs", "must be at least 1"));
                }
                Ok(StoreConfig::Distributed(Box::new(DistributedConfig {
                    redis_url,
                    redis_cluster: raw.redis_cluster,
                    redis_key_prefix: raw.redis_key_prefix.clone(),
                    redis_timeout: Duration::from_millis(raw.redis_timeout_ms),
                    database_url,
                    database_pool_size: raw.database_pool_size,
                    database_timeout: Duration::from_secs(5),
                    on_store_error,
                    instances: raw.instances,
                    ledger_buffer: raw.ledger_buffer,
                    key_cache_ttl: Duration::from_secs(raw.key_cache_ttl_secs),
                    counter_rebuild_every: Duration::from_secs(raw.counter_rebuild_secs),
                })))
            }
            other => Err(invalid("store", format!("'{other}' must be \"embedded\" or \"distributed\""))),
        }
    }
}

/// The stores the server runs on, and in distributed mode the parts its jobs need.
pub struct Backend {
    pub catalog: Arc<dyn Catalog>,
    pub limiter: Arc<dyn Limiter>,
    pub ledger: Arc<dyn Ledger>,
    pub distributed: Option<Arc<Distributed>>,
}

/// The distributed backend's parts.
pub struct Distributed {
    pub config: DistributedConfig,
    pub redis: Arc<RedisLimiter>,
    pub limiter: Arc<FailoverLimiter>,
    pub catalog: Arc<PostgresCatalog>,
    pub ledger: Arc<PostgresLedger>,
    pub bus: Arc<ChangeBus>,
    pub postgres: PostgresStore,
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        if self.distributed.is_some() { "distributed" } else { "embedded" }
    }
}

/// Opens the configured backend. Embedded: the SQLite store in `data_dir`.
/// Distributed: PostgreSQL must answer (it holds the keys); Redis may be down at
/// start, in which case the server starts with the breaker open.
pub async fn open(config: &crate::config::Config) -> anyhow::Result<Backend> {
    let distributed = match &config.store {
        StoreConfig::Embedded => {
            let store = EmbeddedStore::open(&config.data_dir)
                .with_context(|| format!("opening the embedded store in {}", config.data_dir.display()))?;
            return Ok(Backend {
                catalog: Arc::new(store.clone()),
                limiter: store.limiter(),
                ledger: store.ledger(),
                distributed: None,
            });
        }
        StoreConfig::Distributed(d) => d,
    };
    let mut pg = PostgresSettings::new(distributed.database_url.expose());
    pg.pool_size = distributed.database_pool_size;
    pg.timeout = distributed.database_timeout;
    pg.ledger_buffer = distributed.ledger_buffer;
    pg.key_cache_ttl = distributed.key_cache_ttl;
    let postgres = PostgresStore::open(&pg).await.context("opening PostgreSQL (setting `database_url`)")?;

    let redis_settings = RedisSettings {
        url: distributed.redis_url.expose().to_owned(),
        cluster: distributed.redis_cluster,
        timeout: distributed.redis_timeout,
    };
    let conn = RedisConn::connect(&redis_settings).await.context("connecting to Redis (setting `redis_url`)")?;
    let keys = KeySpace::new(distributed.redis_key_prefix.clone());
    let redis = Arc::new(RedisLimiter::new(conn.clone(), keys.clone(), distributed.redis_timeout));
    let limiter = Arc::new(FailoverLimiter::new(redis.clone(), distributed.on_store_error, distributed.instances));
    // Scripts loaded now so the first request finds them; a Redis that is down at
    // start is the same outage as one that goes down later.
    let startup_timeout = distributed.redis_timeout.max(Duration::from_secs(2));
    match tokio::time::timeout(startup_timeout, redis.preload()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => limiter.mark_down(&e.to_string()),
        Err(_) => limiter.mark_down("no answer at start"),
    }
    let bus = Arc::new(ChangeBus::new(conn, redis_settings, &keys));
    let catalog = postgres.catalog();
    catalog.set_publisher(Arc::new(BusPublisher(bus.clone())));
    let ledger = postgres.ledger();
    let parts = Arc::new(Distributed {
        config: (**distributed).clone(),
        redis,
        limiter: limiter.clone(),
        catalog: catalog.clone(),
        ledger: ledger.clone(),
        bus,
        postgres,
    });
    Ok(Backend { catalog, limiter, ledger, distributed: Some(parts) })
}

/// Announces catalog changes on Redis pub/sub.
struct BusPublisher(Arc<ChangeBus>);

#[async_trait]
impl ChangePublisher for BusPublisher {
    async fn publish(&self, change: CatalogChange) {
        if let Err(error) = self.0.publish(&change.encode()).await {
            tracing::warn!(
                %error,
                change = %change.encode(),
                "catalog change not announced; other instances see it when their cache entry expires"
            );
        }
    }
}

// ----- the limiter with a breaker and a local fallback -----

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
            self.recovered.notify_one();
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
                LimitItem { subject: item.subject.clone(), spec }
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
                Err(StoreError::unavailable("the counter store (Redis) is unavailable".to_owned()))
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
            return Err(StoreError::unavailable("Redis is down: settlement skipped, the estimate stays".to_owned()));
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

// ----- background jobs -----

impl Backend {
    /// Starts the distributed backend's jobs (nothing in embedded mode). They stop
    /// when `cancel` fires; `tracker` lets shutdown wait for them.
    pub fn spawn_jobs(&self, state: &AppState, cancel: &CancellationToken, tracker: &TaskTracker) {
        let Some(parts) = &self.distributed else { return };
        let plans_changed = Arc::new(Notify::new());

        // Change notices -> key cache and plan cache. Until the first subscription
        // is up, notices cannot arrive: cached keys live one second at most.
        parts.catalog.set_short_ttl(Some(DEGRADED_KEY_TTL));
        {
            let (parts, cancel, plans_changed) = (parts.clone(), cancel.clone(), plans_changed.clone());
            tracker.spawn(async move {
                let catalog = parts.catalog.clone();
                parts
                    .bus
                    .run_subscriber(cancel.cancelled_owned(), move |event| match event {
                        BusEvent::Subscribed => {
                            catalog.set_short_ttl(None);
                            catalog.clear_cache();
                            plans_changed.notify_one();
                        }
                        BusEvent::Lost => catalog.set_short_ttl(Some(DEGRADED_KEY_TTL)),
                        BusEvent::Message(text) => match CatalogChange::decode(&text) {
                            Some(change @ CatalogChange::Key { .. }) => catalog.apply_change(&change),
                            Some(CatalogChange::Plan { .. }) => plans_changed.notify_one(),
                            Some(CatalogChange::AdminToken) => {}
                            None => tracing::debug!(notice = %text, "ignoring an unknown catalog notice"),
                        },
                    })
                    .await;
            });
        }

        // Plans: on notice and every PLAN_REFRESH.
        {
            let (state, cancel) = (state.clone(), cancel.clone());
            tracker.spawn(async move {
                let mut failing = false;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = plans_changed.notified() => {}
                        () = tokio::time::sleep(PLAN_REFRESH) => {}
                    }
                    match state.catalog.list_plans().await {
                        Ok(plans) => {
                            state.plans.replace_all(plans);
                            if failing {
                                tracing::info!("plans reloaded from PostgreSQL again");
                            }
                            failing = false;
                        }
                        Err(error) => {
                            if !failing {
                                tracing::warn!(%error, "cannot reload plans; serving the last ones loaded");
                            }
                            failing = true;
                        }
                    }
                }
            });
        }

        // Breaker probe.
        {
            let (parts, cancel) = (parts.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(PROBE_EVERY) => {}
                    }
                    if parts.limiter.is_down() && parts.redis.preload().await.is_ok() {
                        parts.limiter.mark_up();
                    }
                }
            });
        }

        // Counter rebuild: periodically and as soon as Redis is back.
        {
            let (state, parts, cancel) = (state.clone(), parts.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = parts.limiter.recovered() => {}
                        () = tokio::time::sleep(parts.config.counter_rebuild_every) => {}
                    }
                    if parts.limiter.is_down() {
                        continue;
                    }
                    match rebuild_calendar_counters(&state, &parts, now_ms()).await {
                        Ok(raised) if raised > 0 => {
                            tracing::info!(raised, "day and month counters raised to the ledger's totals");
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(error = %format!("{error:#}"), "counter rebuild failed"),
                    }
                }
            });
        }
    }

    /// The start-up counterpart of `startup::rebuild_counters` for the distributed
    /// backend: raise (never add to) the shared counters. Returns how many were raised.
    pub async fn rebuild_at_start(&self, state: &AppState, now: i64) -> anyhow::Result<usize> {
        let Some(parts) = &self.distributed else { return Ok(0) };
        if parts.limiter.is_down() {
            tracing::warn!("Redis unavailable at start: counters will be rebuilt when it answers");
            return Ok(0);
        }
        rebuild_calendar_counters(state, parts, now).await
    }
}

/// Raises every day and month counter in Redis to at least the usage the PostgreSQL
/// ledger holds for its current window (one SQL aggregate, one Redis call per
/// project). Counters never go down: what Redis counted beyond the ledger (requests
/// in flight, records not yet written) stays. Returns how many counters were raised.
///
/// This is what makes Redis derived data: after a restart or failover that lost
/// counters, quotas are exact again within one run of this job.
pub async fn rebuild_calendar_counters(state: &AppState, parts: &Distributed, now: i64) -> anyhow::Result<usize> {
    let since = month_start(now);
    let today = day_start(now);
    let totals = parts.ledger.usage_totals_since(since, today).await.context("summing the ledger")?;
    let anonymous_plan = state.plans.get(&state.config.anonymous_plan);
    let mut keys = crate::auth::AuthedCache::default();
    // partition -> counter key -> target
    let mut targets: HashMap<String, HashMap<String, CalendarTarget>> = HashMap::new();
    for total in &totals {
        let record = &total.record;
        let Some(authed) = keys.get(state, &record.key_id).await? else { continue };
        let amounts = record.amounts();
        for item in limit_items(authed, &Traffic::of_record(record), anonymous_plan.as_deref()) {
            let (window_start_ms, counts) = match item.spec.window {
                Window::Month => (since, true),
                Window::Day => (today, total.today),
                Window::Minute | Window::Hour => continue,
            };
            if !counts {
                continue;
            }
            let amount = amounts.get(item.spec.metric);
            let counter = parts.redis.keys().counter(&record.project_id, &item);
            let target = targets
                .entry(record.project_id.clone())
                .or_default()
                .entry(counter)
                .or_insert_with(|| CalendarTarget { item, window_start_ms, amount: 0 });
            target.amount = target.amount.saturating_add(amount);
        }
    }
    let mut raised = 0;
    for (partition, counters) in targets {
        let counters: Vec<CalendarTarget> = counters.into_values().collect();
        raised += parts
            .redis
            .raise_calendar_counters(&partition, &counters, now)
            .await
            .with_context(|| format!("raising the counters of project {partition}"))?;
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distributed() -> RawConfig {
        RawConfig {
            store: "distributed".into(),
            redis_url: Some(Secret::new("redis://127.0.0.1:6379")),
            database_url: Some(Secret::new("postgres://postgres@127.0.0.1/tollgate")),
            ..RawConfig::default()
        }
    }

    fn setting_of(raw: RawConfig) -> String {
        match StoreConfig::from_raw(&raw) {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn embedded_is_the_default_and_distributed_needs_both_urls() {
        assert!(matches!(StoreConfig::from_raw(&RawConfig::default()), Ok(StoreConfig::Embedded)));
        let Ok(StoreConfig::Distributed(d)) = StoreConfig::from_raw(&distributed()) else {
            panic!("a complete distributed configuration is accepted");
        };
        assert_eq!((d.on_store_error, d.instances), (OnStoreError::Open, 1));
        assert_eq!(d.redis_timeout, Duration::from_millis(200));
        assert_eq!(setting_of(RawConfig { redis_url: None, ..distributed() }), "redis_url");
        assert_eq!(setting_of(RawConfig { database_url: None, ..distributed() }), "database_url");
        assert_eq!(setting_of(RawConfig { store: "sqlite".into(), ..distributed() }), "store");
    }

    #[test]
    fn every_bad_value_names_its_setting() {
        let cases: Vec<(RawConfig, &str)> = vec![
            (RawConfig { on_store_error: "maybe".into(), ..distributed() }, "on_store_error"),
            (RawConfig { instances: 0, ..distributed() }, "instances"),
            (RawConfig { redis_timeout_ms: 0, ..distributed() }, "redis_timeout_ms"),
            (RawConfig { ledger_buffer: 0, ..distributed() }, "ledger_buffer"),
            (RawConfig { database_pool_size: 0, ..distributed() }, "database_pool_size"),
            (RawConfig { counter_rebuild_secs: 0, ..distributed() }, "counter_rebuild_secs"),
            (RawConfig { redis_url: Some(Secret::new("http://redis")), ..distributed() }, "redis_url"),
            (RawConfig { redis_url: Some(Secret::new("redis://a:1,redis://b:2")), ..distributed() }, "redis_url"),
            (RawConfig { database_url: Some(Secret::new("mysql://db")), ..distributed() }, "database_url"),
        ];
        for (raw, setting) in cases {
            assert_eq!(setting_of(raw), setting);
        }
        let cluster =
            RawConfig { redis_cluster: true, redis_url: Some(Secret::new("redis://a:1,redis://b:2")), ..distributed() };
        assert!(StoreConfig::from_raw(&cluster).is_ok(), "a cluster lists several seed nodes");
    }

    #[test]
    fn secrets_in_urls_never_print() {
        let raw = RawConfig {
            redis_url: Some(Secret::new("redis://:hunter2@127.0.0.1:6379")),
            database_url: Some(Secret::new("postgres://u:hunter2@127.0.0.1/db")),
            ..distributed()
        };
        let config = StoreConfig::from_raw(&raw).expect("valid");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
