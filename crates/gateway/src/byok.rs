//! Bring your own key (docs/providers.md): a project's own provider key goes upstream
//! instead of the operator's.
//!
//! The keys are stored sealed (`tollgate-seal`, AES-256-GCM, the purpose
//! `provider-key:<project>:<provider>` as associated data) in a
//! [`ProviderKeyStore`]; [`ProviderKeys`] opens them on demand and keeps what it
//! opened for a short time (`ttl`, so a key changed through another instance is seen
//! within it; changes made through this one are forgotten at once with
//! [`ProviderKeys::forget`]; through a store outage what was kept is served, however
//! old). What it keeps is the header the upstream's
//! [`UpstreamAuth`](tollgate_providers::UpstreamAuth) presents, marked sensitive, and
//! never the key as text: [`ProviderKey`]'s `Debug` shows only the provider and the
//! hint, and nothing here logs a key.
//!
//! The policy ([`Gateway::provider_key_for`]): the project's key first; without one,
//! the operator's, unless the project's `byok_fallback` is `never`, which refuses the
//! request before admission (`provider_key_required`: nothing forwarded, nothing
//! charged). A project key with its own `base_url` goes to an [`Upstream`] built for
//! that URL once (per project, provider and URL) that carries no operator key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tollgate_core::{Authed, ByokFallback};
use tollgate_providers::{Endpoint, ProviderAuth, Upstream};
use tollgate_seal::Sealer;
use tollgate_store::ProviderKeyStore;
use tollgate_store::provider_keys::seal_purpose;

use crate::{Gateway, GatewayError};

/// How long an opened key (or the absence of one) is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);
/// Projects kept at most (each with an entry per provider); past it the cache starts
/// over (a bound, not an LRU: the store answers the misses).
const MAX_PROJECTS: usize = 10_000;
/// Upstreams built for project base URLs kept at most.
const MAX_UPSTREAMS: usize = 1_000;

/// A project's provider key, opened, as the upstream presents it.
pub struct ProviderKey {
    pub project_id: String,
    pub provider: String,
    /// The key's first and last characters (`sk-…wxyz`), for logs and errors.
    pub hint: String,
    pub base_url: Option<String>,
    auth: ProviderAuth,
    /// The upstream at `base_url` (no operator key of its own), when there is one.
    upstream: Option<Arc<Upstream>>,
}

impl std::fmt::Debug for ProviderKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKey")
            .field("project_id", &self.project_id)
            .field("provider", &self.provider)
            .field("hint", &self.hint)
            .field("base_url", &self.base_url)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ProviderKey {
    /// The header that carries the key upstream.
    pub fn auth(&self) -> &ProviderAuth {
        &self.auth
    }

    /// The upstream for the key's own `base_url`, if it has one.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
        self.upstream.as_ref()
    }
}

/// Why a project's stored key cannot be used. The text never holds the key.
#[derive(Debug, thiserror::Error)]
pub enum ProviderKeyError {
    #[error(
        "the project's {provider} key cannot be opened: {reason}. The operator must configure the master key it was \
         sealed with (secrets.master_key or secrets.old_master_keys), or the project must store its key again"
    )]
    Unusable { provider: String, reason: String },
    #[error(
        "this project must use its own {provider} key and has none: store one with PUT /api/v1/projects/{project_id}/provider-keys/{provider}"
    )]
    Required { project_id: String, provider: String },
}

struct Cached {
    at: Instant,
    key: Option<Arc<ProviderKey>>,
}

type UpstreamKey = (String, String, String);

/// The provider keys of the projects: the store, the sealer that opens them, and
/// what was opened recently.
pub struct ProviderKeys {
    store: Arc<dyn ProviderKeyStore>,
    sealer: Option<Sealer>,
    ttl: Duration,
    /// By project, then provider: looked up with the request's `&str`s, no allocation.
    opened: Mutex<HashMap<String, HashMap<String, Cached>>>,
    /// Bumped by every `forget`: a store read that began before one is not kept (it
    /// may have read the value the change replaced).
    generation: AtomicU64,
    upstreams: Mutex<HashMap<UpstreamKey, Arc<Upstream>>>,
}

impl std::fmt::Debug for ProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderKeys").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

impl ProviderKeys {
    /// `sealer` `None`: no master key is configured, so no key can be stored, and a
    /// key found stored cannot be opened (its project's requests get a clear error).
    pub fn new(store: Arc<dyn ProviderKeyStore>, sealer: Option<Sealer>, ttl: Duration) -> Self {
        Self {
            store,
            sealer,
            ttl,
            opened: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            upstreams: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &Arc<dyn ProviderKeyStore> {
        &self.store
    }

    pub fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }

    /// Drops what is kept of `(project_id, provider)`: the next request reads the
    /// store (call it after every change made through this instance).
    pub fn forget(&self, project_id: &str, provider: &str) {
        {
            let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
            self.generation.fetch_add(1, Ordering::Relaxed);
            if let Some(project) = opened.get_mut(project_id) {
                project.remove(provider);
            }
        }
        self.upstreams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(project, name, _), _| !(project == project_id && name == provider));
    }

    /// Drops everything kept (after a rotation).
    pub fn forget_all(&self) {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::Relaxed);
        opened.clear();
    }

    /// What was kept, however old (served while the store cannot be read).
    fn stale(&self, project_id: &str, provider: &str) -> Option<Option<Arc<ProviderKey>>> {
        let opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        opened.get(project_id)?.get(provider).map(|c| c.key.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn cached(&self, project_id: &str, provider: &str) -> Option<Option<Arc<ProviderKey>>> {
        let opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        let found = opened.get(project_id)?.get(provider)?;
        (found.at.elapsed() < self.ttl).then(|| found.key.clone())
    }

    /// Keeps what a store read that began at `generation` found, unless a change was
    /// forgotten since.
    fn keep(&self, generation: u64, project_id: &str, provider: &str, key: Option<Arc<ProviderKey>>) {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Relaxed) != generation {
            return;
        }
        if opened.len() >= MAX_PROJECTS && !opened.contains_key(project_id) {
            opened.clear();
        }
        opened
            .entry(project_id.to_owned())
            .or_default()
            .insert(provider.to_owned(), Cached { at: Instant::now(), key });
    }

    /// The upstream for a project's `base_url`, built once and kept.
    fn upstream_at(
        &self,
        operator: &Upstream,
        project_id: &str,
        provider: &str,
        base_url: &str,
    ) -> Result<Arc<Upstream>, String> {
        let id = (project_id.to_owned(), provider.to_owned(), base_url.to_owned());
        let mut upstreams = self.upstreams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(upstream) = upstreams.get(&id) {
            return Ok(upstream.clone());
        }
        let upstream = Arc::new(operator.rebased(base_url).map_err(|e| e.to_string())?);
        if upstreams.len() >= MAX_UPSTREAMS {
            upstreams.clear();
        }
        upstreams.insert(id, upstream.clone());
        Ok(upstream)
    }
}

impl Gateway {
    /// The upstream of a configured provider name (`upstream.provider`,
    /// `anthropic.provider`, or a `[providers.NAME]`).
    pub fn provider_upstream(&self, provider: &str) -> Option<&Arc<Upstream>> {
        self.routing.providers.get(provider).map(|p| &p.upstream)
    }

    /// The provider name an endpoint's requests go to and are recorded under.
    pub fn provider_of(&self, endpoint: Endpoint) -> &str {
        if endpoint.is_anthropic() { &self.settings.anthropic_provider } else { &self.settings.provider }
    }

    /// The project's own key for `provider`, opened (kept for a short time), or
    /// `None` when the project stored none (or BYOK is not set up). A stored key that
    /// cannot be opened is an error, never a silent fall back to the operator's key.
    pub async fn provider_key(
        &self,
        project_id: &str,
        provider: &str,
    ) -> Result<Option<Arc<ProviderKey>>, GatewayError> {
        let Some(keys) = &self.provider_keys else { return Ok(None) };
        if let Some(found) = keys.cached(project_id, provider) {
            return Ok(found);
        }
        let generation = keys.generation();
        let read = match keys.store.get_provider_key(project_id, provider).await {
            Ok(read) => read,
            Err(e) => {
                // Stale if error: what this instance last knew keeps serving through a
                // store outage (as cached tollgate keys do); with nothing known, the error.
                let Some(stale) = keys.stale(project_id, provider) else { return Err(e.into()) };
                tracing::warn!(project_id, provider, error = %e, "provider key store unavailable: using what was kept");
                return Ok(stale);
            }
        };
        let Some(record) = read else {
            keys.keep(generation, project_id, provider, None);
            return Ok(None);
        };
        let unusable = |reason: String| {
            tracing::warn!(project_id, provider, hint = %record.hint, %reason, "a project's provider key cannot be used");
            GatewayError::ProviderKey(ProviderKeyError::Unusable { provider: provider.to_owned(), reason })
        };
        let Some(operator) = self.provider_upstream(provider) else {
            return Err(unusable("the provider is no longer configured".to_owned()));
        };
        let Some(sealer) = &keys.sealer else {
            return Err(unusable("no master key is configured".to_owned()));
        };
        let clear = sealer
            .open(&seal_purpose(project_id, provider), &record.sealed_key)
            .map_err(|e| unusable(e.to_string()))?;
        let auth = operator.provider_auth(&clear).map_err(|e| unusable(e.to_string()))?;
        drop(clear);
        let upstream = match &record.base_url {
            Some(url) => Some(keys.upstream_at(operator, project_id, provider, url).map_err(unusable)?),
            None => None,
        };
        let key = Arc::new(ProviderKey {
            project_id: record.project_id.clone(),
            provider: record.provider.clone(),
            hint: record.hint.clone(),
            base_url: record.base_url.clone(),
            auth,
            upstream,
        });
        keys.keep(generation, project_id, provider, Some(key.clone()));
        Ok(Some(key))
    }

    /// The policy: the key's project's own key for `provider`; else `None` (the
    /// operator's key), unless the project's `byok_fallback` is `never`: then
    /// `provider_key_required`.
    pub async fn provider_key_for(
        &self,
        authed: &Authed,
        provider: &str,
    ) -> Result<Option<Arc<ProviderKey>>, GatewayError> {
        let project_id = &authed.key.project_id;
        match self.provider_key(project_id, provider).await? {
            Some(key) => Ok(Some(key)),
            None if authed.project.byok_fallback == ByokFallback::Never => {
                Err(GatewayError::ProviderKey(ProviderKeyError::Required {
                    project_id: project_id.clone(),
                    provider: provider.to_owned(),
                }))
            }
            None => Ok(None),
        }
    }

    /// Where an endpoint's request goes and with which key: the project key's own
    /// upstream (its `base_url`) or the endpoint's, and the project key's header
    /// (`None`: the upstream's own, the operator's key).
    pub fn upstream_with_key<'a>(
        &'a self,
        endpoint: Endpoint,
        key: Option<&'a ProviderKey>,
    ) -> (&'a Upstream, Option<&'a ProviderAuth>) {
        match key {
            Some(key) => (key.upstream().map_or_else(|| self.upstream_for(endpoint), |u| &**u), Some(key.auth())),
            None => (self.upstream_for(endpoint), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_key_and_its_record_print_no_secret() {
        let auth = ProviderAuth::new(tollgate_providers::UpstreamAuth::Bearer, "sk-secret-0123456789").expect("auth");
        let key = ProviderKey {
            project_id: "p1".into(),
            provider: "openai".into(),
            hint: "sk-…6789".into(),
            base_url: None,
            auth,
            upstream: None,
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("sk-secret") && shown.contains("<redacted>") && shown.contains("sk-…6789"), "{shown}");
        let record = tollgate_store::ProviderKeyRecord {
            project_id: "p1".into(),
            provider: "openai".into(),
            sealed_key: "v1:00000000:c2VhbGVk".into(),
            hint: "sk-…6789".into(),
            base_url: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert!(!format!("{record:?}").contains("c2VhbGVk"), "not even the ciphertext");
        let required = ProviderKeyError::Required { project_id: "p1".into(), provider: "openai".into() };
        assert!(required.to_string().contains("PUT /api/v1/projects/p1/provider-keys/openai"), "{required}");
    }
}
