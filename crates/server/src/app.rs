//! Building and running the application: open the store, seed plans, make sure an
//! operator token exists, rebuild counters from the ledger, bind, serve, and on
//! shutdown drain requests, finish settlements and flush the ledger. Also the state
//! every handler shares ([`AppState`]).
//!
//! This is the one place a concrete store is named (`tollgate_store_distributed::open`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_core::{AdminToken, KeyHash};
use tollgate_gateway::{Gateway, GatewaySettings, RequestIds, now_ms};
use tollgate_providers::Upstream;
use tollgate_store::{AdminTokenRecord, Catalog, PlanCache};
use tollgate_store_distributed::{Backend, JobContext};

use crate::config::Config;
use crate::http::error::ApiError;

/// How often idle counters are dropped from memory.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    port: u16,
    /// The operator token made on first start (or when no usable operator token is
    /// left), to hand over once with [`hand_over_generated_token`] (never logged).
    pub created_admin_token: Option<String>,
    backend: Backend,
    /// Crossings the limiter reports, until the outbox writer starts.
    alert_crossings: Option<tokio::sync::mpsc::UnboundedReceiver<tollgate_alerts::detect::Crossing>>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let embedded = tollgate_store_distributed::EmbeddedOptions {
            ledger_fsync: config.ledger_fsync,
            ledger_buffer: config.ledger_buffer,
            visitor_cap: config.max_visitors_per_project,
        };
        let backend = tollgate_store_distributed::open(&config.store, &config.data_dir, embedded).await?;
        let catalog: Arc<dyn Catalog> = backend.catalog.clone();
        for plan in &config.seed_plans {
            if catalog.insert_plan_if_absent(plan.clone()).await? {
                tracing::info!(plan = %plan.name, "seeded plan");
            }
        }
        let configured_operator = config.admin_token.as_ref().map(|t| KeyHash::of(t.expose()));
        let mut created_admin_token = None;
        if configured_operator.is_none() && !catalog.has_operator_token(now_ms()).await? {
            let mut random = [0u8; tollgate_core::key::RANDOM_BYTES];
            getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let token = AdminToken::generate(&random).context("generating the admin token")?;
            let record = AdminTokenRecord {
                id: AdminTokenRecord::id_for(&token.hash()),
                project_id: None,
                name: Some("operator (generated at start)".to_owned()),
                prefix: Some(token.prefix().to_owned()),
                created_at_ms: now_ms(),
                expires_at_ms: None,
                revoked_at_ms: None,
            };
            catalog.create_admin_token(record, token.hash()).await?;
            created_admin_token = Some(token.expose().to_owned());
        }
        let plans = Arc::new(PlanCache::load(catalog.as_ref()).await?);
        // Loading a tokenizer takes 85-190 ms: do it now, not on the first request.
        tokio::task::spawn_blocking(tollgate_tokenize::preload);
        let upstream = Arc::new(Upstream::new(&config.upstream).context("configuring the upstream")?);
        if !upstream.has_api_key() {
            tracing::warn!(
                upstream = %upstream.base_url(),
                "no provider key is configured (upstream.api_key, OPENAI_API_KEY or TOLLGATE_UPSTREAM__API_KEY): \
                 requests are forwarded without one. If the upstream requires a key it answers 401, and \
                 tollgate answers clients 502 provider_key_missing, charging nothing"
            );
        }
        let anthropic = Arc::new(Upstream::new(&config.anthropic).context("configuring the Anthropic upstream")?);
        let routing = Arc::new(build_routing(&config, &upstream, &anthropic)?);
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {} (setting `listen`)", config.listen))?;
        let port = listener.local_addr()?.port();
        let settings = GatewaySettings {
            provider: config.provider.clone(),
            anthropic_provider: config.anthropic_provider.clone(),
            anonymous_plan: config.anonymous_plan.clone(),
            default_max_output_tokens: config.default_max_output_tokens,
            max_reserved_output_tokens: config.max_reserved_output_tokens,
            unknown_model: config.unknown_model_policy,
            drain_after_hangup: config.drain_after_hangup,
            drain_after_hangup_bytes: config.drain_after_hangup_bytes,
            total_timeout: config.total_timeout,
            durable_responses: config.durable_responses,
            commit_timeout: config.commit_timeout,
            prices: config.prices.clone(),
            forward_headers: config.forward_headers.clone(),
            access_log: match (config.access_log, config.log_format) {
                (false, _) => tollgate_gateway::access::AccessLog::Off,
                (true, crate::config::LogFormat::Text) => tollgate_gateway::access::AccessLog::Text,
                (true, crate::config::LogFormat::Json) => tollgate_gateway::access::AccessLog::Json,
            },
            cache_max_entry_bytes: config.cache.max_entry_bytes,
            cache_timeout: config.cache.timeout,
            semantic_embedding_model: config.cache.semantic_embedding_model.clone(),
            semantic_timeout: config.cache.semantic_timeout,
        };
        // One master key seals every secret: channel secrets and projects' provider keys.
        let sealer = crate::secrets::sealer(&config.secrets, &config.data_dir, backend.distributed.is_none())?;
        let provider_keys = Arc::new(tollgate_gateway::byok::ProviderKeys::new(
            backend.provider_keys.clone(),
            sealer.clone(),
            config.byok.cache_ttl,
        ));
        let (alerts, alert_crossings) = crate::alerts::build(&config.alerts, backend.alerts.clone(), sealer).await?;
        let limiter = Arc::new(tollgate_alerts::detect::AlertingLimiter::new(backend.limiter.clone(), alerts.clone()));
        // Redis shared by the instances in distributed mode, else an LRU in memory.
        let cache = backend.cache.clone().unwrap_or_else(|| {
            Arc::new(tollgate_cache::MemoryCache::new(config.cache.max_memory_bytes))
                as Arc<dyn tollgate_cache::CacheStore>
        });
        // The semantic index lives in each instance; in distributed mode it loads from,
        // and stores to, PostgreSQL (the change bus and a catch-up job keep it current).
        let semantic = Arc::new(tollgate_cache::semantic::SemanticCache::new(
            tollgate_cache::semantic::SemanticIndex::new(
                config.cache.semantic_max_entries_per_project,
                config.cache.semantic_max_memory_bytes,
            ),
            backend.semantic_store.clone(),
        ));
        let metrics = Arc::new(tollgate_gateway::metrics::Metrics::new(&config.provider, &config.prices));
        let gateway = Gateway::new(tollgate_gateway::GatewayParts {
            catalog,
            limiter,
            ledger: backend.ledger.clone(),
            upstream,
            anthropic,
            routing,
            plans,
            settings: Arc::new(settings),
            tasks: TaskTracker::new(),
            ids: Arc::new(RequestIds::new()),
            metrics,
            cache: Some(cache),
            semantic: Some(semantic),
            provider_keys: Some(provider_keys),
        });
        let invalid_keys = Arc::new(crate::http::guard::InvalidKeyGuard::new(config.invalid_keys_per_minute));
        let distributed = backend.distributed.clone();
        let analytics = backend.analytics.clone();
        let events = crate::events::build(&config, backend.feed.clone());
        let state = AppState {
            gateway,
            config: Arc::new(config),
            configured_operator,
            invalid_keys,
            distributed,
            analytics,
            alerts,
            events,
        };
        // Embedded counters start empty and replay the ledger; shared (Redis) counters
        // are only raised to the ledger's totals, never added to.
        let rebuilt = if backend.distributed.is_some() {
            backend.rebuild_at_start(&state.job_context(), now_ms()).await?
        } else {
            rebuild_counters(&state, now_ms()).await?
        };
        tracing::info!(
            store = backend.kind(),
            data_dir = %state.config.data_dir.display(),
            counters_rebuilt = rebuilt,
            "store ready"
        );
        Ok(Self { listener, state, port, created_admin_token, backend, alert_crossings: Some(alert_crossings) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The storage backend (in distributed mode: its parts, for jobs and tests).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests (up to
    /// `shutdown_grace`), waits for settlements and flushes the ledger.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, state, backend, alert_crossings, .. } = self;
        let address = listener.local_addr()?;
        tracing::info!(%address, upstream = %state.upstream.base_url(), "tollgate listening");
        let jobs = CancellationToken::new();
        let job_tasks = TaskTracker::new();
        job_tasks.spawn(prune_loop(state.clone(), jobs.clone()));
        if !state.gateway.routing.router.is_empty() && state.config.routing.probe_every > Duration::ZERO {
            job_tasks.spawn(probe_loop(state.clone(), jobs.clone()));
        }
        job_tasks.spawn(crate::retention::retention_loop(state.clone(), jobs.clone()));
        backend.spawn_jobs(&state.job_context(), &jobs, &job_tasks);
        if let Some(tailer) = state.events.clone() {
            job_tasks.spawn(crate::events::events_loop(state.clone(), tailer, jobs.clone()));
        }
        if let Some(crossings) = alert_crossings {
            crate::alerts::spawn_jobs(&state.alerts, crossings, &jobs, &job_tasks);
            job_tasks.spawn(crate::alerts_evaluate::evaluate_loop(state.clone(), jobs.clone()));
        }

        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
            let _ = fired_tx.send(());
        };
        let app = router(state.clone());
        let listener = listener.tap_io(|tcp| {
            // Without NODELAY a keep-alive response can wait ~40 ms on a delayed ACK.
            let _ = tcp.set_nodelay(true);
        });
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let server = axum::serve(listener, app).with_graceful_shutdown(signal);
        let grace = state.config.shutdown_grace;
        let deadline = async move {
            if fired_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = server => result.context("serving HTTP")?,
            () = deadline => tracing::warn!(?grace, "shutdown grace expired; closing remaining connections"),
        }
        jobs.cancel();
        job_tasks.close();
        job_tasks.wait().await;
        state.tasks.close();
        state.tasks.wait().await;
        state.ledger.close().await.context("flushing the ledger")?;
        tollgate_gateway::access::flush();
        tracing::info!("shutdown complete: ledger flushed");
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config.cors_allowed_origins);
    let otlp = state.config.otlp.clone();
    let router = Router::new()
        .merge(crate::routes::proxy::routes())
        .merge(crate::routes::admin::routes())
        .merge(crate::openapi::routes())
        .merge(crate::routes::alerts::routes())
        .merge(crate::routes::dashboard::routes(&state))
        .route("/health", get(crate::routes::health::health))
        .route("/health/detailed", get(crate::routes::health::health_detailed))
        .route("/ready", get(crate::routes::health::ready))
        .route("/metrics", get(crate::routes::metrics::metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(fallback)
        .with_state(state);
    let router = match cors {
        Some(layer) => router.layer(layer),
        None => router,
    };
    match &otlp {
        Some(settings) => crate::otlp::layer(router, settings),
        None => router,
    }
}

/// CORS for the configured origins, or `None` (no CORS headers, the default): browsers
/// then refuse cross-origin calls, which is what a gateway holding keys wants unless
/// a web app is meant to call it directly.
fn cors_layer(origins: &[axum::http::HeaderValue]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderName, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow_origin =
        if origins.iter().any(|o| o == "*") { AllowOrigin::any() } else { AllowOrigin::list(origins.to_vec()) };
    let exposed = [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "x-quota-limit",
        "x-quota-remaining",
        "x-quota-reset",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
        "ratelimit-policy",
        "ratelimit",
        "retry-after",
        "x-request-id",
    ]
    .map(HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static("x-anonymous-id")])
            .expose_headers(exposed)
            .max_age(Duration::from_secs(600)),
    )
}

/// A known path with a method it does not have (axum's own 405 has an empty body).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> axum::response::Response {
    ApiError::MethodNotAllowed(format!("{} does not accept {method}", shown_path(&uri))).into_response()
}

async fn fallback(uri: axum::http::Uri) -> axum::response::Response {
    ApiError::UnknownEndpoint(shown_path(&uri)).into_response()
}

/// The request path as an error message shows it: at most 200 bytes, cut on a
/// character boundary (a path may carry raw UTF-8).
fn shown_path(uri: &axum::http::Uri) -> String {
    let path = uri.path();
    if path.len() <= 200 {
        return path.to_owned();
    }
    let mut end = 200;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

/// Drops counters that have nothing left in their window.
pub async fn prune_once(state: &AppState) {
    match state.limiter.prune(now_ms()).await {
        Ok(n) if n > 0 => tracing::debug!(pruned = n, "idle counters dropped"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "pruning counters failed"),
    }
}

/// Probes idle routed targets' providers (`GET /models`) every `routing.probe_every_secs`,
/// the first time at start.
async fn probe_loop(state: AppState, cancel: CancellationToken) {
    let every = state.config.routing.probe_every;
    let idle_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = state.gateway.routing.probe_idle(now_ms(), idle_ms) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn prune_loop(state: AppState, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => prune_once(&state).await,
        }
    }
}

/// Replays the counted usage of the current windows into the limiter (sums the store
/// computes, read in bounded pages), so counters survive a restart. Returns how many
/// sums were replayed.
pub async fn rebuild_counters(state: &AppState, now: i64) -> anyhow::Result<usize> {
    let g = &state.gateway;
    tollgate_store::replay::replay_ledger(
        g.catalog.as_ref(),
        g.ledger.as_ref(),
        g.limiter.as_ref(),
        &g.plans,
        &g.settings.anonymous_plan,
        now,
    )
    .await
    .context("replaying the ledger into the counters")
}

/// The state every handler shares: the pipeline, the configuration and the
/// operator token's hash. Cheap to clone (all `Arc`s). It dereferences to the
/// [`Gateway`], so handlers read `state.catalog`, `state.ledger` and so on.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Gateway,
    pub config: Arc<Config>,
    /// Hash of the operator token given by configuration (`TOLLGATE_ADMIN_TOKEN`).
    pub configured_operator: Option<KeyHash>,
    /// The brake on key guessing per client address.
    pub invalid_keys: Arc<crate::http::guard::InvalidKeyGuard>,
    /// The distributed backend's parts (its breaker and key cache are in `/metrics`).
    pub distributed: Option<Arc<tollgate_store_distributed::Distributed>>,
    /// The hourly rollups of the ledger (the analytics API reads only these).
    pub analytics: Arc<dyn tollgate_analytics::AnalyticsStore>,
    /// Alert rules, channels, the outbox and its delivery worker.
    pub alerts: Arc<tollgate_alerts::outbox::Alerts>,
    /// The usage events sink (`[events]`), `None` when off. In distributed mode every
    /// instance has one; only the holder of the `usage-events` lease publishes.
    pub events: Option<Arc<tollgate_events::Tailer>>,
}

impl std::ops::Deref for AppState {
    type Target = Gateway;

    fn deref(&self) -> &Gateway {
        &self.gateway
    }
}

impl AppState {
    /// What the distributed backend's jobs need from the gateway.
    pub fn job_context(&self) -> JobContext {
        JobContext {
            catalog: self.catalog.clone(),
            plans: self.plans.clone(),
            anonymous_plan: self.settings.anonymous_plan.clone(),
            semantic: self.semantic.clone(),
        }
    }
}

/// The file a generated operator token is written to when stdout is not a terminal.
pub const GENERATED_TOKEN_FILE: &str = "operator-token";

/// Where a generated operator token went.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenHandover {
    /// Printed: stdout is a terminal, so a person is reading it.
    Printed,
    /// Written to this file (mode 0600): stdout is a pipe or a file, which under
    /// systemd or a container is the log.
    File(std::path::PathBuf),
}

/// Hands a generated operator token to the operator without ever putting it in a
/// log: printed when stdout is a terminal, else written to `<data_dir>/operator-token`
/// readable only by its owner, and the path (never the token) logged.
pub fn hand_over_generated_token(
    token: &str,
    data_dir: &std::path::Path,
    stdout_is_terminal: bool,
) -> anyhow::Result<TokenHandover> {
    if stdout_is_terminal {
        println!("\n  Admin token (shown once; only its hash is stored):\n\n    {token}\n");
        println!("  export TOLLGATE_ADMIN_TOKEN={token}\n");
        return Ok(TokenHandover::Printed);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let path = data_dir.join(GENERATED_TOKEN_FILE);
    // A leftover file from an earlier start is replaced, never widened: the new file
    // is created with 0600 from the start, so the token is never readable by others.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the old {}", path.display())),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::warn!(
        path = %path.display(),
        "no operator token was configured: one was generated and written to this file (readable only by its \
         owner); read it, keep it somewhere safe, then delete the file"
    );
    Ok(TokenHandover::File(path))
}

/// Fresh random bytes for keys and tokens.
pub fn random_bytes() -> Result<[u8; tollgate_core::key::RANDOM_BYTES], ApiError> {
    let mut buf = [0u8; tollgate_core::key::RANDOM_BYTES];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(buf)
}

/// The providers (`[upstream]`, `[anthropic]`, `[providers.*]`) and `[routing]`.
fn build_routing(
    config: &Config,
    upstream: &Arc<Upstream>,
    anthropic: &Arc<Upstream>,
) -> anyhow::Result<tollgate_gateway::route::Routing> {
    use tollgate_gateway::route::{Provider, ProviderKind, Routing};
    let default_openai =
        Arc::new(Provider { name: config.provider.clone(), kind: ProviderKind::OpenAi, upstream: upstream.clone() });
    let default_anthropic = Arc::new(Provider {
        name: config.anthropic_provider.clone(),
        kind: ProviderKind::Anthropic,
        upstream: anthropic.clone(),
    });
    let mut routing = Routing::direct(default_openai, default_anthropic);
    for p in &config.providers {
        let upstream = Upstream::new(&p.upstream).with_context(|| format!("configuring provider '{}'", p.name))?;
        let provider = Provider { name: p.name.clone(), kind: p.kind.clone(), upstream: Arc::new(upstream) };
        routing.providers.insert(p.name.clone(), Arc::new(provider));
    }
    let names: Vec<String> = routing.providers.keys().cloned().collect();
    let r = &config.routing;
    routing.router = tollgate_router::Router::new(r.routes.clone(), names.iter().map(String::as_str), &r.sticky_secret)
        .context("configuring [routing]")?;
    routing.health = tollgate_router::Health::new(r.breaker);
    routing.attempt_timeout = r.attempt_timeout;
    Ok(routing)
}
