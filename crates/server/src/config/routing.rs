//! `[providers.NAME]` (more upstreams beside `[upstream]` and `[anthropic]`) and
//! `[routing]` (model aliases, weighted splits, fallbacks and the circuit breaker);
//! docs/providers.md and docs/routing.md.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_router::{BreakerSettings, RouteSpec};

use super::{ConfigError, RawConfig, Secret, invalid};

/// One more provider.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProvider {
    /// `openai` (OpenAI or any OpenAI-compatible base URL), `azure` (Azure OpenAI),
    /// `gemini` (Google's OpenAI-compatible endpoint) or `anthropic`.
    pub kind: ProviderKindName,
    /// Base URL including the version path; `gemini` and `anthropic` have defaults.
    /// Azure: the resource's URL, `https://NAME.openai.azure.com`.
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    /// Azure's `api-version` query parameter.
    pub api_version: Option<String>,
    /// Azure: deployment name by model (a model not listed is its own deployment).
    pub deployments: BTreeMap<String, String>,
    /// Anthropic's `anthropic-version` header.
    pub anthropic_version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKindName {
    #[default]
    Openai,
    Azure,
    Gemini,
    Anthropic,
}

/// `[routing]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRouting {
    /// Model aliases: `fast = ["openai/gpt-4o-mini", "groq/llama-3.1-8b-instant"]`, or
    /// a split `ab = { targets = [...], weights = [50, 50], sticky = "user" }`.
    pub routes: BTreeMap<String, RouteSpec>,
    /// The passive circuit breaker of each routed target.
    pub breaker: BreakerSettings,
    /// Longest wait for a target's response head while another target remains.
    pub attempt_timeout_ms: u64,
    /// The secret of the sticky assignment's hash: set it (the same on every
    /// instance) so callers cannot work out which arm a user id lands in.
    pub sticky_secret: Option<Secret>,
    /// How often providers of routed targets without recent traffic are probed with
    /// `GET /models` (0: never).
    pub probe_every_secs: u64,
}

impl Default for RawRouting {
    fn default() -> Self {
        Self {
            routes: BTreeMap::new(),
            breaker: BreakerSettings::default(),
            attempt_timeout_ms: 30_000,
            sticky_secret: None,
            probe_every_secs: 30,
        }
    }
}

/// A checked extra provider.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: tollgate_gateway::route::ProviderKind,
    pub upstream: tollgate_providers::UpstreamConfig,
}

/// The checked `[routing]`.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    pub routes: Vec<(String, RouteSpec)>,
    pub breaker: BreakerSettings,
    pub attempt_timeout: Duration,
    pub sticky_secret: Vec<u8>,
    pub probe_every: Duration,
}

fn check_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(invalid(field, format!("'{name}' must be 1 to 64 of a-z, 0-9, - and _")));
    }
    Ok(())
}

/// Checks `[providers.*]`; `taken` are the names `[upstream]` and `[anthropic]` use.
pub(super) fn providers(raw: &RawConfig, taken: &[&str]) -> Result<Vec<ProviderConfig>, ConfigError> {
    use tollgate_gateway::route::ProviderKind;
    let mut out = Vec::new();
    for (name, p) in &raw.providers {
        let field = |f: &str| format!("providers.{name}.{f}");
        check_name(&format!("providers.{name}"), name)?;
        if taken.contains(&name.as_str()) {
            return Err(invalid(
                format!("providers.{name}"),
                "is already the name of [upstream] or [anthropic] (upstream.provider, anthropic.provider)",
            ));
        }
        let default_url = match p.kind {
            ProviderKindName::Gemini => Some("https://generativelanguage.googleapis.com/v1beta/openai"),
            ProviderKindName::Anthropic => Some("https://api.anthropic.com/v1"),
            ProviderKindName::Openai | ProviderKindName::Azure => None,
        };
        let base_url = match (&p.base_url, default_url) {
            (Some(url), _) => url.trim().trim_end_matches('/').to_owned(),
            (None, Some(url)) => url.to_owned(),
            (None, None) => return Err(invalid(field("base_url"), "is required for this kind")),
        };
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid(field("base_url"), format!("'{base_url}' must start with http:// or https://")));
        }
        if p.kind != ProviderKindName::Azure && (p.api_version.is_some() || !p.deployments.is_empty()) {
            return Err(invalid(field("api_version"), "api_version and deployments are Azure's (kind = \"azure\")"));
        }
        let mut default_headers = Vec::new();
        let (kind, auth) = match p.kind {
            ProviderKindName::Openai | ProviderKindName::Gemini => {
                (ProviderKind::OpenAi, tollgate_providers::UpstreamAuth::Bearer)
            }
            ProviderKindName::Azure => {
                let api_version = p.api_version.clone().unwrap_or_else(|| "2024-10-21".into());
                if api_version.is_empty()
                    || !api_version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                {
                    return Err(invalid(field("api_version"), "must be a version like 2024-10-21"));
                }
                for (model, deployment) in &p.deployments {
                    if deployment.is_empty() || deployment.len() > 64 {
                        return Err(invalid(field(&format!("deployments.{model}")), "must be 1 to 64 characters"));
                    }
                }
                let deployments = p.deployments.clone().into_iter().collect();
                (ProviderKind::Azure { api_version, deployments }, tollgate_providers::UpstreamAuth::ApiKey)
            }
            ProviderKindName::Anthropic => {
                let version = p.anthropic_version.clone().unwrap_or_else(|| "2023-06-01".into());
                default_headers.push(("anthropic-version".to_owned(), version));
                (ProviderKind::Anthropic, tollgate_providers::UpstreamAuth::XApiKey)
            }
        };
        if p.kind != ProviderKindName::Anthropic && p.anthropic_version.is_some() {
            return Err(invalid(field("anthropic_version"), "is Anthropic's (kind = \"anthropic\")"));
        }
        out.push(ProviderConfig {
            name: name.clone(),
            kind,
            upstream: tollgate_providers::UpstreamConfig {
                base_url,
                api_key: p.api_key.as_ref().map(|s| s.expose().to_owned()).filter(|s| !s.is_empty()),
                connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms),
                read_timeout: Duration::from_secs(raw.upstream.timeout_secs),
                pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
                auth,
                default_headers,
            },
        });
    }
    Ok(out)
}

/// Checks `[routing]`; `providers` are every configured provider's name.
pub(super) fn routing(raw: &RawConfig, providers: &[&str]) -> Result<RoutingConfig, ConfigError> {
    let r = &raw.routing;
    r.breaker.validate().map_err(|e| invalid("routing.breaker", e))?;
    if r.attempt_timeout_ms == 0 {
        return Err(invalid("routing.attempt_timeout_ms", "must be at least 1"));
    }
    for name in r.routes.keys() {
        if name.is_empty() || name.len() > 256 {
            return Err(invalid("routing.routes", format!("route name '{name}' must be 1 to 256 characters")));
        }
    }
    let routes: Vec<(String, RouteSpec)> = r.routes.clone().into_iter().collect();
    let sticky_secret = match &r.sticky_secret {
        Some(s) if !s.expose().is_empty() => s.expose().as_bytes().to_vec(),
        _ => b"tollgate-sticky-v1".to_vec(),
    };
    // The router checks targets and weights; its errors name the route.
    tollgate_router::Router::new(routes.clone(), providers.iter().copied(), &sticky_secret)
        .map_err(|e| invalid("routing.routes", e.to_string()))?;
    Ok(RoutingConfig {
        routes,
        breaker: r.breaker,
        attempt_timeout: Duration::from_millis(r.attempt_timeout_ms),
        sticky_secret,
        probe_every: Duration::from_secs(r.probe_every_secs),
    })
}
