//! The usage events sink's schedule (docs/events.md): a pass of the
//! [`Tailer`](tollgate_events::Tailer) every `events.poll_interval_ms` once caught up,
//! back to back while batches are full, and with a doubling back-off (up to
//! [`MAX_BACKOFF`], or a third of the lease in distributed mode) while NATS or the
//! store fails. Publishing never touches the request path: while NATS is down the
//! gateway serves as usual, records wait in the ledger, and the lag shows in
//! `/metrics` (`tollgate_events_lag_records`) and `/health/detailed`.
//!
//! Of many instances only the holder of the `usage-events` lease in PostgreSQL runs
//! it ([`EVENTS_LEASE_TTL`](tollgate_store_distributed::EVENTS_LEASE_TTL), renewed
//! every third of it); another instance takes over once a dead holder's lease
//! expires, from the cursor stored in PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tollgate_events::Tailer;
use tollgate_gateway::now_ms;

use crate::app::AppState;

/// The first pause after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an instance without the lease checks whether it is free.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// The sink for the configured `[events]`, reading `feed`; `None` when off.
pub fn build(config: &crate::config::Config, feed: Arc<dyn tollgate_store::LedgerFeed>) -> Option<Arc<Tailer>> {
    let settings = config.events.as_ref()?;
    Some(Arc::new(Tailer::new(feed, settings.nats.clone(), settings.batch)))
}

/// Runs the sink until `cancel`; releases the lease on the way out.
pub async fn events_loop(state: AppState, tailer: Arc<Tailer>, cancel: CancellationToken) {
    let poll = state.config.events.as_ref().map_or(Duration::from_millis(500), |e| e.poll_interval);
    let renew_every = tollgate_store_distributed::EVENTS_LEASE_TTL / 3;
    // The lease is renewed between passes: a holder waits at most a renewal period,
    // so an outage of NATS does not hand the lease around.
    let max_backoff = if state.distributed.is_some() { MAX_BACKOFF.min(renew_every) } else { MAX_BACKOFF };
    let mut backoff = FIRST_BACKOFF;
    let mut wait = Duration::ZERO;
    let mut renewed: Option<Instant> = None;
    tracing::info!(
        stream = %tailer.settings().stream,
        subject = %tailer.settings().subject,
        cursor = tailer.cursor_name(),
        "usage events sink configured"
    );
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        if let Some(parts) = &state.distributed
            && renewed.is_none_or(|at| at.elapsed() >= renew_every)
        {
            let held = match parts.events_lease.acquire_or_renew().await {
                Ok(held) => held,
                Err(error) => {
                    tracing::debug!(%error, "cannot take the usage events lease; will retry");
                    false
                }
            };
            if !held {
                if renewed.take().is_some() || tailer.stats.active.swap(false, Ordering::Relaxed) {
                    tracing::info!("another instance runs the usage events sink now");
                    tailer.disconnect().await;
                }
                // The lag is the cluster's, whoever publishes: shown here too.
                if let Err(error) = tailer.refresh_lag().await {
                    tracing::debug!(%error, "cannot read the usage events lag");
                }
                wait = LEASE_RETRY;
                continue;
            }
            if renewed.replace(Instant::now()).is_none() {
                tracing::info!("this instance runs the usage events sink (it holds the usage-events lease)");
            }
        }
        tailer.stats.active.store(true, Ordering::Relaxed);
        match tailer.run_once(now_ms()).await {
            Ok(pass) => {
                backoff = FIRST_BACKOFF;
                wait = if pass.full { Duration::ZERO } else { poll };
            }
            Err(error) => {
                if tailer.stats.failed(&error) {
                    tracing::warn!(
                        %error,
                        retry_in = ?backoff,
                        "usage events not published; the gateway keeps serving and the records wait in the ledger"
                    );
                }
                if let Err(error) = tailer.refresh_lag().await {
                    tracing::debug!(%error, "cannot read the usage events lag");
                }
                wait = backoff;
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    tailer.disconnect().await;
    tailer.stats.active.store(false, Ordering::Relaxed);
    if let Some(parts) = &state.distributed
        && renewed.is_some()
        && let Err(error) = parts.events_lease.release().await
    {
        tracing::debug!(%error, "cannot release the usage events lease; it expires");
    }
}
