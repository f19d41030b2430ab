//! The PostgreSQL half of tollgate's distributed backend: the catalog (projects,
//! plans, keys, key secrets, admin tokens) and the usage ledger, shared by every
//! gateway instance.
//!
//! [`PostgresStore::open`] connects a small pool (deadpool + tokio-postgres), applies
//! the versioned migrations in `migrations/` that the database has not had yet (one
//! transaction, under an advisory lock, so instances starting together migrate once),
//! and hands out:
//! - [`PostgresCatalog`] ([`Catalog`](tollgate_store::Catalog)): SQL for writes and
//!   cold reads; `lookup_key` served from an in-process cache whose entries carry the
//!   key's version. Writes invalidate the local cache at once and announce the change
//!   through a [`ChangePublisher`] (Redis pub/sub in the server) so other instances
//!   drop their copy; a TTL is the backstop.
//! - [`PostgresLedger`] ([`Ledger`](tollgate_store::Ledger)): `append` is a channel
//!   send; one task writes batches with a single `INSERT ... SELECT FROM UNNEST(...)
//!   ON CONFLICT (id) DO NOTHING` per batch. While PostgreSQL refuses writes, records
//!   wait in memory up to a bound, are retried, and are dropped (counted and logged)
//!   only beyond it.
//!
//! - [`PostgresSemantic`]: the semantic cache's vectors and answers, which every
//!   instance loads into its own index.
//!
//! Nothing but hashes of secrets is stored.

mod alerts;
mod analytics;
mod catalog;
mod changes;
mod cluster;
mod feed;
mod key_cache;
mod ledger;
mod migrate;
mod provider_keys;
mod semantic;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use tollgate_store::{StoreError, StoreResult, columns};

pub use alerts::PostgresAlerts;
pub use catalog::PostgresCatalog;
pub use changes::{CatalogChange, ChangePublisher};
pub use cluster::{InstanceInfo, InstanceRegistry, PgLease};
pub use key_cache::{MAX_UNKNOWN, NEGATIVE_TTL};
pub use ledger::PostgresLedger;
pub use provider_keys::PostgresProviderKeys;
pub use semantic::PostgresSemantic;
/// The writer's counters, shared with the embedded ledger's writer.
pub use tollgate_store::batch::LedgerStats;

/// How to reach PostgreSQL and how much to keep in memory.
#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Schema to work in (`search_path`); `None` for the server's default (`public`).
    /// Tests use a fresh one each.
    pub schema: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest wait for a connection, a connection attempt and one statement.
    pub timeout: Duration,
    /// Usage records held in memory while PostgreSQL refuses writes; beyond this the
    /// oldest are dropped (and counted).
    pub ledger_buffer: usize,
    /// How long a cached key lookup may be served without asking PostgreSQL again,
    /// when no change notice arrives.
    pub key_cache_ttl: Duration,
}

impl PostgresSettings {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: None,
            pool_size: 8,
            timeout: Duration::from_secs(5),
            ledger_buffer: 100_000,
            key_cache_ttl: Duration::from_secs(30),
        }
    }
}

/// The distributed catalog and ledger on one PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    catalog: std::sync::Arc<PostgresCatalog>,
    ledger: std::sync::Arc<PostgresLedger>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

/// A schema name safe to put in `search_path` and DDL unquoted.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit()
}

impl PostgresStore {
    /// Connects, migrates and starts the ledger writer. Fails with `Unavailable` when
    /// PostgreSQL does not answer within the timeout.
    pub async fn open(settings: &PostgresSettings) -> StoreResult<Self> {
        let pool = connect_pool(settings)?;
        if let Some(schema) = &settings.schema {
            let client = pool.get().await.map_err(pool_error)?;
            client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await.map_err(sql_error)?;
        }
        migrate::migrate(&pool).await?;
        let catalog = std::sync::Arc::new(PostgresCatalog::new(pool.clone(), settings.key_cache_ttl));
        let ledger = std::sync::Arc::new(PostgresLedger::start(pool.clone(), settings.ledger_buffer)?);
        Ok(Self { pool, catalog, ledger })
    }

    pub fn catalog(&self) -> std::sync::Arc<PostgresCatalog> {
        self.catalog.clone()
    }

    pub fn ledger(&self) -> std::sync::Arc<PostgresLedger> {
        self.ledger.clone()
    }

    /// The alert store (rules, channels, the outbox) on the same pool.
    pub fn alerts(&self) -> PostgresAlerts {
        PostgresAlerts::new(self.pool.clone())
    }

    /// Projects' own provider keys (sealed) on the same pool.
    pub fn provider_keys(&self) -> PostgresProviderKeys {
        PostgresProviderKeys::new(self.pool.clone())
    }

    /// The semantic cache's durable rows on the same pool.
    pub fn semantic(&self) -> PostgresSemantic {
        PostgresSemantic::new(self.pool.clone())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Drops `schema` and everything in it (tests clean up after themselves).
    pub async fn drop_schema(&self, schema: &str) -> StoreResult<()> {
        if !valid_schema(schema) {
            return Err(StoreError::internal(format!("refusing to drop schema {schema:?}")));
        }
        let client = self.pool.get().await.map_err(pool_error)?;
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.map_err(sql_error)
    }
}

fn connect_pool(settings: &PostgresSettings) -> StoreResult<Pool> {
    let mut config: tokio_postgres::Config =
        settings.url.parse().map_err(|e| StoreError::internal_with_source(format!("database url: {e}"), e))?;
    config.connect_timeout(settings.timeout);
    config.application_name("tollgate");
    // Every statement is bounded: a wedged database surfaces as an error, not a hang.
    // Options given in the URL (`?options=-c%20search_path%3Dtollgate`) are kept.
    let mut options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
    options.push_str(&format!("-c statement_timeout={}", settings.timeout.as_millis().max(1)));
    if let Some(schema) = &settings.schema {
        if !valid_schema(schema) {
            return Err(StoreError::internal(format!(
                "schema {schema:?} must be 1-63 of a-z, 0-9, '_' (not starting with a digit)"
            )));
        }
        options.push_str(&format!(" -c search_path={schema}"));
    }
    config.options(&options);
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(settings.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.timeout))
        .create_timeout(Some(settings.timeout))
        .recycle_timeout(Some(settings.timeout))
        .build()
        .map_err(|e| StoreError::internal_with_source(format!("database pool: {e}"), e))
}

/// Maps a PostgreSQL error: a lost or refused connection, a timeout or a transient
/// server condition is `Unavailable` (a retry may help); a uniqueness violation is a
/// `Conflict`; anything else is `Internal`.
pub(crate) fn sql_error(error: tokio_postgres::Error) -> StoreError {
    let Some(code) = error.code() else {
        // No SQLSTATE: the connection itself failed (I/O, closed, timeout).
        return StoreError::unavailable_with_source(format!("postgres: {error}"), error);
    };
    if *code == SqlState::UNIQUE_VIOLATION {
        return StoreError::Conflict(format!("postgres: {error}"));
    }
    let class = &code.code()[..2];
    let transient = matches!(class, "08" | "53" | "57" | "58" | "40")
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::CANNOT_CONNECT_NOW;
    if transient {
        StoreError::unavailable_with_source(format!("postgres: {error}"), error)
    } else {
        StoreError::internal_with_source(format!("postgres: {error}"), error)
    }
}

/// Like [`sql_error`], but a uniqueness violation becomes a `Conflict` saying what
/// was taken.
pub(crate) fn sql_error_or_conflict(
    message: impl FnOnce(Option<&str>) -> String,
) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |error| {
        if error.code() == Some(&SqlState::UNIQUE_VIOLATION) {
            let constraint = error.as_db_error().and_then(|e| e.constraint());
            StoreError::Conflict(message(constraint))
        } else {
            sql_error(error)
        }
    }
}

pub(crate) fn pool_error(error: PoolError) -> StoreError {
    match error {
        PoolError::Backend(e) => sql_error(e),
        other => StoreError::unavailable_with_source(format!("postgres pool: {other}"), other),
    }
}

/// A non-negative column as `u64`; a negative one is corrupt data.
pub(crate) fn u64_column(row: &Row, index: usize) -> StoreResult<u64> {
    let value: i64 = row.try_get(index).map_err(sql_error)?;
    Ok(columns::u64_from_sql(index, value)?)
}
