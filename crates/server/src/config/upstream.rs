//! `[upstream]`: the OpenAI-compatible upstream the OpenAI endpoints go to without a
//! route (docs/configuration.md, docs/providers.md).

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    /// The provider's name in the ledger and in provider-scoped limits.
    pub provider: String,
    pub base_url: String,
    pub api_key: Option<Secret>,
    pub connect_timeout_ms: u64,
    pub timeout_secs: u64,
    /// The longest a proxied request may take in all, however steadily its stream
    /// flows; past it a stream ends with an error event and is charged what it
    /// delivered. Reservations are held this long (plus the drain and a margin).
    pub total_timeout_secs: u64,
    pub pool_max_idle_per_host: usize,
    /// Client request headers passed on to the upstream (lower case).
    pub forward_headers: Vec<String>,
    /// A stream whose client left before its usage chunk is still read for this long
    /// (and at most `drain_after_hangup_bytes`), so its reported usage is recorded.
    pub drain_after_hangup_ms: u64,
    pub drain_after_hangup_bytes: usize,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            provider: "openai".into(),
            base_url: "https://api.openai.com/v1".into(),
            api_key: None,
            connect_timeout_ms: 5_000,
            timeout_secs: 600,
            total_timeout_secs: 3_600,
            pool_max_idle_per_host: 512,
            // Never `openai-organization` or `openai-project` by default: they choose
            // what the operator's provider key bills, which is the operator's call,
            // made per tollgate project (project settings `openai_organization`,
            // `openai_project`).
            // W3C trace context goes on, so the upstream's spans join the client's trace.
            // Anthropic's SDKs choose the API version and betas per request.
            forward_headers: vec![
                "openai-beta".into(),
                "anthropic-version".into(),
                "anthropic-beta".into(),
                "traceparent".into(),
                "tracestate".into(),
            ],
            drain_after_hangup_ms: 2_000,
            drain_after_hangup_bytes: 64 * 1024,
        }
    }
}
