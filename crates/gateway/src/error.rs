//! What can end a request early, in the pipeline's own words. The server maps each
//! to its HTTP status and OpenAI error code; nothing here knows HTTP.

use tollgate_providers::{RequestError, UpstreamError};
use tollgate_store::StoreError;

use crate::auth::KeyRefusal;

/// Why the upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamFailure {
    /// No answer (or no next chunk) within the read timeout.
    #[error("the upstream provider did not answer within {0}s")]
    Timeout(u64),
    /// Not reachable, or the connection broke.
    #[error("the upstream provider could not be reached")]
    Unavailable,
    /// A 2xx answer whose body is not what the API promises.
    #[error("the upstream provider returned an invalid response")]
    Invalid,
    /// The upstream answered 401 and tollgate has no provider key to send: a gateway
    /// misconfiguration, answered 502 (not the upstream's 401 blaming the client).
    #[error("the gateway has no provider key and the upstream requires one")]
    NoProviderKey,
    /// Every target of the request's route is being skipped (open circuit breaker, a
    /// `Retry-After` not yet over, or its limits spent): answered 503.
    #[error("no target of the route can be tried now")]
    NoTarget,
}

impl UpstreamFailure {
    /// The status a request that ended this way is recorded (and answered) with.
    pub fn status(&self) -> u16 {
        match self {
            UpstreamFailure::Timeout(_) => 504,
            UpstreamFailure::Unavailable | UpstreamFailure::Invalid | UpstreamFailure::NoProviderKey => 502,
            UpstreamFailure::NoTarget => 503,
        }
    }
}

impl From<&UpstreamError> for UpstreamFailure {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Timeout(d) => UpstreamFailure::Timeout(d.as_secs()),
            _ => UpstreamFailure::Unavailable,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request itself is malformed (400).
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The key cannot be used.
    #[error(transparent)]
    Key(#[from] KeyRefusal),
    /// A limit refused the request; the decision travels beside the error.
    #[error("refused by a limit of plan {plan}")]
    Refused { plan: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upstream(#[from] UpstreamFailure),
    /// The project's own provider key is required and missing, or stored and
    /// unusable (bring your own key).
    #[error(transparent)]
    ProviderKey(#[from] crate::byok::ProviderKeyError),
    /// The ledger's queue stayed full for `commit_timeout`: the request was not
    /// admitted (back-pressure; nothing forwarded, nothing charged).
    #[error("the usage ledger is behind")]
    LedgerBacklog,
    /// The upstream answered, but the request's ledger record was not committed
    /// within `commit_timeout` or its commit failed (`durability = "sync"`/`"fsync"`):
    /// the answer is withheld. The record stays queued and is retried.
    #[error("the usage record was not committed: {0}")]
    NotRecorded(String),
    /// A bug: a phase panicked. Recorded, settled and logged.
    #[error("internal error: {0}")]
    Internal(String),
}
