//! Plans and project settings in memory, read on every request: the one place a key's
//! plan and project are resolved (authentication, the usage API, ledger replays), and
//! a per-batch cache of keys with their plans for replays over many records of few
//! keys.
//!
//! A plan or project this instance has not loaded yet (made a moment ago through
//! another instance) is read from the catalog on demand by [`PlanCache::resolve_loading`]
//! and kept, so a key on it works at once instead of waiting for the next refresh.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tollgate_core::{Authed, KeyRecord, Plan, Project, ProjectSettings, Zone};

use crate::{Catalog, StoreResult};

/// Plans by name and project settings by project id, in memory: read on every
/// request, changed through the admin API (and in distributed mode reloaded by a job).
#[derive(Default)]
pub struct PlanCache {
    plans: RwLock<HashMap<String, Arc<Plan>>>,
    projects: RwLock<HashMap<String, Arc<ProjectSettings>>>,
}

impl PlanCache {
    pub async fn load(catalog: &dyn Catalog) -> StoreResult<Self> {
        let cache = Self::default();
        cache.replace_all(catalog.list_plans().await?);
        cache.replace_all_projects(catalog.list_projects().await?);
        Ok(cache)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Plan>> {
        let plans = self.plans.read().unwrap_or_else(|e| e.into_inner());
        plans.get(name).cloned()
    }

    /// A project's settings, if loaded.
    pub fn project(&self, id: &str) -> Option<Arc<ProjectSettings>> {
        let projects = self.projects.read().unwrap_or_else(|e| e.into_inner());
        projects.get(id).cloned()
    }

    /// The key with its plan and project settings, or `None` when its plan is not
    /// loaded. A project not loaded counts with the default settings: use
    /// [`resolve_loading`](Self::resolve_loading) where the catalog can be asked.
    pub fn resolve(&self, key: Arc<KeyRecord>) -> Option<Authed> {
        let plan = self.get(&key.plan)?;
        let project = self.project(&key.project_id).unwrap_or_default();
        Some(Authed { key, plan, project })
    }

    /// The key with its plan and project settings when both are loaded (the hot path:
    /// no store, no await); `None` sends the caller to [`resolve_loading`](Self::resolve_loading).
    pub fn resolve_cached(&self, key: &Arc<KeyRecord>) -> Option<Authed> {
        let plan = self.get(&key.plan)?;
        let project = self.project(&key.project_id)?;
        Some(Authed { key: key.clone(), plan, project })
    }

    /// Like [`resolve`](Self::resolve), but a plan or project not loaded yet is read
    /// from the catalog (and kept). `None` only when the catalog has no such plan.
    pub async fn resolve_loading(&self, catalog: &dyn Catalog, key: Arc<KeyRecord>) -> StoreResult<Option<Authed>> {
        let plan = match self.get(&key.plan) {
            Some(plan) => plan,
            None => match catalog.get_plan(&key.plan).await? {
                Some(plan) => {
                    tracing::debug!(plan = %plan.name, "plan loaded on demand");
                    self.put(plan.clone());
                    Arc::new(plan)
                }
                None => return Ok(None),
            },
        };
        let project = match self.project(&key.project_id) {
            Some(settings) => settings,
            None => match catalog.get_project(&key.project_id).await? {
                Some(project) => {
                    let settings = Arc::new(project.settings.clone());
                    self.put_project(project);
                    settings
                }
                None => Arc::default(),
            },
        };
        Ok(Some(Authed { key, plan, project }))
    }

    /// Every time zone a loaded plan or project names, and UTC: the zones whose day
    /// and month windows counters can be in.
    pub fn zones_in_use(&self) -> Vec<Zone> {
        let mut zones = vec![Zone::UTC];
        let plans = self.plans.read().unwrap_or_else(|e| e.into_inner());
        let projects = self.projects.read().unwrap_or_else(|e| e.into_inner());
        let named = plans.values().filter_map(|p| p.time_zone.clone());
        for zone in named.chain(projects.values().filter_map(|p| p.time_zone.clone())) {
            if !zones.contains(&zone) {
                zones.push(zone);
            }
        }
        zones
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

    /// Stores a project's settings (after it was created or changed).
    pub fn put_project(&self, project: Project) {
        let mut projects = self.projects.write().unwrap_or_else(|e| e.into_inner());
        projects.insert(project.id, Arc::new(project.settings));
    }

    /// Replaces every project's settings at once (the distributed periodic reload).
    pub fn replace_all_projects(&self, projects: Vec<Project>) {
        let map = projects.into_iter().map(|p| (p.id, Arc::new(p.settings))).collect();
        *self.projects.write().unwrap_or_else(|e| e.into_inner()) = map;
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
                Some(key) => plans.resolve_loading(catalog, Arc::new(key)).await?,
                None => None,
            };
            self.keys.insert(key_id.to_owned(), authed);
        }
        Ok(self.keys.get(key_id).and_then(Option::as_ref))
    }
}
