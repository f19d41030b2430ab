//! Which store backs the gateway, and the machinery the distributed one needs.
//!
//! [`open`] builds the three stores the handlers use (`Arc<dyn Catalog>`,
//! `Arc<dyn Limiter>`, `Arc<dyn Ledger>`) from `store` in the configuration:
//! - `embedded` (the default): one SQLite file and in-memory counters, exactly as
//!   before; counters are rebuilt from the ledger at start (`tollgate_store::replay::replay_ledger`).
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
//!   restart loses quota state for at most that long ([`rebuild_calendar_counters`]).
//!   One instance of many runs it: the one holding the rebuild lease in Redis
//!   ([`REBUILD_LEASE`], `SET NX PX`, renewed each period, released on shutdown;
//!   another instance takes over within [`rebuild_lease_ttl`] of the holder's death).
//!   Every instance still rebuilds once at start;
//! - the semantic catch-up: this instance's semantic index loads PostgreSQL's rows
//!   at start, then catches up on every [`SEMANTIC_NOTICE`] another instance publishes
//!   after a store, on every (re)subscription, and every [`SEMANTIC_CATCH_UP`];
//! - the breaker probe: while Redis is considered down, pings it and restores exact
//!   counting as soon as it answers.
//!
//! Store outages ([`FailoverLimiter`]): every Redis call is bounded by
//! `redis_timeout_ms`; after [`BREAKER_THRESHOLD`] consecutive failures the breaker
//! opens and requests stop waiting on Redis at all. With `on_store_error = "open"`
//! they are then counted by a local per-instance limiter with every limit divided by
//! `instances`; with `"closed"` they are refused with a 503 in OpenAI's error shape.
//! Each transition is logged once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use tollgate_alerts::AlertStore;
use tollgate_analytics::AnalyticsStore;
use tollgate_cache::CacheError;
use tollgate_cache::semantic::{SemanticRow, SemanticStore};
use tollgate_core::Secret;
use tollgate_store::{Catalog, Ledger, LedgerFeed, Limiter, ProviderKeyStore};
use tollgate_store_embedded::EmbeddedStore;
use tollgate_store_postgres::{
    CatalogChange, ChangePublisher, InstanceRegistry, PgLease, PostgresCatalog, PostgresLedger, PostgresSemantic,
    PostgresSettings, PostgresStore,
};
use tollgate_store_redis::{ChangeBus, KeySpace, RedisCache, RedisConn, RedisLimiter, RedisSettings};

mod failover;
mod jobs;

pub use failover::{FailoverLimiter, FailoverStats};
pub use jobs::{JobContext, rebuild_calendar_counters, seed_local_counters};
pub use tollgate_store_embedded::OpenOptions as EmbeddedOptions;

/// How often plans are reloaded from PostgreSQL in distributed mode, notices or not.
pub const PLAN_REFRESH: Duration = Duration::from_secs(1);
/// Consecutive Redis failures that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 3;
/// How often an open breaker checks whether Redis is back.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a cached key may be served while change notices cannot arrive.
const DEGRADED_KEY_TTL: Duration = Duration::from_secs(1);

/// What to do with requests while the counter store (Redis) is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// The stores the server runs on, and in distributed mode the parts its jobs need.
pub struct Backend {
    pub catalog: Arc<dyn Catalog>,
    pub limiter: Arc<dyn Limiter>,
    pub ledger: Arc<dyn Ledger>,
    /// The hourly rollups of the same ledger (its rows' store).
    pub analytics: Arc<dyn AnalyticsStore>,
    /// Alert rules, channels and the outbox (crates/alerts).
    pub alerts: Arc<dyn AlertStore>,
    /// Projects' own provider keys, sealed (bring your own key).
    pub provider_keys: Arc<dyn ProviderKeyStore>,
    /// The same ledger in commit order, with the sinks' cursors (the usage events
    /// sink, crates/events).
    pub feed: Arc<dyn LedgerFeed>,
    pub distributed: Option<Arc<Distributed>>,
    /// The response cache shared by the instances (Redis); `None` in embedded mode,
    /// where the server keeps one in memory.
    pub cache: Option<Arc<dyn tollgate_cache::CacheStore>>,
    /// The semantic cache's durable rows (PostgreSQL, announced on the change bus);
    /// `None` in embedded mode, where the index lives in memory only.
    pub semantic_store: Option<Arc<dyn SemanticStore>>,
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
    /// The lease (in PostgreSQL) that makes one instance of many run the periodic
    /// counter rebuild.
    pub rebuild_lease: PgLease,
    /// The lease that makes one instance of many run usage retention.
    pub retention_lease: PgLease,
    /// The lease that makes one instance of many evaluate forecast, anomaly and
    /// resolved alert rules.
    pub alerts_evaluate_lease: PgLease,
    /// The lease that makes one instance of many run the usage events sink.
    pub events_lease: PgLease,
    /// This instance in the registry of running instances.
    pub registry: InstanceRegistry,
    /// This instance's id (also its lease holder name).
    pub instance_id: String,
    /// When this instance started (Unix ms).
    pub started_at_ms: i64,
    /// Periodic counter rebuilds this instance ran (it held the lease).
    pub rebuilds: AtomicU64,
}

/// The name of the counter rebuild's lease.
pub const REBUILD_LEASE: &str = "counter-rebuild";
/// The name of usage retention's lease.
pub const RETENTION_LEASE: &str = "retention";
/// How long the retention lease outlives its last renewal.
pub const RETENTION_LEASE_TTL: Duration = Duration::from_secs(300);
/// The name of the alert rules evaluation's lease.
pub const ALERTS_EVALUATE_LEASE: &str = "alerts-evaluate";
/// How long the alerts evaluation lease outlives its last renewal.
pub const ALERTS_EVALUATE_LEASE_TTL: Duration = Duration::from_secs(900);
/// The name of the usage events sink's lease.
pub const EVENTS_LEASE: &str = "usage-events";
/// How long the usage events lease outlives its last renewal (its holder renews it
/// every third of this): a dead holder's sink moves to another instance within it.
pub const EVENTS_LEASE_TTL: Duration = Duration::from_secs(15);
/// How often an instance says it is alive, and how long it counts as running after.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
pub const ALIVE_WITHIN: Duration = Duration::from_secs(30);

/// How long the rebuild lease outlives its last renewal: three rebuild periods (at
/// least three seconds), so a busy holder keeps it, and a dead one hands over within
/// this time.
pub fn rebuild_lease_ttl(every: Duration) -> Duration {
    (every * 3).max(Duration::from_secs(3))
}

/// A holder name unique to this process: random, so two instances on one host (or
/// two containers that are both pid 1) never share it.
fn instance_holder() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: fall back on what differs between processes here.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        return format!("pid{}-{nanos}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Backend {
    pub fn kind(&self) -> &'static str {
        if self.distributed.is_some() { "distributed" } else { "embedded" }
    }
}

/// Opens the configured backend. Embedded: the SQLite store in `data_dir`, opened with
/// `embedded` (its ledger fsyncs every commit with `ledger_fsync`, `durability =
/// "fsync"`; PostgreSQL commits are durable on the server's side either way).
/// Distributed: PostgreSQL must answer (it holds the keys); Redis may be down at
/// start, in which case the server starts with the breaker open.
pub async fn open(
    store: &StoreConfig,
    data_dir: &Path,
    embedded: tollgate_store_embedded::OpenOptions,
) -> anyhow::Result<Backend> {
    let distributed = match store {
        StoreConfig::Embedded => {
            let store = EmbeddedStore::open_with(data_dir, embedded)
                .with_context(|| format!("opening the embedded store in {}", data_dir.display()))?;
            return Ok(Backend {
                catalog: Arc::new(store.clone()),
                limiter: store.limiter(),
                ledger: store.ledger(),
                analytics: store.ledger(),
                alerts: Arc::new(store.alerts()),
                provider_keys: Arc::new(store.provider_keys()),
                feed: store.ledger(),
                distributed: None,
                cache: None,
                semantic_store: None,
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
    let cache: Arc<dyn tollgate_cache::CacheStore> =
        Arc::new(RedisCache::new(conn.clone(), &keys, distributed.redis_timeout));
    let instance_id = instance_holder();
    let rebuild_lease = PgLease::new(
        postgres.pool().clone(),
        REBUILD_LEASE,
        instance_id.clone(),
        rebuild_lease_ttl(distributed.counter_rebuild_every),
    );
    let retention_lease =
        PgLease::new(postgres.pool().clone(), RETENTION_LEASE, instance_id.clone(), RETENTION_LEASE_TTL);
    let alerts_evaluate_lease =
        PgLease::new(postgres.pool().clone(), ALERTS_EVALUATE_LEASE, instance_id.clone(), ALERTS_EVALUATE_LEASE_TTL);
    let events_lease = PgLease::new(postgres.pool().clone(), EVENTS_LEASE, instance_id.clone(), EVENTS_LEASE_TTL);
    let registry = InstanceRegistry::new(postgres.pool().clone());
    let started_at_ms = tollgate_store::clock::now_ms();
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
        rebuild_lease,
        retention_lease,
        alerts_evaluate_lease,
        events_lease,
        registry,
        instance_id,
        started_at_ms,
        rebuilds: AtomicU64::new(0),
    });
    let analytics: Arc<dyn AnalyticsStore> = ledger.clone();
    let alerts: Arc<dyn AlertStore> = Arc::new(parts.postgres.alerts());
    let provider_keys: Arc<dyn ProviderKeyStore> = Arc::new(parts.postgres.provider_keys());
    let feed: Arc<dyn LedgerFeed> = ledger.clone();
    let semantic_store: Arc<dyn SemanticStore> =
        Arc::new(SharedSemantic { rows: parts.postgres.semantic(), bus: parts.bus.clone() });
    Ok(Backend {
        catalog,
        limiter,
        ledger,
        analytics,
        alerts,
        provider_keys,
        feed,
        distributed: Some(parts),
        cache: Some(cache),
        semantic_store: Some(semantic_store),
    })
}

/// The notice an instance publishes on the change bus after storing a semantic cache
/// row: the others catch up from PostgreSQL at once.
pub const SEMANTIC_NOTICE: &str = "semantic";

/// How often every instance catches up with PostgreSQL's semantic cache rows, notices
/// or not (the backstop for a notice missed).
pub const SEMANTIC_CATCH_UP: Duration = Duration::from_secs(5);

/// Semantic cache rows in PostgreSQL, each write announced on the change bus.
struct SharedSemantic {
    rows: PostgresSemantic,
    bus: Arc<ChangeBus>,
}

#[async_trait]
impl SemanticStore for SharedSemantic {
    async fn insert(&self, row: &SemanticRow) -> Result<(), CacheError> {
        self.rows.insert(row).await?;
        if let Err(error) = self.bus.publish(SEMANTIC_NOTICE).await {
            tracing::warn!(%error, "semantic cache entry not announced; other instances see it at their next catch-up");
        }
        Ok(())
    }

    async fn since(&self, since_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<SemanticRow>, CacheError> {
        self.rows.since(since_ms, now_ms, limit).await
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
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
