//! The state every handler shares: the stores behind their traits, the upstream, the
//! plan cache and the configuration. Cheap to clone (all `Arc`s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio_util::task::TaskTracker;
use tollgate_core::{KeyHash, Plan};
use tollgate_providers::Upstream;
use tollgate_store::{Catalog, Ledger, Limiter, StoreResult};

use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub catalog: Arc<dyn Catalog>,
    pub limiter: Arc<dyn Limiter>,
    pub ledger: Arc<dyn Ledger>,
    pub upstream: Arc<Upstream>,
    pub plans: Arc<PlanCache>,
    pub config: Arc<Config>,
    /// Hash of the operator token given by configuration (`TOLLGATE_ADMIN_TOKEN`).
    pub configured_operator: Option<KeyHash>,
    /// Work that must finish before shutdown completes (settlements, ledger appends).
    pub tasks: TaskTracker,
    pub ids: Arc<RequestIds>,
}

/// Plans by name, in memory: read on every request, changed through the admin API.
#[derive(Default)]
pub struct PlanCache {
    plans: RwLock<HashMap<String, Arc<Plan>>>,
}

impl PlanCache {
    pub async fn load(catalog: &dyn Catalog) -> StoreResult<Self> {
        let plans = catalog.list_plans().await?;
        let map = plans.into_iter().map(|p| (p.name.clone(), Arc::new(p))).collect();
        Ok(Self { plans: RwLock::new(map) })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plan>> {
        let plans = self.plans.read().unwrap_or_else(|e| e.into_inner());
        plans.get(name).cloned()
    }

    pub fn put(&self, plan: Plan) {
        let mut plans = self.plans.write().unwrap_or_else(|e| e.into_inner());
        plans.insert(plan.name.clone(), Arc::new(plan));
    }

    pub fn remove(&self, name: &str) {
        let mut plans = self.plans.write().unwrap_or_else(|e| e.into_inner());
        plans.remove(name);
    }

    /// Replaces every plan at once (the distributed backend's periodic reload).
    pub fn replace_all(&self, plans: Vec<Plan>) {
        let map = plans.into_iter().map(|p| (p.name.clone(), Arc::new(p))).collect();
        *self.plans.write().unwrap_or_else(|e| e.into_inner()) = map;
    }
}

/// Request ids unique across processes: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let prefix = getrandom::u64().unwrap_or_else(|_| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
        });
        Self { prefix, next: AtomicU64::new(0) }
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("req_{:016x}{:012x}", self.prefix, n)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds since the Unix epoch, from the system clock (UTC).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Fresh random bytes for keys and tokens.
pub fn random_bytes() -> Result<[u8; tollgate_core::key::RANDOM_BYTES], crate::error::ApiError> {
    let mut buf = [0u8; tollgate_core::key::RANDOM_BYTES];
    getrandom::fill(&mut buf).map_err(|e| crate::error::ApiError::internal(format!("no randomness: {e}")))?;
    Ok(buf)
}
