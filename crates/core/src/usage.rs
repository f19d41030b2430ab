//! Usage records: one per proxied request, verify call or reported event.

use serde::{Deserialize, Serialize};

use crate::limit::Amounts;

/// One row of the ledger. `id` makes it idempotent: appending the same id twice
/// stores it once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    pub project_id: String,
    pub key_id: String,
    /// `chat.completions`, `completions`, `embeddings`, `models`, `verify`, ...
    pub endpoint: String,
    pub model: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    /// Whether the amounts count against limits (false when refused or refunded).
    pub counted: bool,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
    pub latency_ms: u64,
}

impl UsageRecord {
    /// What this record charges against limits.
    pub fn amounts(&self) -> Amounts {
        if !self.counted {
            return Amounts::default();
        }
        Amounts {
            requests: self.requests,
            input_tokens: self.prompt_tokens,
            output_tokens: self.completion_tokens,
            cost_micros: self.cost_micros,
        }
    }
}

/// A page request over the ledger, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageQuery {
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    /// Inclusive lower bound, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound, Unix milliseconds.
    pub to_ms: Option<i64>,
    /// Continue after this cursor (opaque to callers, produced by the store).
    pub cursor: Option<(i64, String)>,
    pub limit: usize,
}
