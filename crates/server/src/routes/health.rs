//! `GET /health` (liveness, the ledger's backlog, the upstream's recent failures),
//! `GET /ready` (readiness: 503 while the store is unreachable and requests would be
//! refused) and `GET /health/detailed` (operator token: providers, routed targets'
//! breakers, the store, instances and job leases).

use axum::Json as AxumJson;
use axum::extract::State;
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::http::error::ApiError;

#[derive(Serialize)]
struct Health {
    status: &'static str,
    /// The ledger writer's queue: depth, capacity (back-pressure), open refusal rows.
    ledger: tollgate_store::LedgerQueue,
    /// Whether the upstream has been failing (calls in a row unreachable, timed out,
    /// invalid or 5xx); measured from real traffic, not probed.
    upstream: tollgate_gateway::metrics::UpstreamHealth,
}

/// `GET /health`: up, how far behind the ledger writer is, and whether the upstream
/// has been failing. `status` is `"degraded"` while new requests wait for room in the
/// ledger's queue, or while the upstream fails.
pub async fn health(State(state): State<AppState>) -> AxumJson<Value> {
    let ledger = state.ledger.queue();
    let upstream = state.metrics.upstream_health();
    let backlog = ledger.capacity > 0 && ledger.queued >= ledger.capacity;
    let status = if backlog || upstream.status != "ok" { "degraded" } else { "ok" };
    AxumJson(json!(Health { status, ledger, upstream }))
}

/// `GET /health/detailed` (operator token): `/health`'s answer, the store, and in
/// distributed mode the running instances (from the registry: each says it is alive
/// every few seconds) and who holds each background job's lease.
pub async fn health_detailed(
    State(state): State<AppState>,
    admin: crate::auth::Admin,
) -> Result<AxumJson<Value>, ApiError> {
    admin.require_operator()?;
    let AxumJson(mut body) = health(State(state.clone())).await;
    let (store, cluster) = match &state.distributed {
        None => ("embedded", Value::Null),
        Some(parts) => {
            let instances = parts.registry.list(tollgate_store_distributed::ALIVE_WITHIN).await?;
            let rebuild = parts.rebuild_lease.current_holder().await?;
            let retention = parts.retention_lease.current_holder().await?;
            let events = parts.events_lease.current_holder().await?;
            (
                "distributed",
                json!({
                    "this_instance": parts.instance_id,
                    "instances": instances.iter().map(|i| json!({
                        "id": i.id,
                        "version": i.version,
                        "hostname": i.hostname,
                        "started_at": tollgate_core::calendar::to_rfc3339(i.started_at_ms),
                        "last_seen": tollgate_core::calendar::to_rfc3339(i.last_seen_ms),
                    })).collect::<Vec<_>>(),
                    "leases": { "counter-rebuild": rebuild, "retention": retention, "usage-events": events },
                    "redis_breaker_open": parts.limiter.is_down(),
                }),
            )
        }
    };
    let routing = &state.gateway.routing;
    body["providers"] = json!(routing.providers_health());
    body["targets"] = json!(routing.health.snapshot(&routing.target_ids(), tollgate_gateway::now_ms()));
    body["store"] = json!(store);
    body["cluster"] = cluster;
    body["events"] = state.events.as_ref().map_or(Value::Null, |tailer| events_health(tailer));
    Ok(AxumJson(body))
}

/// The usage events sink in `/health/detailed` (never its URL: it may hold credentials).
fn events_health(tailer: &tollgate_events::Tailer) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &tailer.stats;
    let last = stats.last_published_ms.load(Relaxed);
    json!({
        "stream": tailer.settings().stream,
        "subject": tailer.settings().subject,
        "cursor_name": tailer.cursor_name(),
        "active": stats.active.load(Relaxed),
        "connected": stats.connected.load(Relaxed),
        "cursor": stats.cursor.load(Relaxed),
        "lag_records": stats.lag_records.load(Relaxed),
        "published": stats.published.load(Relaxed),
        "duplicates": stats.duplicates.load(Relaxed),
        "failures": stats.failures.load(Relaxed),
        "last_error": stats.last_error(),
        "last_published": (last > 0).then(|| tollgate_core::calendar::to_rfc3339(last)),
    })
}

/// `GET /ready`: 200 while this instance can serve; 503 while its counter store is
/// unreachable and `on_store_error = "closed"` refuses requests (a load balancer then
/// sends traffic elsewhere). `/health` stays a liveness check.
pub async fn ready(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let fail_closed = match &state.config.store {
        tollgate_store_distributed::StoreConfig::Distributed(d) => {
            d.on_store_error == tollgate_store_distributed::OnStoreError::Closed
        }
        tollgate_store_distributed::StoreConfig::Embedded => false,
    };
    let down = fail_closed && state.distributed.as_ref().is_some_and(|parts| parts.limiter.is_down());
    if down {
        let body = json!({"status": "unavailable", "reason": "the counter store (Redis) is unreachable and on_store_error is \"closed\""});
        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, AxumJson(body)).into_response();
    }
    AxumJson(json!({"status": "ready"})).into_response()
}
