//! Retention of usage data: raw ledger rows older than `analytics.retention_days`
//! are deleted in bounded batches (each statement at most
//! `analytics.retention_batch` rows, so the ledger writer interleaves), and hourly
//! rollups older than `analytics.rollup_retention_days`. Rollups outlive raw rows:
//! dashboards, forecasts and exports of rollups keep working past raw retention.
//!
//! With the usage events sink on (`[events]`), raw rows the sink has not published
//! yet are never deleted: the cutoff stops at the hour of the oldest unpublished
//! record, so a NATS outage longer than `retention_days` delays retention instead of
//! losing events. If that cannot be read, the run deletes nothing and fails.
//!
//! One instance runs it (the holder of the `retention` lease in distributed mode);
//! [`retention_once`] is the step tests call directly.

use tokio_util::sync::CancellationToken;
use tollgate_gateway::now_ms;

use crate::app::AppState;

/// What one retention run deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionRun {
    pub ledger_rows: u64,
    pub rollup_rows: u64,
}

/// Whole hours only: a cutoff on an hour boundary keeps every retained hour's
/// rollup equal to the rows left in it.
fn cutoff(now: i64, age: std::time::Duration) -> i64 {
    let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
    tollgate_analytics::rollup::hour_of(now.saturating_sub(ms))
}

/// One retention run at `now`.
pub async fn retention_once(state: &AppState, now: i64) -> tollgate_store::StoreResult<RetentionRun> {
    let settings = &state.config.analytics;
    let mut run = RetentionRun::default();
    if let Some(age) = settings.retention {
        let mut before = cutoff(now, age);
        if let Some(sink) = &state.events {
            let oldest = sink.oldest_unpublished_ms().await.map_err(|e| {
                tollgate_store::StoreError::unavailable(format!("retention waits for the usage events sink: {e}"))
            })?;
            if let Some(oldest) = oldest {
                before = before.min(tollgate_analytics::rollup::hour_of(oldest));
            }
        }
        loop {
            let n = state.analytics.delete_usage_before(before, settings.retention_batch).await?;
            run.ledger_rows += n;
            if n < settings.retention_batch as u64 {
                break;
            }
            // Let the ledger writer and readers in between batches.
            tokio::task::yield_now().await;
        }
    }
    if let Some(age) = settings.rollup_retention {
        run.rollup_rows = state.analytics.delete_rollups_before(cutoff(now, age)).await?;
    }
    Ok(run)
}

/// Runs retention a minute after start (not during start-up's own work), then every
/// `analytics.retention_every_secs`.
pub async fn retention_loop(state: AppState, cancel: CancellationToken) {
    let every = state.config.analytics.retention_every;
    let mut wait = every.min(std::time::Duration::from_secs(60));
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                if let Some(parts) = &state.distributed
                    && let Err(error) = parts.retention_lease.release().await
                {
                    tracing::debug!(%error, "cannot release the retention lease; it expires");
                }
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
        wait = every;
        // Of many instances, only the holder of the retention lease runs it.
        if let Some(parts) = &state.distributed {
            match parts.retention_lease.acquire_or_renew().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::debug!(%error, "cannot take the retention lease; will retry");
                    continue;
                }
            }
        }
        match retention_once(&state, now_ms()).await {
            Ok(run) if run != RetentionRun::default() => {
                tracing::info!(
                    ledger_rows = run.ledger_rows,
                    rollup_rows = run.rollup_rows,
                    "retention deleted old usage"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "usage retention failed; will retry"),
        }
    }
}
