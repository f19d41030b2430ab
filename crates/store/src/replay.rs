//! Counters are derived data: on start, the counted usage of the current windows is
//! replayed into a limiter that starts empty (the embedded store), so quotas survive
//! restarts.
//!
//! The ledger is not loaded: the store sums it per what limits look at and per time
//! bucket ([`TotalsQuery::for_replay`]) and hands the sums over in bounded pages, and
//! each sum is charged at its bucket's start, which moves every counter exactly as
//! charging each record at its own time did.

use tollgate_core::record_items;

use crate::plans::{AuthedCache, PlanCache};
use crate::{Catalog, Ledger, Limiter, StoreResult, TotalsQuery};

/// Replays the counted usage of the current month (and the last hour, for the
/// sliding windows) into `limiter`. Returns how many sums were replayed.
pub async fn replay_ledger(
    catalog: &dyn Catalog,
    ledger: &dyn Ledger,
    limiter: &dyn Limiter,
    plans: &PlanCache,
    anonymous_plan: &str,
    now_ms: i64,
) -> StoreResult<usize> {
    let mut pages = ledger.usage_totals(TotalsQuery::for_replay(now_ms)).await?;
    let mut keys = AuthedCache::default();
    let anonymous_plan = plans.get(anonymous_plan);
    let mut replayed = 0;
    while let Some(page) = pages.recv().await {
        for total in page? {
            let Some(authed) = keys.get(catalog, plans, &total.key_id).await? else { continue };
            let items = record_items(authed, &total, anonymous_plan.as_deref());
            limiter.apply(&total.project_id, &items, total.amounts(), total.ts_ms).await?;
            replayed += 1;
        }
    }
    Ok(replayed)
}
