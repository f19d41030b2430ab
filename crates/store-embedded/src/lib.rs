//! The embedded backend of tollgate: one SQLite file for the catalog and the usage
//! ledger, and rate-limit counters in process memory.
//!
//! [`EmbeddedStore::open`] opens (or creates) `<dir>/tollgate.db`, migrates its schema
//! and hands out three parts, each implementing one trait of `tollgate-store` (the
//! store itself also implements `Catalog`, by delegation, and is cheap to clone):
//! - [`EmbeddedCatalog`] ([`Catalog`](tollgate_store::Catalog)): SQLite tables, with
//!   every key secret's hash indexed in memory so `lookup_key` runs no SQL;
//! - [`EmbeddedLimiter`] ([`Limiter`](tollgate_store::Limiter)): counters behind one
//!   mutex, so a decision over several limits is exact and all-or-nothing. They are
//!   not persisted: after a restart the server rebuilds them from sums the ledger
//!   computes (`usage_totals` + `apply`, `tollgate_store::replay`);
//! - [`EmbeddedLedger`] ([`Ledger`](tollgate_store::Ledger)): appends go through a
//!   channel to one writer thread that commits them in batches.
//!
//! Durability: every connection runs in WAL mode. Catalog commits use
//! `synchronous = FULL` and survive a power loss. Ledger commits (a batch acknowledged
//! to `flush`) use `synchronous = NORMAL` by default: they survive the process being
//! killed at any point, which is what `durability = "sync"` promises, and cost no
//! fsync each; a power cut can lose the ledger commits since the last WAL checkpoint.
//! With [`OpenOptions::ledger_fsync`] (`durability = "fsync"`) they use `FULL`: every
//! commit is fsynced and survives a power cut. Measured: one FULL commit took ~3.8 ms
//! on this machine's disk, shared by every response waiting on that group commit.
//! The WAL is bounded: `journal_size_limit` (64 MiB) and a checkpointer that
//! truncates it when a passive checkpoint leaves it larger than that.
//!
//! One process at a time: the key index and the counters live in this process, so two
//! processes sharing a directory would not see each other's writes and would each
//! admit a full limit. [`EmbeddedStore::open`] therefore takes an exclusive OS lock
//! on `<dir>/tollgate.lock` ([`LOCK_FILE`]) and keeps it for as long as the store
//! (or its catalog) lives; a second open of the same directory, from this process or
//! another, fails with an error that names the lock file. The OS releases the lock
//! when the process ends, however it ends (`kill -9` included), so a stale lock file
//! never blocks a restart.

mod alerts;
mod analytics;
mod catalog;
mod feed;
mod ledger;
mod limiter;
mod provider_keys;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::ErrorCode;
use tollgate_core::{KeyHash, KeyRecord, Plan, Project};
use tollgate_store::{AdminTokenRecord, Catalog, KeyQuery, StoreError, StoreResult};

pub use alerts::EmbeddedAlerts;
pub use catalog::EmbeddedCatalog;
pub use ledger::EmbeddedLedger;
pub use limiter::{DEFAULT_VISITOR_CAP, EmbeddedLimiter, RESERVATION_TTL_MS};
pub use provider_keys::EmbeddedProviderKeys;

/// The database file inside the store's directory.
pub const DB_FILE: &str = "tollgate.db";
/// The file locked for as long as a store has the directory open.
pub const LOCK_FILE: &str = "tollgate.lock";

/// The exclusive lock on a store directory; released when dropped (and by the OS
/// when the process ends).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Locks `<dir>/tollgate.lock` without waiting: `Unavailable`, naming the lock
    /// file, when another store holds it.
    fn acquire(dir: &Path) -> StoreResult<DirLock> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
            StoreError::unavailable_with_source(format!("cannot open lock file {}: {e}", path.display()), e)
        })?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::unavailable(format!(
                "data directory {} is in use by another tollgate process (it holds the lock on {}); \
                 stop it, or give this one another data_dir",
                dir.display(),
                path.display()
            ))),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StoreError::unavailable_with_source(format!("cannot lock {}: {e}", path.display()), e))
            }
        }
    }
}

/// How the store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    /// Ledger commits are fsynced (`synchronous = FULL`), not only handed to the OS.
    pub ledger_fsync: bool,
    /// Records the ledger holds in memory at most (`ledger_buffer`); new requests wait
    /// for room once half of it is in use.
    pub ledger_buffer: usize,
    /// Visitor counters (client addresses, anonymous ids) one project may hold in the
    /// limiter (`limits.max_visitors_per_project`); 0: no cap.
    pub visitor_cap: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self { ledger_fsync: false, ledger_buffer: ledger::MAX_RETAINED, visitor_cap: limiter::DEFAULT_VISITOR_CAP }
    }
}

/// The embedded store: a directory holding one SQLite database.
///
/// The parts are shared (`Arc`) so the server can keep them as `Arc<dyn Catalog>`,
/// `Arc<dyn Limiter>` and `Arc<dyn Ledger>`. Clones share the same parts.
#[derive(Clone)]
pub struct EmbeddedStore {
    db_path: PathBuf,
    _lock: Arc<DirLock>,
    catalog: Arc<EmbeddedCatalog>,
    limiter: Arc<EmbeddedLimiter>,
    ledger: Arc<EmbeddedLedger>,
    alerts: EmbeddedAlerts,
    provider_keys: EmbeddedProviderKeys,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("db_path", &self.db_path).finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Creates `dir` if needed, locks it (`<dir>/tollgate.lock`: a second store on the
    /// same directory fails, naming the lock), opens `<dir>/tollgate.db`, applies
    /// pending schema migrations, loads the key index and starts the ledger writer
    /// thread.
    ///
    /// This blocks on file I/O: call it at startup, before serving (or inside
    /// `spawn_blocking`).
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        Self::open_with(dir, OpenOptions::default())
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(dir: &Path, options: OpenOptions) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::unavailable_with_source(format!("cannot create store directory {}: {e}", dir.display()), e)
        })?;
        let lock = Arc::new(DirLock::acquire(dir)?);
        let db_path = dir.join(DB_FILE);
        let mut conn = schema::open_connection(&db_path, schema::Role::Writer)?;
        schema::migrate(&mut conn)?;
        let catalog = Arc::new(EmbeddedCatalog::open(conn, lock.clone())?);
        let alerts = EmbeddedAlerts::new(schema::open_connection(&db_path, schema::Role::Writer)?);
        let provider_keys = EmbeddedProviderKeys::new(schema::open_connection(&db_path, schema::Role::Writer)?);
        let ledger = Arc::new(EmbeddedLedger::open(&db_path, options.ledger_fsync, options.ledger_buffer)?);
        let limiter = Arc::new(EmbeddedLimiter::new());
        limiter.set_visitor_cap(options.visitor_cap);
        Ok(EmbeddedStore { db_path, _lock: lock, catalog, limiter, ledger, alerts, provider_keys })
    }

    /// The path of the SQLite database file.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    pub fn catalog(&self) -> Arc<EmbeddedCatalog> {
        self.catalog.clone()
    }

    pub fn limiter(&self) -> Arc<EmbeddedLimiter> {
        self.limiter.clone()
    }

    pub fn ledger(&self) -> Arc<EmbeddedLedger> {
        self.ledger.clone()
    }

    /// The alert store (rules, channels, the outbox) in the same database.
    pub fn alerts(&self) -> EmbeddedAlerts {
        self.alerts.clone()
    }

    /// Projects' own provider keys (sealed) in the same database.
    pub fn provider_keys(&self) -> EmbeddedProviderKeys {
        self.provider_keys.clone()
    }

    /// Flushes and stops the ledger writer. Catalog writes are durable when they
    /// return, so there is nothing else to close; the connections close on drop.
    pub async fn close(&self) -> StoreResult<()> {
        tollgate_store::Ledger::close(&*self.ledger).await
    }
}

/// The store is its catalog, so `Arc::new(store.clone())` serves as `Arc<dyn Catalog>`.
#[async_trait]
impl Catalog for EmbeddedStore {
    async fn create_project(&self, project: Project) -> StoreResult<Project> {
        self.catalog.create_project(project).await
    }
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        self.catalog.get_project(id).await
    }
    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.catalog.list_projects().await
    }
    async fn update_project(&self, project: Project) -> StoreResult<Project> {
        self.catalog.update_project(project).await
    }
    async fn put_plan(&self, plan: Plan) -> StoreResult<()> {
        self.catalog.put_plan(plan).await
    }
    async fn insert_plan_if_absent(&self, plan: Plan) -> StoreResult<bool> {
        self.catalog.insert_plan_if_absent(plan).await
    }
    async fn get_plan(&self, name: &str) -> StoreResult<Option<Plan>> {
        self.catalog.get_plan(name).await
    }
    async fn list_plans(&self) -> StoreResult<Vec<Plan>> {
        self.catalog.list_plans().await
    }
    async fn delete_plan(&self, name: &str) -> StoreResult<bool> {
        self.catalog.delete_plan(name).await
    }
    async fn create_key(&self, record: KeyRecord, secret_hash: KeyHash) -> StoreResult<KeyRecord> {
        self.catalog.create_key(record, secret_hash).await
    }
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.catalog.get_key(id).await
    }
    async fn list_keys(&self, query: KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        self.catalog.list_keys(query).await
    }
    async fn update_key(&self, record: KeyRecord) -> StoreResult<KeyRecord> {
        self.catalog.update_key(record).await
    }
    async fn rotate_key_secret(
        &self,
        id: &str,
        new_hash: KeyHash,
        old_valid_until_ms: Option<i64>,
    ) -> StoreResult<KeyRecord> {
        self.catalog.rotate_key_secret(id, new_hash, old_valid_until_ms).await
    }
    async fn lookup_key(&self, hash: &KeyHash, now_ms: i64) -> StoreResult<Option<Arc<KeyRecord>>> {
        self.catalog.lookup_key(hash, now_ms).await
    }
    async fn create_admin_token(&self, record: AdminTokenRecord, hash: KeyHash) -> StoreResult<AdminTokenRecord> {
        self.catalog.create_admin_token(record, hash).await
    }
    async fn lookup_admin_token(&self, hash: &KeyHash) -> StoreResult<Option<AdminTokenRecord>> {
        self.catalog.lookup_admin_token(hash).await
    }
    async fn get_admin_token(&self, id: &str) -> StoreResult<Option<AdminTokenRecord>> {
        self.catalog.get_admin_token(id).await
    }
    async fn list_admin_tokens(&self, project_id: Option<&str>) -> StoreResult<Vec<AdminTokenRecord>> {
        self.catalog.list_admin_tokens(project_id).await
    }
    async fn revoke_admin_token(&self, id: &str, at_ms: i64) -> StoreResult<Option<AdminTokenRecord>> {
        self.catalog.revoke_admin_token(id, at_ms).await
    }
    async fn has_operator_token(&self, now_ms: i64) -> StoreResult<bool> {
        self.catalog.has_operator_token(now_ms).await
    }
}

/// Maps a SQLite error to a store error: busy, locked, I/O and full-disk errors may
/// pass on retry (`Unavailable`), a constraint violation is a `Conflict`, anything
/// else is a bug or corruption (`Internal`).
pub(crate) fn sql_error(error: rusqlite::Error) -> StoreError {
    match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(error.to_string()),
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed,
        ) => StoreError::unavailable_with_source(error.to_string(), error),
        _ => StoreError::internal_with_source(error.to_string(), error),
    }
}

/// Like [`sql_error`], but a uniqueness violation becomes a `Conflict` with a message
/// a user can act on.
pub(crate) fn sql_error_or_conflict(message: impl FnOnce() -> String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |error| match error.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict(message()),
        _ => sql_error(error),
    }
}

/// Runs `f` on `conn` in a blocking task (SQLite never blocks an async worker); a
/// poisoned lock only means another call panicked, the connection is still usable.
pub(crate) async fn run_blocking<T: Send + 'static>(
    conn: &std::sync::Arc<std::sync::Mutex<rusqlite::Connection>>,
    f: impl FnOnce(&mut rusqlite::Connection) -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut conn)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_store_on_one_directory_is_refused_naming_the_lock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = EmbeddedStore::open(dir.path()).expect("first open");
        let second = EmbeddedStore::open(dir.path()).expect_err("a second store on the same directory");
        assert!(second.to_string().contains(LOCK_FILE), "{second}");
        // The catalog alone keeps the directory locked.
        let catalog = first.catalog();
        drop(first);
        assert!(EmbeddedStore::open(dir.path()).is_err(), "still locked by the catalog");
        drop(catalog);
        EmbeddedStore::open(dir.path()).expect("the lock is released with the store");
    }
}
