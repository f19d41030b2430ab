//! The access log: one line per request, written as the request is recorded (the
//! settle phase, every exit path), or by the server for a request refused before it
//! was admitted. Its fields: request id, the key's public id (never its secret),
//! project, endpoint, model, provider, status, tokens, cost, where the usage came
//! from, the total time, the upstream's part and tollgate's own part, and the
//! provider's prompt-cache outcome (tollgate has no response cache of its own yet).
//!
//! It is a `tracing` event with target `access`, so it follows `log_format` (text or
//! JSON) and `RUST_LOG` (`RUST_LOG=info,access=off` silences it, as does
//! `access_log = false`).

use std::time::Duration;

use tollgate_core::UsageRecord;

use crate::Gateway;

/// The `tracing` target access-log lines carry.
pub const TARGET: &str = "access";

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Writes the access-log line of a recorded (or refused) request, unless
/// `access_log` is off.
pub fn log(gateway: &Gateway, record: &UsageRecord, total: Duration, upstream: Option<Duration>) {
    if gateway.settings.access_log {
        write(record, total, upstream);
    }
}

/// The line itself (see [`log`]).
pub fn write(record: &UsageRecord, total: Duration, upstream: Option<Duration>) {
    let upstream_us = upstream.map(micros).unwrap_or(0);
    let total_us = micros(total);
    let cache = if record.cached_tokens > 0 { "prompt_cache_hit" } else { "none" };
    tracing::info!(
        target: TARGET,
        request_id = %record.id,
        key = %record.key_id,
        project = %record.project_id,
        endpoint = %record.endpoint,
        model = record.model.as_deref().unwrap_or(""),
        provider = %record.provider,
        status = record.status,
        prompt_tokens = record.prompt_tokens,
        completion_tokens = record.completion_tokens,
        cached_tokens = record.cached_tokens,
        cost_micros = record.cost_micros,
        usage_source = record.usage_source.as_str(),
        latency_us = total_us,
        upstream_us,
        gateway_us = total_us.saturating_sub(upstream_us),
        cache,
        "access"
    );
}

/// The access-log line of a request answered before admission (a bad key, a
/// malformed body, a full ledger queue): no record exists, so only what is known.
pub fn log_unadmitted(gateway: &Gateway, endpoint: &str, status: u16, total: Duration) {
    if !gateway.settings.access_log {
        return;
    }
    tracing::info!(
        target: TARGET,
        request_id = "",
        endpoint,
        status,
        latency_us = micros(total),
        gateway_us = micros(total),
        "access"
    );
}
