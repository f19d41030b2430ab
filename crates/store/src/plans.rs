//! Plans in memory, read on every request: the one place a key's plan is resolved
//! (authentication, the usage API, ledger replays), and a per-batch cache of keys
//! with their plans for replays over many records of few keys.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tollgate_core::{Authed, KeyRecord, Plan};

use crate::{Catalog, StoreResult};

/// Plans by name, in memory: read on every request, changed through the admin API
/// (and in distributed mode reloaded by a job).
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

    /// The key with its plan, or `None` when the plan it names does not exist.
    pub fn resolve(&self, key: Arc<KeyRecord>) -> Option<Authed> {
        let plan = self.get(&key.plan)?;
        Some(Authed { key, plan })
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

/// Keys resolved with their plans, remembered for a batch of ledger records
/// (counter rebuilds replay many records of few keys).
#[derive(Default)]
pub struct AuthedCache {
    keys: HashMap<String, Option<Authed>>,
}

impl AuthedCache {
    /// The key and its plan, or `None` if the key or its plan is gone.
    pub async fn get(
        &mut self,
        catalog: &dyn Catalog,
        plans: &PlanCache,
        key_id: &str,
    ) -> StoreResult<Option<&Authed>> {
        if !self.keys.contains_key(key_id) {
            let authed = match catalog.get_key(key_id).await? {
                Some(key) => plans.resolve(Arc::new(key)),
                None => None,
            };
            self.keys.insert(key_id.to_owned(), authed);
        }
        Ok(self.keys.get(key_id).and_then(Option::as_ref))
    }
}
