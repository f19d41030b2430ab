//! The storage boundary of tollgate.
//!
//! Four traits, each with a request/receipt vocabulary taken from `tollgate-core`:
//! - [`Catalog`]: projects, plans, keys and admin tokens (durable, changed rarely,
//!   read on every request through [`Catalog::lookup_key`]);
//! - [`Limiter`]: one atomic decision over every limit of a request, then settlement;
//! - [`Ledger`]: the append-only usage ledger, buffered and batched;
//! - [`ProviderKeyStore`]: projects' own provider keys, sealed before they reach it.
//!
//! Stores persist what they are given; the domain (core) and the server decide.
//! [`conformance`] holds the test suite every backend must pass; [`batch`] is the
//! ledger batch writer the SQL backends share, and [`columns`] the backend-agnostic
//! half of their column mapping.

pub mod batch;
pub mod clock;
pub mod columns;
pub mod conformance;
pub mod feed;
pub mod histogram;
pub mod plans;
pub mod provider_keys;
pub mod refusals;
pub mod replay;
pub mod totals;

pub use feed::{FeedRecord, LedgerFeed};
pub use plans::{AuthedCache, PlanCache};
pub use provider_keys::{ProviderKeyCursor, ProviderKeyRecord, ProviderKeyStore};
pub use totals::{CountedSums, TOTALS_PAGE, TotalsPages, TotalsQuery};

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::{Amounts, Decision, KeyHash, KeyRecord, KeyState, Plan, Project, UsageQuery, UsageRecord};

/// The error a store keeps as the cause of an `Unavailable` or `Internal` failure.
///
/// An `Arc` rather than a `Box` so that [`StoreError`] is `Clone`: the ledger batch
/// writer answers every flusher waiting on one write with that write's outcome.
pub type StoreErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a store.
///
/// `message` says what failed in words a log can show on its own (it includes the
/// underlying error's text, as it always has, so nothing is lost where only the
/// message is printed); `source` keeps the underlying error itself for callers that
/// inspect it or walk the chain.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} '{id}' not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot be reached or timed out: a retry may help.
    #[error("store unavailable: {message}")]
    Unavailable {
        message: String,
        #[source]
        source: Option<StoreErrorSource>,
    },
    /// A bug or corrupted data: a retry will not help.
    #[error("store failure: {message}")]
    Internal {
        message: String,
        #[source]
        source: Option<StoreErrorSource>,
    },
}

impl StoreError {
    pub fn not_found(what: &'static str, id: impl Into<String>) -> Self {
        StoreError::NotFound { what, id: id.into() }
    }

    /// `Unavailable` with no underlying error (a timeout, a closed ledger).
    pub fn unavailable(message: impl Into<String>) -> Self {
        StoreError::Unavailable { message: message.into(), source: None }
    }

    /// `Unavailable` caused by `source`.
    pub fn unavailable_with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable { message: message.into(), source: Some(Arc::new(source)) }
    }

    /// `Internal` with no underlying error (an invariant the store checks itself).
    pub fn internal(message: impl Into<String>) -> Self {
        StoreError::Internal { message: message.into(), source: None }
    }

    /// `Internal` caused by `source`.
    pub fn internal_with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Internal { message: message.into(), source: Some(Arc::new(source)) }
    }
}

/// A blocking task that panicked or was cancelled (the runtime is shutting down).
impl From<tokio::task::JoinError> for StoreError {
    fn from(error: tokio::task::JoinError) -> Self {
        if error.is_cancelled() {
            StoreError::unavailable_with_source("store task cancelled: the runtime is shutting down", error)
        } else {
            StoreError::internal_with_source(format!("store task panicked: {error}"), error)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which project an admin token may act on: `None` is the operator (every project).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminScope {
    pub project_id: Option<String>,
}

/// What the stores keep about an admin token (never the token: it is looked up by
/// its hash, and shown once when made).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminTokenRecord {
    /// Names the token in lists and in revoke calls: the first 16 hex digits of the
    /// token's SHA-256 (so tokens made before ids existed have one too).
    pub id: String,
    /// `None`: an operator token (every project).
    pub project_id: Option<String>,
    pub name: Option<String>,
    /// The token's first characters (`tga_` and four more), to tell tokens apart;
    /// `None` for tokens made before prefixes were kept.
    pub prefix: Option<String>,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

impl AdminTokenRecord {
    /// The id a token with this hash gets.
    pub fn id_for(hash: &KeyHash) -> String {
        hash.to_hex()[..16].to_owned()
    }

    pub fn scope(&self) -> AdminScope {
        AdminScope { project_id: self.project_id.clone() }
    }

    /// Whether the token may be used at `now_ms`.
    pub fn state(&self, now_ms: i64) -> KeyState {
        if self.revoked_at_ms.is_some_and(|t| t <= now_ms) {
            KeyState::Revoked
        } else if self.expires_at_ms.is_some_and(|t| t <= now_ms) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }
}

/// A page of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQuery {
    pub project_id: Option<String>,
    /// Keys whose id sorts after this one (ids are the pagination cursor).
    pub after_id: Option<String>,
    pub limit: usize,
}

/// Durable configuration: projects, plans, keys, admin tokens.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Fails with `Conflict` when the id is taken.
    async fn create_project(&self, project: Project) -> StoreResult<Project>;
    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self) -> StoreResult<Vec<Project>>;
    /// Replaces a project's name and settings (`NotFound` if there is no such
    /// project; `created_at_ms` is kept). Returns the project as stored.
    async fn update_project(&self, project: Project) -> StoreResult<Project>;

    /// Creates or replaces a plan.
    async fn put_plan(&self, plan: Plan) -> StoreResult<()>;
    /// Inserts a plan only if no plan of that name exists (seeding). True if inserted.
    async fn insert_plan_if_absent(&self, plan: Plan) -> StoreResult<bool>;
    async fn get_plan(&self, name: &str) -> StoreResult<Option<Plan>>;
    async fn list_plans(&self) -> StoreResult<Vec<Plan>>;
    /// Fails with `Conflict` while keys use the plan. True if it existed.
    async fn delete_plan(&self, name: &str) -> StoreResult<bool>;

    /// Stores a new key and the hash of its secret. `Conflict` if the id exists.
    async fn create_key(&self, record: KeyRecord, secret_hash: KeyHash) -> StoreResult<KeyRecord>;
    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    /// Keys ordered by id.
    async fn list_keys(&self, query: KeyQuery) -> StoreResult<Vec<KeyRecord>>;
    /// Replaces a key's record if its stored version is still `record.version`
    /// (else `Conflict`); returns it with the version bumped.
    async fn update_key(&self, record: KeyRecord) -> StoreResult<KeyRecord>;
    /// Adds a new secret to a key. The secrets it had keep working until
    /// `old_valid_until_ms` (or stop at once when `None`). Bumps the version.
    async fn rotate_key_secret(
        &self,
        id: &str,
        new_hash: KeyHash,
        old_valid_until_ms: Option<i64>,
    ) -> StoreResult<KeyRecord>;
    /// The hot path: the key a secret belongs to, revoked and expired keys included
    /// (the caller decides), or `None` for an unknown or retired secret.
    async fn lookup_key(&self, hash: &KeyHash, now_ms: i64) -> StoreResult<Option<Arc<KeyRecord>>>;

    /// Stores a new admin token's record and hash. `Conflict` if the hash (or id)
    /// is taken.
    async fn create_admin_token(&self, record: AdminTokenRecord, hash: KeyHash) -> StoreResult<AdminTokenRecord>;
    /// The token a hash belongs to, revoked and expired ones included (the caller
    /// decides).
    async fn lookup_admin_token(&self, hash: &KeyHash) -> StoreResult<Option<AdminTokenRecord>>;
    async fn get_admin_token(&self, id: &str) -> StoreResult<Option<AdminTokenRecord>>;
    /// Tokens of one project (`Some`), or every token (`None`), ordered by id.
    async fn list_admin_tokens(&self, project_id: Option<&str>) -> StoreResult<Vec<AdminTokenRecord>>;
    /// Marks a token revoked at `at_ms` (a token already revoked keeps its earlier
    /// time). `None` if there is no such token.
    async fn revoke_admin_token(&self, id: &str, at_ms: i64) -> StoreResult<Option<AdminTokenRecord>>;
    /// Whether an operator token usable at `now_ms` (not revoked, not expired) exists.
    async fn has_operator_token(&self, now_ms: i64) -> StoreResult<bool>;
}

pub use tollgate_core::LimitItem;

/// Check every item and, only if all fit, charge all of them.
#[derive(Clone, Debug)]
pub struct ReserveRequest<'a> {
    /// Every counter a request touches lives in one partition (the project id), so a
    /// distributed store can keep them in one shard and decide in one atomic step.
    pub partition: &'a str,
    /// Identifies the reservation for settlement; a reserve repeated with the same id
    /// while its reservation is held charges nothing more.
    pub request_id: &'a str,
    pub items: &'a [LimitItem],
    pub amounts: Amounts,
    pub now_ms: i64,
    /// Keep a reservation for [`Limiter::settle`]; `false` makes the charge final.
    pub hold: bool,
    /// How long a held reservation waits for its settlement before the store forgets
    /// it (its charge then stays as reserved). The gateway derives it from the
    /// request's total deadline, so a reservation lives as long as its request.
    pub hold_ms: i64,
}

/// The hold of a reservation whose request has no deadline of its own (verify, tests).
pub const DEFAULT_RESERVATION_TTL_MS: i64 = 10 * 60 * 1_000;

/// Replace a held reservation by what was actually used (zero to refund).
#[derive(Clone, Debug)]
pub struct SettleRequest<'a> {
    /// The partition the reservation was made in.
    pub partition: &'a str,
    pub request_id: &'a str,
    pub actual: Amounts,
    pub now_ms: i64,
}

/// Counters for every limit, checked and charged atomically.
#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    async fn reserve(&self, request: ReserveRequest<'_>) -> StoreResult<Decision>;
    /// Applies `actual - reserved` once; a second settle of the same id is a no-op.
    async fn settle(&self, request: SettleRequest<'_>) -> StoreResult<()>;
    /// Each item's standing without charging anything (`refused` is set if `amounts`
    /// would not fit).
    async fn peek(&self, partition: &str, items: &[LimitItem], amounts: Amounts, now_ms: i64) -> StoreResult<Decision>;
    /// Charges without checking, at time `at_ms` (rebuilding counters from the ledger).
    async fn apply(&self, partition: &str, items: &[LimitItem], amounts: Amounts, at_ms: i64) -> StoreResult<()>;
    /// Drops counters with nothing left in their window; returns how many.
    async fn prune(&self, now_ms: i64) -> StoreResult<usize>;
    /// Reservations held and not yet settled (the overrun bound in flight).
    async fn held_reservations(&self) -> StoreResult<usize>;
}

/// The usage ledger. `append` never blocks the request path; `flush` waits until
/// everything appended before it is durable.
#[async_trait]
pub trait Ledger: Send + Sync + 'static {
    /// Queues a record. Idempotent by `record.id`: the first one stored wins.
    fn append(&self, record: UsageRecord);
    /// Stores records durably before returning and reports, for each, whether it was
    /// new (`false`: a record with that id was already stored, nothing changed). The
    /// usage events API charges counters only for new records, so a replayed event
    /// is never counted twice.
    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>>;
    /// Resolves when every record appended before the call is durable.
    async fn flush(&self) -> StoreResult<()>;
    /// A page of records matching the query, newest first (`ts_ms` then `id`, both
    /// descending).
    async fn query(&self, query: UsageQuery) -> StoreResult<Vec<UsageRecord>>;
    /// Every record with `ts_ms >= since_ms`, oldest first. Loads them all: for tests
    /// and tools; the server rebuilds counters from [`usage_totals`](Self::usage_totals).
    async fn records_since(&self, since_ms: i64) -> StoreResult<Vec<UsageRecord>>;
    /// The counted usage of `query`, summed in the store per what limits look at and
    /// per bucket, oldest bucket first, in pages of at most [`TOTALS_PAGE`] (see
    /// [`totals`]): memory stays bounded whatever the ledger holds.
    async fn usage_totals(&self, query: TotalsQuery) -> StoreResult<TotalsPages>;
    /// The counted records of one anonymous visitor in one project with
    /// `ts_ms >= since_ms`, oldest first (`ts_ms`, then `id`), at most `limit` after
    /// the cursor `after` (the last page's final `(ts_ms, id)`). Served by an index on
    /// (project, anonymous id, time): an attach reads only that visitor's records.
    async fn anonymous_records(
        &self,
        project_id: &str,
        anonymous_id: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<UsageRecord>>;
    /// Flushes and stops the writer; later appends are dropped with an error log.
    /// Open refusal aggregates are written first.
    async fn close(&self) -> StoreResult<()>;
    /// Counts a refused request (`record` as it would be appended) into the one
    /// aggregate row of its key, endpoint and status for its minute (see
    /// [`UsageSource::Refusals`](tollgate_core::UsageSource::Refusals)): a client
    /// looping on refusals adds one row a minute, not one per refusal. The row is
    /// written when its minute ends, by [`flush_refusals`](Self::flush_refusals) and
    /// by [`close`](Self::close). Never waits.
    fn record_refusal(&self, record: UsageRecord) {
        self.append(record);
    }
    /// Writes every open refusal aggregate now (tests, exports), then flushes.
    async fn flush_refusals(&self) -> StoreResult<()> {
        self.flush().await
    }
    /// Resolves once the writer's queue is below its capacity (back-pressure: new
    /// requests wait here, so records of answered requests never need dropping).
    async fn room(&self) {}
    /// The writer's queue right now, for `/health` and metrics.
    fn queue(&self) -> LedgerQueue {
        LedgerQueue::default()
    }
    /// How long the writer's batch commits take, for `/metrics`; `None` for a ledger
    /// without a batch writer.
    fn commit_latency(&self) -> Option<histogram::HistogramSnapshot> {
        None
    }
}

/// The ledger writer's queue, as `GET /health` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LedgerQueue {
    /// Records appended and not yet written.
    pub queued: u64,
    /// Above this many, new requests wait for room (back-pressure).
    pub capacity: u64,
    /// Refusal aggregates not yet written (one per key, endpoint, status and minute).
    pub open_refusal_rows: u64,
    pub written: u64,
    pub dropped: u64,
    pub failed_writes: u64,
}
