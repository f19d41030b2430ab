//! Counters are derived data: on start, the counted ledger records of the current
//! windows are replayed into a limiter that starts empty (the embedded store), so
//! quotas survive restarts.

use tollgate_core::calendar::{MS_PER_HOUR, month_start};
use tollgate_core::record_items;

use crate::plans::{AuthedCache, PlanCache};
use crate::{Catalog, Ledger, Limiter, StoreResult};

/// Replays the counted ledger records of the current month (and the last hour, for
/// the sliding windows) into `limiter`. Returns how many records were replayed.
pub async fn replay_ledger(
    catalog: &dyn Catalog,
    ledger: &dyn Ledger,
    limiter: &dyn Limiter,
    plans: &PlanCache,
    anonymous_plan: &str,
    now_ms: i64,
) -> StoreResult<usize> {
    let since = month_start(now_ms).min(now_ms - MS_PER_HOUR);
    let records = ledger.records_since(since).await?;
    let mut keys = AuthedCache::default();
    let anonymous_plan = plans.get(anonymous_plan);
    let mut replayed = 0;
    for record in records.iter().filter(|r| r.counted) {
        let Some(authed) = keys.get(catalog, plans, &record.key_id).await? else { continue };
        let items = record_items(authed, record, anonymous_plan.as_deref());
        limiter.apply(&record.project_id, &items, record.amounts(), record.ts_ms).await?;
        replayed += 1;
    }
    Ok(replayed)
}
