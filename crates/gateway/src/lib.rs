//! The request pipeline of tollgate, transport-free: no HTTP framework here. The
//! server reads requests off the wire and writes answers back; everything in between
//! is a phase of this crate, in the spirit of Pingora's `ProxyHttp`:
//!
//! 1. **authenticate** ([`auth`]): the presented key → a usable key and its plan;
//! 2. **admit** ([`admit`]): the request view ([`tollgate_providers::RequestView`],
//!    parsed once) → which limits count it → the estimate → one reservation over all
//!    of them; a refusal is recorded and answered;
//!    then the **cache** phase ([`cache`], then [`semantic`]): a hit answers without
//!    forwarding;
//! 3. **route** and **forward** ([`proxy`]): the upstream call, in a tracked task so a
//!    client that hangs up cannot cut it short, with the project's own provider key
//!    when it has one ([`byok`]);
//! 4. **stream back** ([`stream`]): the answer passes through chunk by chunk while
//!    its usage is read;
//! 5. **settle and record** ([`settle`]): the ledger record and the settlement of the
//!    reservation. A [`settle::Settlement`] is made at admission and records on every
//!    exit path: an outcome given to it, or its `Drop` (a panic, a dropped task).
//!
//! The verify endpoint ([`verify`]) and usage ingestion go through the same
//! authenticate and admit phases. New capabilities (the cache, the router) add a
//! phase here, not a branch in a handler.

pub mod access;
pub mod admit;
pub mod auth;
pub mod byok;
pub mod cache;
pub mod count;
pub mod error;
pub mod forward;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod semantic;
pub mod settle;
pub mod stream;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::HeaderName;
use tokio_util::task::TaskTracker;
use tollgate_pricing::PriceTable;
use tollgate_providers::Upstream;
use tollgate_store::{Catalog, Ledger, Limiter, PlanCache};

pub use error::{GatewayError, UpstreamFailure};
pub use tollgate_store::clock::now_ms;

/// What the pipeline needs from the configuration.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// The upstream provider's name (`upstream.provider`), for scoped limits and records.
    pub provider: String,
    /// The Anthropic upstream's provider name (`anthropic.provider`): what
    /// `/v1/messages` requests are recorded and limited under.
    pub anthropic_provider: String,
    /// The plan whose limits count anonymous visitors on top of the key's own.
    pub anonymous_plan: String,
    /// Output tokens reserved for a request that sets no `max_tokens` (per choice).
    pub default_max_output_tokens: u64,
    /// Most output tokens one request may reserve (`max_tokens` × `n` × `best_of` ×
    /// prompts); an explicit request for more is a 400.
    pub max_reserved_output_tokens: u64,
    /// What a model without a known price costs when a cost limit applies.
    pub unknown_model: UnknownModelPolicy,
    /// Whether answers wait for their ledger record to be durable (`durability =
    /// "sync"` or `"fsync"`).
    pub durable_responses: bool,
    /// How long an answer waits for its commit (and a new request for room in the
    /// ledger's queue) before it becomes a 503 (`commit_timeout_ms`).
    pub commit_timeout: std::time::Duration,
    /// The built-in price table with the configured overrides.
    pub prices: Arc<PriceTable>,
    /// Client headers passed through to the upstream.
    pub forward_headers: Vec<HeaderName>,
    /// How long a stream whose client left is still read for its usage chunk.
    pub drain_after_hangup: std::time::Duration,
    /// How much of such a stream is read at most.
    pub drain_after_hangup_bytes: usize,
    /// The longest a proxied request may take from admission to its last byte
    /// (`upstream.total_timeout_secs`); a stream past it ends with an error event.
    pub total_timeout: std::time::Duration,
    /// Whether and how one access-log line is written per request (`access_log`,
    /// `log_format`).
    pub access_log: access::AccessLog,
    /// Largest encoded cache entry stored (`cache.max_entry_bytes`).
    pub cache_max_entry_bytes: usize,
    /// Longest wait for one cache lookup or store (`cache.timeout_ms`): past it, a miss.
    pub cache_timeout: std::time::Duration,
    /// The model conversations are embedded with for the semantic cache
    /// (`cache.semantic_embedding_model`).
    pub semantic_embedding_model: String,
    /// Longest wait for the embedding call of a semantic lookup, and for a semantic
    /// store (`cache.semantic_timeout_ms`): past it, a miss.
    pub semantic_timeout: std::time::Duration,
}

/// How much longer than its request's deadline (and drain) a reservation is held:
/// room for the settlement itself, which runs after the stream ends.
pub const RESERVATION_MARGIN: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl GatewaySettings {
    /// How long a proxied request's reservation is held: as long as the request may
    /// run (its total deadline, then the drain after a hang-up) and a margin for the
    /// settlement, so a long stream never outlives its reservation.
    pub fn reservation_hold_ms(&self) -> i64 {
        let hold = self.total_timeout + self.drain_after_hangup + RESERVATION_MARGIN;
        i64::try_from(hold.as_millis()).unwrap_or(i64::MAX)
    }
}

/// How a model the price table does not know is priced (`pricing.unknown_model`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnknownModelPolicy {
    /// A request subject to a cost limit is refused with a 400 naming the model;
    /// other requests are recorded at the default price, marked estimated.
    #[default]
    Refuse,
    /// The table's default price (`pricing.default_price`), marked estimated.
    DefaultPrice,
}

/// The pipeline's shared state: the stores behind their traits, the upstream, the
/// plan cache and the settings ([`GatewayParts`], read through `Deref`). A clone is one
/// reference count: a request clones it for its forwarding task, its settlement and
/// its commit wait.
#[derive(Clone)]
pub struct Gateway(Arc<GatewayParts>);

impl Gateway {
    pub fn new(parts: GatewayParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for Gateway {
    type Target = GatewayParts;

    fn deref(&self) -> &GatewayParts {
        &self.0
    }
}

/// What a [`Gateway`] shares.
pub struct GatewayParts {
    pub catalog: Arc<dyn Catalog>,
    pub limiter: Arc<dyn Limiter>,
    pub ledger: Arc<dyn Ledger>,
    pub upstream: Arc<Upstream>,
    /// The Anthropic upstream `/v1/messages` goes to (`[anthropic]`).
    pub anthropic: Arc<Upstream>,
    /// The providers (those two and `[providers.*]`), the routes over them and each
    /// routed target's health (see [`route`]).
    pub routing: Arc<route::Routing>,
    pub plans: Arc<PlanCache>,
    pub settings: Arc<GatewaySettings>,
    /// Work that must finish before shutdown completes (upstream calls whose client
    /// left, settlements).
    pub tasks: TaskTracker,
    pub ids: Arc<RequestIds>,
    /// What `/metrics` reports (atomics; see [`metrics`]).
    pub metrics: Arc<metrics::Metrics>,
    /// The response cache (in memory, or Redis shared by the instances); used only
    /// for projects whose cache is on.
    pub cache: Option<Arc<dyn tollgate_cache::CacheStore>>,
    /// The semantic cache's index (and in distributed mode its PostgreSQL store); used
    /// only for projects with `cache.semantic` on.
    pub semantic: Option<Arc<tollgate_cache::semantic::SemanticCache>>,
    /// Projects' own provider keys (bring your own key, [`byok`]); `None`: every
    /// request goes with the operator's key.
    pub provider_keys: Option<Arc<byok::ProviderKeys>>,
}

/// Request ids unique across processes: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let prefix = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Self { prefix, next: AtomicU64::new(0) }
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("req_{:016x}{:012x}", self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}
