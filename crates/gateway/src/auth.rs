//! Phase 1, authenticate: a presented key, checked in order of cost: format and
//! checksum (no store), hash lookup (in memory on the embedded store), state
//! (revoked, expired), plan and project settings (in memory; one this instance has
//! not loaded yet, made through another instance a moment ago, is read from the
//! catalog on demand).

use tollgate_core::key::KEY_PREFIX;
use tollgate_core::{ApiKey, Authed, KeyState};
use tollgate_store::StoreError;

use crate::Gateway;

/// Why a key cannot be used, in the pipeline's words (the verify endpoint answers
/// these as codes, the proxy as 401/403).
#[derive(Debug, thiserror::Error)]
pub enum KeyRefusal {
    /// Not a tollgate key at all (format or checksum).
    #[error("{0}")]
    Malformed(String),
    /// Well-formed, but no key has this secret.
    #[error("Incorrect API key provided: {KEY_PREFIX}{public_id}_****. Create a key with `tollgate keys create`.")]
    Unknown { public_id: String },
    #[error("This API key has been revoked.")]
    Revoked,
    #[error("This API key has expired.")]
    Expired,
    /// The key names a plan the catalog does not have (a plan not loaded yet is
    /// loaded on demand first): an operator's mistake, answered 403, never a 500.
    #[error("This API key is on plan '{plan}', which does not exist; the operator must move key {key_id} to a plan.")]
    PlanMissing { key_id: String, plan: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl KeyRefusal {
    /// Whether the key is simply not a key (the verify endpoint's `NOT_FOUND`).
    pub fn is_not_found(&self) -> bool {
        matches!(self, KeyRefusal::Malformed(_) | KeyRefusal::Unknown { .. })
    }
}

impl Gateway {
    /// Resolves a presented key to a usable key and plan.
    pub async fn authenticate(&self, presented: &str, now_ms: i64) -> Result<Authed, KeyRefusal> {
        let key = ApiKey::parse(presented).map_err(|e| KeyRefusal::Malformed(e.to_string()))?;
        let record = self
            .catalog
            .lookup_key(&key.hash(), now_ms)
            .await?
            .ok_or_else(|| KeyRefusal::Unknown { public_id: key.public_id().to_owned() })?;
        match record.state(now_ms) {
            KeyState::Active => {}
            KeyState::Revoked => return Err(KeyRefusal::Revoked),
            KeyState::Expired => return Err(KeyRefusal::Expired),
        }
        if let Some(authed) = self.plans.resolve_cached(&record) {
            return Ok(authed);
        }
        let (key_id, plan) = (record.id.clone(), record.plan.clone());
        match self.plans.resolve_loading(self.catalog.as_ref(), record).await? {
            Some(authed) => Ok(authed),
            None => {
                tracing::warn!(key_id, plan, "a key names a plan that does not exist");
                Err(KeyRefusal::PlanMissing { key_id, plan })
            }
        }
    }
}
