//! The distributed backend's background jobs: change subscriber, plan refresher,
//! breaker probe and counter rebuild. Each stops when its cancellation token fires
//! and is spawned on the caller's tracker, so shutdown waits for it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tollgate_core::calendar::MS_PER_DAY;
use tollgate_core::{Amounts, Metric, Window, Zone, record_items};
use tollgate_store::clock::now_ms;
use tollgate_store::{AuthedCache, Catalog, Ledger, PlanCache, TotalsQuery};
use tollgate_store_postgres::CatalogChange;
use tollgate_store_redis::{BusEvent, CalendarTarget};

use crate::{Backend, DEGRADED_KEY_TTL, Distributed, PLAN_REFRESH, PROBE_EVERY};

/// What the jobs need from the gateway: the plan cache they keep fresh and the name
/// of the anonymous plan (counter rebuilds resolve limits as requests do).
#[derive(Clone)]
pub struct JobContext {
    pub catalog: Arc<dyn Catalog>,
    pub plans: Arc<PlanCache>,
    pub anonymous_plan: String,
    /// The semantic cache whose index the catch-up job keeps current.
    pub semantic: Option<Arc<tollgate_cache::semantic::SemanticCache>>,
}

impl Backend {
    /// Starts the distributed backend's jobs (nothing in embedded mode). They stop
    /// when `cancel` fires; `tracker` lets shutdown wait for them.
    pub fn spawn_jobs(&self, state: &JobContext, cancel: &CancellationToken, tracker: &TaskTracker) {
        let Some(parts) = &self.distributed else { return };
        let plans_changed = Arc::new(Notify::new());
        let semantic_changed = Arc::new(Notify::new());

        // Change notices -> key cache and plan cache. Until the first subscription
        // is up, notices cannot arrive: cached keys live one second at most.
        parts.catalog.set_short_ttl(Some(DEGRADED_KEY_TTL));
        {
            let (parts, cancel, plans_changed) = (parts.clone(), cancel.clone(), plans_changed.clone());
            let semantic_changed = semantic_changed.clone();
            tracker.spawn(async move {
                let catalog = parts.catalog.clone();
                parts
                    .bus
                    .run_subscriber(cancel.cancelled_owned(), move |event| match event {
                        BusEvent::Subscribed => {
                            catalog.set_short_ttl(None);
                            catalog.clear_cache();
                            plans_changed.notify_one();
                            semantic_changed.notify_one();
                        }
                        BusEvent::Message(text) if text == crate::SEMANTIC_NOTICE => semantic_changed.notify_one(),
                        BusEvent::Lost => catalog.set_short_ttl(Some(DEGRADED_KEY_TTL)),
                        BusEvent::Message(text) => match CatalogChange::decode(&text) {
                            Some(change @ CatalogChange::Key { .. }) => catalog.apply_change(&change),
                            Some(CatalogChange::Plan { .. } | CatalogChange::Project { .. }) => {
                                plans_changed.notify_one()
                            }
                            Some(CatalogChange::AdminToken) => {}
                            None => tracing::debug!(notice = %text, "ignoring an unknown catalog notice"),
                        },
                    })
                    .await;
            });
        }

        // The semantic index: loaded now, then caught up on notice and every
        // SEMANTIC_CATCH_UP (a notice missed is caught up by then).
        if let Some(semantic) = state.semantic.clone() {
            let cancel = cancel.clone();
            tracker.spawn(async move {
                let mut failing = false;
                loop {
                    match semantic.catch_up(now_ms()).await {
                        Ok(added) => {
                            if added > 0 {
                                tracing::debug!(added, "semantic cache rows loaded from PostgreSQL");
                            }
                            failing = false;
                        }
                        Err(error) => {
                            if !failing {
                                tracing::warn!(%error, "cannot load semantic cache rows; this instance's index may lag");
                            }
                            failing = true;
                        }
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = semantic_changed.notified() => {}
                        () = tokio::time::sleep(crate::SEMANTIC_CATCH_UP) => {}
                    }
                }
            });
        }

        // Plans and project settings: on notice and every PLAN_REFRESH. (A key on a
        // plan or project not loaded yet loads it on demand: `PlanCache::resolve_loading`.)
        {
            let (state, cancel) = (state.clone(), cancel.clone());
            tracker.spawn(async move {
                let mut failing = false;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = plans_changed.notified() => {}
                        () = tokio::time::sleep(PLAN_REFRESH) => {}
                    }
                    let loaded = match state.catalog.list_plans().await {
                        Ok(plans) => state.catalog.list_projects().await.map(|projects| (plans, projects)),
                        Err(error) => Err(error),
                    };
                    match loaded {
                        Ok((plans, projects)) => {
                            state.plans.replace_all(plans);
                            state.plans.replace_all_projects(projects);
                            if failing {
                                tracing::info!("plans reloaded from PostgreSQL again");
                            }
                            failing = false;
                        }
                        Err(error) => {
                            if !failing {
                                tracing::warn!(%error, "cannot reload plans; serving the last ones loaded");
                            }
                            failing = true;
                        }
                    }
                }
            });
        }

        // The registry of running instances: a heartbeat, and deregistering on stop.
        {
            let (parts, cancel) = (parts.clone(), cancel.clone());
            tracker.spawn(async move {
                let host = hostname();
                loop {
                    if let Err(error) = parts
                        .registry
                        .heartbeat(&parts.instance_id, env!("CARGO_PKG_VERSION"), &host, parts.started_at_ms)
                        .await
                    {
                        tracing::debug!(%error, "cannot record this instance's heartbeat");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(crate::HEARTBEAT_EVERY) => {}
                    }
                }
                if let Err(error) = parts.registry.deregister(&parts.instance_id).await {
                    tracing::debug!(%error, "cannot deregister this instance; its entry ages out");
                }
            });
        }

        // Breaker probe.
        {
            let (parts, cancel) = (parts.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(PROBE_EVERY) => {}
                    }
                    if parts.limiter.is_down() && parts.redis.preload().await.is_ok() {
                        parts.limiter.mark_up();
                    }
                }
            });
        }

        // Failing open: seed the local counters from the ledger when an outage starts.
        {
            let (state, parts, cancel) = (state.clone(), parts.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = parts.limiter.seed_wanted() => {}
                    }
                    match seed_local_counters(&state, &parts, now_ms()).await {
                        Ok(seeded) => tracing::info!(seeded, "local counters seeded from the ledger's totals"),
                        Err(error) => tracing::warn!(
                            error = %format!("{error:#}"),
                            "cannot read the ledger's totals: local counters start empty"
                        ),
                    }
                    parts.limiter.seeded();
                }
            });
        }

        // Counter rebuild: periodically and as soon as Redis is back, by the one
        // instance that holds the rebuild lease.
        {
            let (state, parts, cancel) = (state.clone(), parts.clone(), cancel.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => {
                            if let Err(error) = parts.rebuild_lease.release().await {
                                tracing::debug!(%error, "cannot release the counter rebuild lease; it expires");
                            }
                            return;
                        }
                        () = parts.limiter.recovered() => {}
                        () = tokio::time::sleep(parts.config.counter_rebuild_every) => {}
                    }
                    if parts.limiter.is_down() {
                        continue;
                    }
                    match parts.rebuild_lease.acquire_or_renew().await {
                        Ok(true) => {}
                        // Another instance rebuilds.
                        Ok(false) => continue,
                        Err(error) => {
                            tracing::debug!(%error, "cannot take the counter rebuild lease");
                            continue;
                        }
                    }
                    parts.rebuilds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match rebuild_calendar_counters(&state, &parts, now_ms()).await {
                        Ok(raised) if raised > 0 => {
                            tracing::info!(raised, "day and month counters raised to the ledger's totals");
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(error = %format!("{error:#}"), "counter rebuild failed"),
                    }
                }
            });
        }
    }

    /// The start-up counterpart of `tollgate_store::replay::replay_ledger` for the distributed
    /// backend: raise (never add to) the shared counters. Returns how many were raised.
    pub async fn rebuild_at_start(&self, state: &JobContext, now: i64) -> anyhow::Result<usize> {
        let Some(parts) = &self.distributed else { return Ok(0) };
        if parts.limiter.is_down() {
            tracing::warn!("Redis unavailable at start: counters will be rebuilt when it answers");
            return Ok(0);
        }
        rebuild_calendar_counters(state, parts, now).await
    }
}

/// Raises every day and month counter in Redis to at least the usage the PostgreSQL
/// ledger holds for its current window (one SQL aggregate, one Redis call per
/// project). Counters never go down: what Redis counted beyond the ledger (requests
/// in flight, records not yet written) stays. Returns how many counters were raised.
///
/// This is what makes Redis derived data: after a restart or failover that lost
/// counters, quotas are exact again within one run of this job.
/// Partition → counter key → the ledger's total for each day and month counter.
type Targets = HashMap<String, HashMap<String, CalendarTarget>>;

/// The ledger's usage in the current day and month windows, counter by counter, resolved
/// to limits as requests are. Windows are each limit's own, in its zone: for every zone
/// in use, one SQL aggregate over its month and one over its day (per UTC day, read in
/// bounded pages), each counting only the limits in that zone. Memory: a page of sums
/// and one target per counter.
async fn calendar_targets(state: &JobContext, parts: &Distributed, now: i64) -> anyhow::Result<Targets> {
    let anonymous_plan = state.plans.get(&state.anonymous_plan);
    let mut keys = AuthedCache::default();
    let mut targets = Targets::new();
    for zone in state.plans.zones_in_use() {
        for window in [Window::Month, Window::Day] {
            let (since, _) = zone.bounds(window, now);
            let query = TotalsQuery { since_ms: since, finer: Vec::new(), bucket_ms: MS_PER_DAY };
            let mut pages = parts.ledger.usage_totals(query).await.context("summing the ledger")?;
            while let Some(page) = pages.recv().await {
                for record in &page.context("summing the ledger")? {
                    let scope = Scope { zone: &zone, window, now };
                    add_targets(state, parts, &mut keys, anonymous_plan.as_deref(), record, scope, &mut targets)
                        .await?;
                }
            }
        }
    }
    Ok(targets)
}

/// Which counters one pass of [`calendar_targets`] fills: those of `window` in `zone`.
struct Scope<'a> {
    zone: &'a Zone,
    window: Window,
    now: i64,
}

/// Adds one sum (of records in the current `scope.window` of `scope.zone`) to the
/// counters of that window and zone it counts in.
async fn add_targets(
    state: &JobContext,
    parts: &Distributed,
    keys: &mut AuthedCache,
    anonymous_plan: Option<&tollgate_core::Plan>,
    record: &tollgate_core::UsageRecord,
    scope: Scope<'_>,
    targets: &mut Targets,
) -> anyhow::Result<()> {
    let Some(authed) = keys.get(state.catalog.as_ref(), &state.plans, &record.key_id).await? else { return Ok(()) };
    let amounts = record.amounts();
    for item in record_items(authed, record, anonymous_plan) {
        if item.spec.window != scope.window || item.zone != *scope.zone {
            continue;
        }
        let (window_start_ms, window_end_ms) = item.calendar_bounds(scope.now);
        let amount = amounts.get(item.spec.metric);
        let counter = parts.redis.keys().counter(&record.project_id, &item);
        let target = targets
            .entry(record.project_id.clone())
            .or_default()
            .entry(counter)
            .or_insert_with(|| CalendarTarget { item, window_start_ms, window_end_ms, amount: 0 });
        target.amount = target.amount.saturating_add(amount);
    }
    Ok(())
}

pub async fn rebuild_calendar_counters(state: &JobContext, parts: &Distributed, now: i64) -> anyhow::Result<usize> {
    let targets = calendar_targets(state, parts, now).await?;
    let mut raised = 0;
    for (partition, counters) in targets {
        let counters: Vec<CalendarTarget> = counters.into_values().collect();
        raised += parts
            .redis
            .raise_calendar_counters(&partition, &counters, now)
            .await
            .with_context(|| format!("raising the counters of project {partition}"))?;
    }
    Ok(raised)
}

/// Seeds the failover limiter's local counters with this instance's share of the
/// ledger's day and month totals, so failing open does not hand a spent budget out
/// again. Minute and hour windows start empty (they refill within the hour anyway).
/// Returns how many counters were seeded.
pub async fn seed_local_counters(state: &JobContext, parts: &Distributed, now: i64) -> anyhow::Result<usize> {
    let targets = calendar_targets(state, parts, now).await?;
    let mut seeded = 0;
    for (partition, counters) in targets {
        for target in counters.into_values() {
            let amounts = amounts_of(target.item.spec.metric, target.amount);
            parts.limiter.seed(&partition, std::slice::from_ref(&target.item), amounts, now).await?;
            seeded += 1;
        }
    }
    Ok(seeded)
}

/// Amounts that charge `amount` to a limit on `metric`.
fn amounts_of(metric: Metric, amount: u64) -> Amounts {
    let mut amounts = Amounts::default();
    match metric {
        Metric::Requests => amounts.requests = amount,
        Metric::InputTokens | Metric::TotalTokens => amounts.input_tokens = amount,
        Metric::OutputTokens => amounts.output_tokens = amount,
        Metric::CostMicros => amounts.cost_micros = amount,
    }
    amounts
}

/// This host's name (`/etc/hostname`, else `HOSTNAME`), for the instance registry.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}
