//! Configuration: built-in defaults, then a TOML file, then environment variables.
//!
//! Parse, then validate: [`RawConfig`] is what serde reads (unknown fields refused),
//! [`Config`] is what the rest of the server uses, and every startup error names the
//! setting at fault. Precedence, lowest first: defaults, `OPENAI_BASE_URL` /
//! `OPENAI_API_KEY`, the file (`--config` or `TOLLGATE_CONFIG`), `TOLLGATE_*`
//! variables (nested keys with `__`, e.g. `TOLLGATE_UPSTREAM__BASE_URL`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
pub use tollgate_core::Secret;
use tollgate_core::limit::{default_plans, is_slug};
use tollgate_core::{LimitSpec, Plan};
pub use tollgate_store_distributed::OnStoreError;

mod alerts;
mod analytics;
mod anthropic;
mod cache;
mod dashboard;
mod env;
mod events;
mod otlp;
mod routing;
mod secrets;
mod store;
mod upstream;

use alerts::alerts_settings;
pub use alerts::{AlertsSettings, RawAlerts};
use analytics::analytics_settings;
pub use analytics::{AnalyticsSettings, RawAnalytics};
pub use anthropic::RawAnthropic;
use cache::cache_settings;
pub use cache::{CacheSettings, RawCache};
use dashboard::dashboard_settings;
pub use dashboard::{DashboardSettings, RawDashboard};
pub use env::ENV_KEYS;
use env::unknown_env_var;
use events::events_settings;
pub use events::{EventsSettings, RawEvents};
pub use otlp::{OtlpSettings, RawOtlp};
pub use routing::{ProviderConfig, ProviderKindName, RawProvider, RawRouting, RoutingConfig};
pub use secrets::{ByokSettings, RawByok, RawSecrets, SecretsSettings};
pub use upstream::RawUpstream;

/// The file and environment shape of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: String,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub admin_token: Option<Secret>,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub upstream: RawUpstream,
    /// The Anthropic upstream of `/v1/messages` (docs/providers.md).
    pub anthropic: RawAnthropic,
    /// More providers, by name (docs/providers.md).
    pub providers: BTreeMap<String, RawProvider>,
    /// Model aliases, splits, fallbacks and the circuit breaker (docs/routing.md).
    pub routing: RawRouting,
    pub plans: BTreeMap<String, RawPlan>,
    pub limits: RawLimits,
    /// `sync`: a response ends only once its ledger record is committed to disk (a
    /// group commit shared by concurrent requests), so a 2xx survives `kill -9`.
    /// `async`: records are committed in the background, at most a batch is lost.
    /// `fsync`: like `sync`, and the embedded ledger fsyncs every commit
    /// (`synchronous = FULL`), so a 2xx also survives a power cut.
    pub durability: Durability,
    /// How long a response waits for its ledger commit (and a new request for room
    /// in the ledger's queue) before it becomes a 503.
    pub commit_timeout_ms: u64,
    /// Price overrides and additions, by model id.
    pub prices: BTreeMap<String, tollgate_pricing::PriceOverride>,
    /// A model the price table does not know: `refuse` (a 400 naming the model when
    /// a cost limit applies) or `default_price` (priced at `default_price`); either
    /// way its records are marked `price_estimated`.
    pub unknown_model_policy: UnknownModelPolicy,
    /// The price of models the table does not know (gpt-4o's rates unless set).
    pub default_price: Option<tollgate_pricing::PriceOverride>,
    // Distributed store (`store = "distributed"`), see docs/configuration.md.
    pub redis_url: Option<Secret>,
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub redis_timeout_ms: u64,
    pub database_url: Option<Secret>,
    pub database_pool_size: usize,
    pub on_store_error: OnStoreError,
    pub instances: u32,
    pub ledger_buffer: usize,
    pub key_cache_ttl_secs: u64,
    pub counter_rebuild_secs: u64,
    /// Browser origins allowed to call tollgate (CORS), e.g. `https://app.example.com`,
    /// or `["*"]` for any. Empty (the default): no CORS headers at all.
    pub cors_allowed_origins: Vec<String>,
    /// One access-log line per request (target `access`, in `log_format`).
    pub access_log: bool,
    /// Usage analytics: query bounds and retention (see docs/analytics.md).
    pub analytics: RawAnalytics,
    /// OTLP export of spans (off by default; docs/observability.md).
    pub otlp: RawOtlp,
    /// Alerts: the master key of sealed secrets, outbound safety, retries (docs/alerts.md).
    pub alerts: RawAlerts,
    /// The master key every sealed secret is sealed with (channel secrets, projects'
    /// provider keys), and the older keys that still open (docs/providers.md).
    pub secrets: RawSecrets,
    /// Bring your own key: the base URLs projects' own provider keys may use.
    pub byok: RawByok,
    /// The response cache's bounds (see docs/caching.md).
    pub cache: RawCache,
    /// The dashboard at `/dashboard` (see docs/dashboard.md).
    pub dashboard: RawDashboard,
    /// The usage events sink to NATS JetStream (off unless `nats_url` is set;
    /// docs/events.md).
    pub events: RawEvents,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Trust this many proxies in front of tollgate: the client IP is the entry that
    /// many hops from the right of `X-Forwarded-For`. 0 uses the socket address.
    pub forwarded_for_hops: usize,
    /// The plan whose limits apply to requests carrying `X-Anonymous-Id`.
    pub anonymous_plan: String,
    /// Output tokens reserved when a request sets no `max_tokens`.
    pub default_max_output_tokens: u64,
    /// Unknown or malformed keys one client address may present in a minute before it
    /// is refused (429 `too_many_invalid_keys`) until the minute ends; 0: no brake.
    pub invalid_keys_per_minute: u32,
    /// Most output tokens one request may reserve: `max_tokens` × `n` × `best_of` ×
    /// prompts. An explicit request for more is a 400.
    pub max_reserved_output_tokens: u64,
    /// Visitor counters (client addresses and anonymous ids) one project may hold in
    /// the in-process limiter; a request that needs one more is refused by its
    /// anonymous or IP limit until idle visitors are pruned. 0: no cap.
    pub max_visitors_per_project: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            forwarded_for_hops: 0,
            anonymous_plan: "anonymous".into(),
            default_max_output_tokens: 4096,
            invalid_keys_per_minute: 60,
            max_reserved_output_tokens: 1_000_000,
            max_visitors_per_project: 100_000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlan {
    #[serde(default)]
    pub description: Option<String>,
    pub limits: Vec<LimitSpec>,
    /// IANA zone of the plan's day and month windows (default: the project's, else UTC).
    #[serde(default)]
    pub time_zone: Option<tollgate_core::Zone>,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            store: StoreKind::Embedded,
            admin_token: None,
            log_format: LogFormat::Text,
            max_body_bytes: 4 * 1024 * 1024,
            shutdown_grace_secs: 30,
            upstream: RawUpstream::default(),
            anthropic: RawAnthropic::default(),
            providers: BTreeMap::new(),
            routing: RawRouting::default(),
            limits: RawLimits::default(),
            durability: Durability::Sync,
            commit_timeout_ms: 5_000,
            prices: BTreeMap::new(),
            unknown_model_policy: UnknownModelPolicy::Refuse,
            default_price: None,
            redis_url: None,
            redis_cluster: false,
            redis_key_prefix: "tg:".into(),
            redis_timeout_ms: 200,
            database_url: None,
            database_pool_size: 16,
            on_store_error: OnStoreError::Open,
            instances: 1,
            ledger_buffer: 100_000,
            key_cache_ttl_secs: 30,
            counter_rebuild_secs: 60,
            cors_allowed_origins: Vec::new(),
            access_log: true,
            analytics: RawAnalytics::default(),
            otlp: RawOtlp::default(),
            alerts: RawAlerts::default(),
            secrets: RawSecrets::default(),
            byok: RawByok::default(),
            cache: RawCache::default(),
            dashboard: RawDashboard::default(),
            events: RawEvents::default(),
            plans: default_plans()
                .into_iter()
                .map(|p| (p.name, RawPlan { description: p.description, limits: p.limits, time_zone: p.time_zone }))
                .collect(),
        }
    }
}

/// How logs are written (`log_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Which store backs the gateway (`store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite and in-memory counters in `data_dir`: one instance, nothing to install.
    Embedded,
    /// Redis for counters, PostgreSQL for the catalog and ledger: many instances.
    Distributed,
}

/// How a model without a known price is priced (`unknown_model_policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownModelPolicy {
    /// Refused with a 400 naming the model when a cost limit applies.
    Refuse,
    /// Priced at `default_price`.
    DefaultPrice,
}

/// When an answer may end (`durability`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Only once its ledger record is committed (a group commit shared by
    /// concurrent requests), so a 2xx survives `kill -9`.
    Sync,
    /// Like `sync`, and every embedded ledger commit is fsynced (`synchronous =
    /// FULL`), so a 2xx also survives a power cut. PostgreSQL commits are fsynced
    /// by the server in both modes.
    Fsync,
    /// At once; records are committed in the background, at most a batch is lost.
    Async,
}

/// The checked configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin_token: Option<Secret>,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub upstream: tollgate_providers::UpstreamConfig,
    /// The Anthropic upstream of `/v1/messages` (`[anthropic]`).
    pub anthropic: tollgate_providers::UpstreamConfig,
    /// Its provider name (`anthropic.provider`).
    pub anthropic_provider: String,
    /// `[providers.*]`.
    pub providers: Vec<ProviderConfig>,
    /// `[routing]`.
    pub routing: RoutingConfig,
    /// Client headers passed through to the upstream.
    pub forward_headers: Vec<axum::http::HeaderName>,
    /// Plans created on first start (never overwritten afterwards).
    pub seed_plans: Vec<Plan>,
    pub forwarded_for_hops: usize,
    /// See `RawLimits::invalid_keys_per_minute`.
    pub invalid_keys_per_minute: u32,
    pub anonymous_plan: String,
    /// The upstream provider's name (`upstream.provider`).
    pub provider: String,
    pub default_max_output_tokens: u64,
    pub max_reserved_output_tokens: u64,
    /// See `RawLimits::max_visitors_per_project`.
    pub max_visitors_per_project: usize,
    pub unknown_model_policy: tollgate_gateway::UnknownModelPolicy,
    /// How long and how much of a stream whose client left is still read.
    pub drain_after_hangup: Duration,
    /// The total deadline of a proxied request (`upstream.total_timeout_secs`).
    pub total_timeout: Duration,
    pub drain_after_hangup_bytes: usize,
    /// Whether responses wait for their ledger record to be durable.
    pub durable_responses: bool,
    /// Whether the embedded ledger fsyncs every commit (`durability = "fsync"`).
    pub ledger_fsync: bool,
    /// See `RawConfig::commit_timeout_ms`.
    pub commit_timeout: Duration,
    /// Usage records the ledger holds in memory at most (`ledger_buffer`, both
    /// stores); new requests wait for room once half of it is in use.
    pub ledger_buffer: usize,
    /// The built-in price table with the configured overrides.
    pub prices: std::sync::Arc<tollgate_pricing::PriceTable>,
    /// The storage backend and its settings (`store`, `redis_url`, `database_url`, ...).
    pub store: tollgate_store_distributed::StoreConfig,
    /// Origins allowed by CORS; empty: CORS is off. `["*"]`: any origin.
    pub cors_allowed_origins: Vec<axum::http::HeaderValue>,
    pub access_log: bool,
    /// Query bounds and retention of usage analytics (`[analytics]`).
    pub analytics: AnalyticsSettings,
    /// Where spans are exported (`[otlp]`); `None`: not exported.
    pub otlp: Option<OtlpSettings>,
    /// Alerts (`[alerts]`).
    pub alerts: AlertsSettings,
    /// The master key of sealed secrets (`[secrets]`, else `[alerts]`).
    pub secrets: SecretsSettings,
    /// Bring your own key (`[byok]`).
    pub byok: ByokSettings,
    /// The response cache's bounds (`[cache]`).
    pub cache: CacheSettings,
    /// Whether the dashboard is served, and its sessions' lifetime (`[dashboard]`).
    pub dashboard: DashboardSettings,
    /// The usage events sink (`[events]`); `None`: off.
    pub events: Option<EventsSettings>,
}

/// A configuration error that names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    #[error("configuration setting `{setting}`: {message}")]
    Invalid { setting: String, message: String },
}

fn invalid(setting: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.into(), message: message.into() }
}

/// Headers the gateway owns: the client's key must never reach the provider, and
/// hop-by-hop or framing headers are the HTTP client's business.
const NEVER_FORWARDED: &[&str] = &[
    "authorization",
    "x-api-key",
    "proxy-authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "keep-alive",
];

/// What `tollgate config check` prints for a secret that is set.
pub const REDACTED: &str = "<redacted>";

/// Parses `listen`: an IP address and port, or `localhost:PORT` (127.0.0.1).
pub fn parse_listen(listen: &str) -> Option<SocketAddr> {
    let listen = listen.trim();
    if let Ok(address) = listen.parse() {
        return Some(address);
    }
    let port = listen.strip_prefix("localhost:")?.parse::<u16>().ok()?;
    Some(SocketAddr::from(([127, 0, 0, 1], port)))
}

impl Config {
    /// Loads defaults, then `OPENAI_*`, then the file (if any), then `TOLLGATE_*`.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_raw(Self::load_raw(file)?)
    }

    /// `tollgate config check`: loads and validates like [`load`](Self::load), and
    /// also returns the effective settings as TOML, every secret replaced by
    /// `<redacted>` (set) or left out (unset).
    pub fn check(file: Option<&Path>) -> Result<(Self, String), ConfigError> {
        let raw = Self::load_raw(file)?;
        let mut shown = raw.clone();
        let redacted = || Some(Secret::new(REDACTED));
        if shown.admin_token.is_some() {
            shown.admin_token = redacted();
        }
        if shown.upstream.api_key.is_some() {
            shown.upstream.api_key = redacted();
        }
        if shown.anthropic.api_key.is_some() {
            shown.anthropic.api_key = redacted();
        }
        for provider in shown.providers.values_mut() {
            if provider.api_key.is_some() {
                provider.api_key = redacted();
            }
        }
        if shown.routing.sticky_secret.is_some() {
            shown.routing.sticky_secret = redacted();
        }
        if shown.redis_url.is_some() {
            shown.redis_url = redacted();
        }
        if shown.database_url.is_some() {
            shown.database_url = redacted();
        }
        if shown.events.nats_url.is_some() {
            shown.events.nats_url = redacted();
        }
        for key in [&mut shown.secrets.master_key, &mut shown.alerts.master_key] {
            if key.is_some() {
                *key = redacted();
            }
        }
        for keys in [&mut shown.secrets.old_master_keys, &mut shown.alerts.old_master_keys] {
            for key in keys.iter_mut() {
                *key = Secret::new(REDACTED);
            }
        }
        let text = toml::to_string_pretty(&shown).map_err(|e| invalid("(output)", e.to_string()))?;
        Ok((Self::from_raw(raw)?, text))
    }

    fn load_raw(file: Option<&Path>) -> Result<RawConfig, ConfigError> {
        let mut figment = Figment::new().merge(Serialized::defaults(RawConfig::default()));
        if let Ok(url) = std::env::var("OPENAI_BASE_URL") {
            figment = figment.merge(Serialized::default("upstream.base_url", url));
        }
        if let Ok(key) = std::env::var("OPENAI_API_KEY") {
            figment = figment.merge(Serialized::default("upstream.api_key", key));
        }
        if let Ok(key) = std::env::var("ANTHROPIC_API_KEY") {
            figment = figment.merge(Serialized::default("anthropic.api_key", key));
        }
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("--config", format!("file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(
            Env::prefixed("TOLLGATE_")
                .filter(|k| {
                    // Keys arrive in the variable's own case (`LISTEN`).
                    let k = k.as_str().to_ascii_lowercase();
                    let top = k.split("__").next().unwrap_or(&k);
                    ENV_KEYS.contains(&top)
                })
                .split("__"),
        );
        if let Some(name) = unknown_env_var(std::env::vars_os().filter_map(|(k, _)| k.into_string().ok())) {
            return Err(invalid(
                name.clone(),
                format!("unknown setting: {name} names no top-level setting (see docs/configuration.md)"),
            ));
        }
        figment.extract().map_err(|e| ConfigError::Load(Box::new(e)))
    }

    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = parse_listen(&raw.listen).ok_or_else(|| {
            invalid("listen", format!("'{}' is not an address like 127.0.0.1:8080 or localhost:8080", raw.listen))
        })?;
        let store = store::store_from_raw(&raw)?;
        let (anthropic, anthropic_provider) = anthropic::anthropic_upstream(&raw)?;
        if anthropic_provider == raw.upstream.provider.trim() {
            return Err(invalid("anthropic.provider", "must differ from upstream.provider"));
        }
        let providers = routing::providers(&raw, &[raw.upstream.provider.trim(), &anthropic_provider])?;
        let mut provider_names: Vec<&str> = vec![raw.upstream.provider.trim(), &anthropic_provider];
        provider_names.extend(providers.iter().map(|p| p.name.as_str()));
        let routing = routing::routing(&raw, &provider_names)?;
        let log_format = raw.log_format;
        if raw.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if let Some(token) = &raw.admin_token
            && !token.expose().is_empty()
            && token.expose().len() < 16
        {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        let base_url = raw.upstream.base_url.trim().to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(invalid("upstream.base_url", format!("'{base_url}' must start with http:// or https://")));
        }
        if raw.upstream.timeout_secs == 0 {
            return Err(invalid("upstream.timeout_secs", "must be at least 1"));
        }
        if raw.upstream.total_timeout_secs == 0 {
            return Err(invalid("upstream.total_timeout_secs", "must be at least 1"));
        }
        let mut forward_headers = Vec::new();
        for name in &raw.upstream.forward_headers {
            let header = axum::http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid("upstream.forward_headers", format!("'{name}' is not a header name")))?;
            if NEVER_FORWARDED.contains(&header.as_str()) {
                return Err(invalid("upstream.forward_headers", format!("'{name}' is never passed upstream")));
            }
            forward_headers.push(header);
        }
        if raw.limits.forwarded_for_hops > 8 {
            return Err(invalid("limits.forwarded_for_hops", "must be between 0 and 8"));
        }
        if raw.limits.default_max_output_tokens == 0 || raw.limits.default_max_output_tokens > 10_000_000 {
            return Err(invalid("limits.default_max_output_tokens", "must be between 1 and 10,000,000"));
        }
        let durable_responses = matches!(raw.durability, Durability::Sync | Durability::Fsync);
        if raw.commit_timeout_ms == 0 || raw.commit_timeout_ms > 600_000 {
            return Err(invalid("commit_timeout_ms", "must be between 1 and 600,000"));
        }
        let max_output = raw.limits.max_reserved_output_tokens;
        if max_output < raw.limits.default_max_output_tokens || max_output > 1_000_000_000 {
            return Err(invalid(
                "limits.max_reserved_output_tokens",
                "must be at least limits.default_max_output_tokens and at most 1,000,000,000",
            ));
        }
        let mut prices = tollgate_pricing::PriceTable::with_overrides(raw.prices.clone());
        if let Some(default) = &raw.default_price {
            prices = prices.with_default_price(default.to_price());
        }
        let prices = std::sync::Arc::new(prices);
        let unknown_model_policy = match raw.unknown_model_policy {
            UnknownModelPolicy::Refuse => tollgate_gateway::UnknownModelPolicy::Refuse,
            UnknownModelPolicy::DefaultPrice => tollgate_gateway::UnknownModelPolicy::DefaultPrice,
        };
        let cors_allowed_origins = cors_origins(&raw.cors_allowed_origins)?;
        let analytics = analytics_settings(&raw.analytics)?;
        let otlp = otlp::otlp_settings(&raw.otlp)?;
        let alerts = alerts_settings(&raw.alerts)?;
        let secrets = secrets::secrets_settings(&raw.secrets, &raw.alerts)?;
        let byok = secrets::byok_settings(&raw.byok)?;
        let cache = cache_settings(&raw.cache)?;
        let dashboard = dashboard_settings(&raw.dashboard)?;
        let events = events_settings(&raw.events)?;
        let mut seed_plans = Vec::new();
        for (name, plan) in raw.plans {
            if !is_slug(&name) {
                return Err(invalid(format!("plans.{name}"), "plan names are 1-64 of a-z, 0-9, '-', '_'"));
            }
            let plan = Plan {
                name: name.clone(),
                description: plan.description,
                limits: plan.limits,
                time_zone: plan.time_zone,
            };
            plan.validate().map_err(|e| invalid(format!("plans.{name}"), e.to_string()))?;
            seed_plans.push(plan);
        }
        Ok(Self {
            listen,
            data_dir: raw.data_dir,
            admin_token: raw.admin_token.filter(|t| !t.expose().is_empty()),
            log_format,
            max_body_bytes: raw.max_body_bytes,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_secs),
            upstream: tollgate_providers::UpstreamConfig {
                base_url,
                api_key: raw.upstream.api_key.map(|s| s.expose().to_owned()).filter(|s| !s.is_empty()),
                connect_timeout: Duration::from_millis(raw.upstream.connect_timeout_ms),
                read_timeout: Duration::from_secs(raw.upstream.timeout_secs),
                pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host,
                auth: tollgate_providers::UpstreamAuth::Bearer,
                default_headers: Vec::new(),
            },
            anthropic,
            anthropic_provider,
            providers,
            routing,
            forward_headers,
            seed_plans,
            forwarded_for_hops: raw.limits.forwarded_for_hops,
            invalid_keys_per_minute: raw.limits.invalid_keys_per_minute,
            anonymous_plan: raw.limits.anonymous_plan,
            provider: raw.upstream.provider.clone(),
            default_max_output_tokens: raw.limits.default_max_output_tokens,
            max_reserved_output_tokens: max_output,
            max_visitors_per_project: raw.limits.max_visitors_per_project,
            unknown_model_policy,
            drain_after_hangup: Duration::from_millis(raw.upstream.drain_after_hangup_ms),
            total_timeout: Duration::from_secs(raw.upstream.total_timeout_secs),
            drain_after_hangup_bytes: raw.upstream.drain_after_hangup_bytes,
            durable_responses,
            ledger_fsync: raw.durability == Durability::Fsync,
            commit_timeout: Duration::from_millis(raw.commit_timeout_ms),
            ledger_buffer: raw.ledger_buffer,
            prices,
            store,
            cors_allowed_origins,
            access_log: raw.access_log,
            analytics,
            otlp,
            alerts,
            secrets,
            byok,
            cache,
            dashboard,
            events,
        })
    }
}

/// Checks `cors_allowed_origins`: `*` alone, or origins as browsers send them
/// (`scheme://host[:port]`, no path, no trailing slash).
fn cors_origins(origins: &[String]) -> Result<Vec<axum::http::HeaderValue>, ConfigError> {
    if origins.iter().any(|o| o == "*") {
        if origins.len() > 1 {
            return Err(invalid("cors_allowed_origins", "\"*\" allows every origin: list it alone"));
        }
        return Ok(vec![axum::http::HeaderValue::from_static("*")]);
    }
    origins
        .iter()
        .map(|origin| {
            let rest = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
            let valid = rest.is_some_and(|host| {
                !host.is_empty() && !host.contains('/') && host.bytes().all(|b| b.is_ascii_graphic())
            });
            if !valid {
                return Err(invalid(
                    "cors_allowed_origins",
                    format!("'{origin}' is not an origin like https://app.example.com (no path, no trailing slash)"),
                ));
            }
            axum::http::HeaderValue::from_str(origin).map_err(|_| invalid("cors_allowed_origins", origin.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        std::io::Write::write_all(&mut file, text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn a_file_overrides_defaults_and_plans_merge() {
        let file = write(
            r#"
            listen = "127.0.0.1:9999"
            durability = "async"
            [upstream]
            base_url = "http://127.0.0.1:1/v1"
            [plans.enterprise]
            limits = [{ metric = "requests", window = "minute", limit = 5000 }]
            [prices."my-model"]
            input_per_mtok_micros = 1000000
            output_per_mtok_micros = 2000000
            "#,
        );
        let config = Config::load(Some(file.path())).expect("valid");
        assert_eq!(config.listen.port(), 9999);
        assert!(!config.durable_responses);
        assert_eq!(config.upstream.base_url, "http://127.0.0.1:1/v1");
        let enterprise = config.seed_plans.iter().find(|p| p.name == "enterprise").expect("enterprise");
        assert_eq!(enterprise.limits.len(), 1);
        assert!(config.seed_plans.iter().any(|p| p.name == "free"), "defaults kept");
        assert!(config.prices.price("my-model").known);
    }

    #[test]
    fn durability_fsync_and_commit_timeout() {
        let file = write("durability = \"fsync\"\ncommit_timeout_ms = 250\n");
        let config = Config::load(Some(file.path())).expect("valid");
        assert!(config.durable_responses && config.ledger_fsync);
        assert_eq!(config.commit_timeout, Duration::from_millis(250));
        let defaults = Config::load(None).expect("defaults");
        assert!(defaults.durable_responses && !defaults.ledger_fsync);
        assert_eq!(defaults.commit_timeout, Duration::from_secs(5));
        let file = write("commit_timeout_ms = 0\n");
        let err = Config::load(Some(file.path())).expect_err("zero").to_string();
        assert!(err.contains("commit_timeout_ms"), "{err}");
    }

    #[test]
    fn errors_name_the_setting() {
        let file = write("lisen = \"127.0.0.1:1\"\n");
        let err = Config::load(Some(file.path())).expect_err("unknown key").to_string();
        assert!(err.contains("lisen"), "{err}");
        let file = write("durability = \"maybe\"\n");
        let err = Config::load(Some(file.path())).expect_err("bad value").to_string();
        assert!(err.contains("durability"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/tollgate.toml"))).expect_err("missing").to_string();
        assert!(err.contains("--config"), "{err}");
    }

    #[test]
    fn admission_and_pricing_settings_are_read_and_checked() {
        let defaults = Config::from_raw(RawConfig::default()).expect("defaults");
        assert_eq!(defaults.max_reserved_output_tokens, 1_000_000);
        assert_eq!(defaults.unknown_model_policy, tollgate_gateway::UnknownModelPolicy::Refuse);
        assert_eq!(defaults.drain_after_hangup, Duration::from_secs(2));
        let file = write(
            r#"
            unknown_model_policy = "default_price"
            default_price = { input_per_mtok_micros = 1000000, output_per_mtok_micros = 3000000 }
            [limits]
            max_reserved_output_tokens = 50000
            [upstream]
            drain_after_hangup_ms = 500
            "#,
        );
        let config = Config::load(Some(file.path())).expect("valid");
        assert_eq!(config.unknown_model_policy, tollgate_gateway::UnknownModelPolicy::DefaultPrice);
        assert_eq!(config.prices.default_price().output_per_mtok_micros, 3_000_000);
        assert_eq!(config.max_reserved_output_tokens, 50_000);
        assert_eq!(config.drain_after_hangup, Duration::from_millis(500));
        let file = write("[limits]\nmax_reserved_output_tokens = 100\n");
        let err = Config::load(Some(file.path())).expect_err("below the default").to_string();
        assert!(err.contains("max_reserved_output_tokens"), "{err}");
    }

    #[test]
    fn unknown_top_level_tollgate_variables_are_named_and_tool_variables_are_not() {
        let vars = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>().into_iter();
        assert_eq!(
            unknown_env_var(vars(&["TOLLGATE_LISTN", "TOLLGATE_LISTEN", "PATH"])),
            Some("TOLLGATE_LISTN".into())
        );
        assert_eq!(unknown_env_var(vars(&["TOLLGATE_UPSTRAEM__BASE_URL"])), Some("TOLLGATE_UPSTRAEM__BASE_URL".into()));
        assert_eq!(
            unknown_env_var(vars(&[
                "TOLLGATE_LISTEN",
                "TOLLGATE_UPSTREAM__BASE_URL",
                "TOLLGATE_CONFIG",
                "TOLLGATE_URL",
                "TOLLGATE_ADMIN_TOKEN_FILE",
                "TOLLGATE_TEST_REDIS_URL",
                "TOLLGATE_ACCESS_LOG",
                "TOLLGATE_SERVICE_HOST",
                "TOLLGATE_SERVICE_PORT_HTTP",
                "TOLLGATE_PORT",
                "TOLLGATE_PORT_8080_TCP_ADDR",
            ])),
            None,
            "tool and Kubernetes service variables are not settings"
        );
    }

    #[test]
    fn localhost_with_a_port_is_a_listen_address() {
        assert_eq!(parse_listen("localhost:8080"), Some(SocketAddr::from(([127, 0, 0, 1], 8080))));
        assert_eq!(parse_listen("0.0.0.0:80"), Some(SocketAddr::from(([0, 0, 0, 0], 80))));
        assert_eq!(parse_listen("[::1]:9"), "[::1]:9".parse().ok());
        assert_eq!(parse_listen("localhost"), None);
        assert_eq!(parse_listen("example.com:80"), None);
        let mut raw = RawConfig { listen: "localhost:nope".into(), ..RawConfig::default() };
        let err = Config::from_raw(raw.clone()).expect_err("no port").to_string();
        assert!(err.contains("listen") && err.contains("localhost:8080"), "{err}");
        raw.listen = "localhost:7070".into();
        assert_eq!(Config::from_raw(raw).expect("valid").listen.port(), 7070);
    }
}
