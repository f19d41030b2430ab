//! Usage records: one per proxied request, verify call or reported event.

use serde::{Deserialize, Serialize};

use crate::limit::Amounts;

/// Where a record's token counts come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// No tokens involved or none known (refused, failed, verify calls).
    #[default]
    None,
    /// The upstream reported them (`usage` block).
    Reported,
    /// tollgate counted them with a tokenizer (no report, or a broken stream).
    Counted,
    /// The request ended before its usage could be known (a panic, or a shutdown
    /// that could not wait): what was reserved is what is recorded and charged.
    Estimated,
    /// Usage an anonymous visitor made before signing up, carried over to their key
    /// (`POST /api/v1/anonymous/attach`). It counts against the key's own limits only:
    /// the project and IP counters already hold it from the visitor's requests.
    Transferred,
    /// Reported by the caller through the usage events API.
    Ingested,
    /// Not one request but the refusals (429 or 400 by a limit) of one key, endpoint
    /// and status within one minute: `requests` is how many, nothing is counted.
    /// Written when the minute ends, or when the ledger closes.
    Refusals,
    /// Answered from tollgate's response cache: nothing was sent upstream, the cost is
    /// zero and `uncached_cost_micros` is what the answer would have cost.
    Cache,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::None => "none",
            UsageSource::Reported => "reported",
            UsageSource::Counted => "counted",
            UsageSource::Estimated => "estimated",
            UsageSource::Transferred => "transferred",
            UsageSource::Ingested => "ingested",
            UsageSource::Refusals => "refusals",
            UsageSource::Cache => "cache",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "none" => UsageSource::None,
            "reported" => UsageSource::Reported,
            "counted" => UsageSource::Counted,
            "estimated" => UsageSource::Estimated,
            "transferred" => UsageSource::Transferred,
            "ingested" => UsageSource::Ingested,
            "refusals" => UsageSource::Refusals,
            "cache" => UsageSource::Cache,
            _ => return None,
        })
    }
}

/// One row of the ledger. `id` makes it idempotent: appending the same id twice
/// stores it once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub id: String,
    /// Unix milliseconds when the request arrived.
    pub ts_ms: i64,
    pub project_id: String,
    pub key_id: String,
    /// `chat.completions`, `completions`, `embeddings`, `models`, `verify`, ...
    pub endpoint: String,
    /// `openai`, `anthropic`, ... (empty when not an LLM call).
    #[serde(default)]
    pub provider: String,
    pub model: Option<String>,
    /// The HTTP status the client got.
    pub status: u16,
    /// Whether the amounts count against limits (false when refused or refunded).
    pub counted: bool,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens served from the provider's prompt cache (part of `prompt_tokens`).
    #[serde(default)]
    pub cached_tokens: u64,
    pub cost_micros: u64,
    /// What the request would have cost without any cache (tollgate's or the
    /// provider's): `uncached_cost_micros - cost_micros` is the saving.
    #[serde(default)]
    pub uncached_cost_micros: u64,
    #[serde(default)]
    pub usage_source: UsageSource,
    /// The price table version that produced `cost_micros`, to reproduce a bill.
    #[serde(default)]
    pub price_version: Option<String>,
    /// The cost is an estimate: the model had no known price and the default price
    /// was used (`pricing.unknown_model`).
    #[serde(default)]
    pub price_estimated: bool,
    /// The client address the limits saw (when IP limits apply).
    #[serde(default)]
    pub client_ip: Option<String>,
    /// The anonymous visitor id the limits saw.
    #[serde(default)]
    pub anonymous_id: Option<String>,
    pub latency_ms: u64,
    /// The upstream's own id of the call (its `x-request-id`), to find it in the
    /// provider's logs.
    #[serde(default)]
    pub upstream_request_id: Option<String>,
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
