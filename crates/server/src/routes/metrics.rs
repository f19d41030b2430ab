//! `GET /metrics`: the Prometheus text format (version 0.0.4) of the gateway's
//! counters (`tollgate_gateway::metrics`) and of gauges read at scrape time: the
//! ledger's queue and commits, the Redis breaker and the key cache, and the usage events
//! sink (its lag in ledger records, what it published).
//!
//! Unauthenticated, as Prometheus scrapes usually are: nothing in it names a key, a
//! user or a project (see the low-cardinality note in `tollgate_gateway::metrics`).
//! Bind `listen` to a private interface, or filter `/metrics` at the proxy in front,
//! if request counts themselves are private.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tollgate_gateway::metrics::{family, histogram};

use crate::app::AppState;

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = render(&state);
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Everything `/metrics` shows.
pub fn render(state: &AppState) -> String {
    let mut out = String::with_capacity(16 * 1024);
    family(&mut out, "tollgate_build_info", "gauge", "Always 1; the version is in the label.");
    out.push_str(&format!("tollgate_build_info{{version=\"{}\"}} 1\n", env!("CARGO_PKG_VERSION")));
    state.metrics.render(&mut out);
    let ledger = state.ledger.queue();
    let gauges = [
        ("tollgate_ledger_queue_depth", "gauge", "Ledger records appended and not yet written.", ledger.queued),
        (
            "tollgate_ledger_queue_capacity",
            "gauge",
            "Queued records above which new requests wait for room (back-pressure).",
            ledger.capacity,
        ),
        (
            "tollgate_ledger_open_refusal_rows",
            "gauge",
            "Refusal aggregates (one per key, endpoint, status and minute) not yet written.",
            ledger.open_refusal_rows,
        ),
        ("tollgate_ledger_records_written_total", "counter", "Ledger records written.", ledger.written),
        (
            "tollgate_ledger_records_dropped_total",
            "counter",
            "Ledger records dropped after a store outage longer than the buffer.",
            ledger.dropped,
        ),
        ("tollgate_ledger_failed_writes_total", "counter", "Ledger batch writes that failed.", ledger.failed_writes),
    ];
    for (name, kind, help, value) in gauges {
        family(&mut out, name, kind, help);
        out.push_str(&format!("{name} {value}\n"));
    }
    if let Some(commits) = state.ledger.commit_latency() {
        histogram(
            &mut out,
            "tollgate_ledger_commit_duration_seconds",
            "How long each batch write (commit) of the ledger took.",
            &[("", commits)],
            true,
        );
    }
    if let Some(tailer) = &state.events {
        render_events(&mut out, &tailer.stats);
    }
    if let Some(d) = &state.distributed {
        family(&mut out, "tollgate_breaker_open", "gauge", "1 while the Redis limiter's breaker is open (Redis down).");
        out.push_str(&format!(
            "tollgate_breaker_open{{breaker=\"redis_limiter\"}} {}\n",
            u8::from(d.limiter.is_down())
        ));
        let stats = d.limiter.stats();
        let counters = [
            ("tollgate_breaker_opened_total", "Times the Redis limiter's breaker opened.", &stats.breaker_opened),
            (
                "tollgate_breaker_local_decisions_total",
                "Limit decisions made locally while Redis was down.",
                &stats.local_decisions,
            ),
            (
                "tollgate_breaker_refused_unavailable_total",
                "Requests refused (503) while Redis was down (fail closed).",
                &stats.refused_unavailable,
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            out.push_str(&format!("{name}{{breaker=\"redis_limiter\"}} {}\n", value.load(Ordering::Relaxed)));
        }
        family(&mut out, "tollgate_key_cache_entries", "gauge", "Keys held in this instance's key cache, by kind.");
        out.push_str(&format!("tollgate_key_cache_entries{{kind=\"known\"}} {}\n", d.catalog.cached_secrets()));
        out.push_str(&format!(
            "tollgate_key_cache_entries{{kind=\"unknown\"}} {}\n",
            d.catalog.cached_unknown_secrets()
        ));
    }
    out
}

/// The usage events sink's gauges and counters (docs/events.md).
fn render_events(out: &mut String, stats: &tollgate_events::TailerStats) {
    let lag = stats.lag_records.load(Ordering::Relaxed);
    let cursor = u64::try_from(stats.cursor.load(Ordering::Relaxed)).unwrap_or(0);
    let values = [
        (
            "tollgate_events_lag_records",
            "gauge",
            "Ledger records not yet published to JetStream (as of the sink's last pass or check).",
            lag,
        ),
        (
            "tollgate_events_cursor",
            "gauge",
            "The sink's stored cursor: every ledger record up to it is published.",
            cursor,
        ),
        (
            "tollgate_events_active",
            "gauge",
            "1 while this instance runs the sink (always embedded; the lease holder of many).",
            u64::from(stats.active.load(Ordering::Relaxed)),
        ),
        (
            "tollgate_events_connected",
            "gauge",
            "1 while the sink is connected to JetStream.",
            u64::from(stats.connected.load(Ordering::Relaxed)),
        ),
        (
            "tollgate_events_published_total",
            "counter",
            "Usage events JetStream stored.",
            stats.published.load(Ordering::Relaxed),
        ),
        (
            "tollgate_events_duplicates_total",
            "counter",
            "Usage events published again that JetStream already held (dropped by message id).",
            stats.duplicates.load(Ordering::Relaxed),
        ),
        (
            "tollgate_events_failures_total",
            "counter",
            "Sink passes that failed (NATS, the stream, an acknowledgement or the store); each is retried.",
            stats.failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, kind, help, value) in values {
        family(out, name, kind, help);
        out.push_str(&format!("{name} {value}\n"));
    }
}
