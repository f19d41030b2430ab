//! `[anthropic]`: the Anthropic upstream `POST /v1/messages` is forwarded to
//! (docs/providers.md). The provider key goes as `x-api-key`, with
//! `anthropic-version` unless the client sent its own; timeouts and the pool are
//! `[upstream]`'s.

use serde::{Deserialize, Serialize};

use super::{ConfigError, RawConfig, Secret, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnthropic {
    /// The provider's name in the ledger and in provider-scoped limits.
    pub provider: String,
    /// Base URL including the version path (`/messages` is appended).
    pub base_url: String,
    /// The operator's Anthropic key (also read from `ANTHROPIC_API_KEY`).
    pub api_key: Option<Secret>,
    /// The `anthropic-version` sent when the client sends none.
    pub version: String,
}

impl Default for RawAnthropic {
    fn default() -> Self {
        Self {
            provider: "anthropic".into(),
            base_url: "https://api.anthropic.com/v1".into(),
            api_key: None,
            version: "2023-06-01".into(),
        }
    }
}

/// The checked Anthropic upstream and its provider name.
pub(super) fn anthropic_upstream(raw: &RawConfig) -> Result<(tollgate_providers::UpstreamConfig, String), ConfigError> {
    let anthropic = &raw.anthropic;
    let base_url = anthropic.base_url.trim().trim_end_matches('/').to_owned();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(invalid("anthropic.base_url", format!("'{base_url}' must start with http:// or https://")));
    }
    let version = anthropic.version.trim();
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("anthropic.version", "must be a version like 2023-06-01"));
    }
    let provider = anthropic.provider.trim();
    if provider.is_empty() || provider.len() > 64 {
        return Err(invalid("anthropic.provider", "must be 1 to 64 characters"));
    }
    let config = tollgate_providers::UpstreamConfig {
        base_url,
        api_key: anthropic.api_key.as_ref().map(|s| s.expose().to_owned()).filter(|s| !s.is_empty()),
        connect_timeout: std::time::Duration::from_millis(raw.upstream.connect_timeout_ms),
        read_timeout: std::time::Duration::from_secs(raw.upstream.timeout_secs),
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
        auth: tollgate_providers::UpstreamAuth::XApiKey,
        default_headers: vec![("anthropic-version".to_owned(), version.to_owned())],
    };
    Ok((config, provider.to_owned()))
}
