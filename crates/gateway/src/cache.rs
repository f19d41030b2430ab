//! The cache phase (between admission and forwarding): a request of a project whose
//! cache is on gets its exact key ([`tollgate_cache::key`]); a hit is answered from
//! the entry (whole, or replayed as a stream) and recorded with zero cost and its
//! potential cost; a miss is forwarded and its answer stored if it completed. A
//! project with the cache off pays one branch: no parse, no hash, no allocation.
//!
//! Projects with `cache.semantic` on also get the semantic half ([`crate::semantic`])
//! for chat requests the exact lookup missed.
//!
//! Per request, `Cache-Control: no-cache` skips the lookup but stores the answer,
//! `no-store` does neither. Every failure of the cache (timeout, backend down, an
//! entry that does not decode) is a miss, never an error for the client.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tollgate_cache::replay::{self, Kind};
use tollgate_cache::{CacheKey, Entry};
use tollgate_core::Authed;
use tollgate_providers::{Endpoint, RequestView};

use crate::Gateway;
use crate::semantic::{SemanticPlan, SemanticTarget};

/// What the `x-tollgate-cache` header says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CacheStatus {
    /// Answered from the cache; the entry's age in seconds, and for a semantic hit the
    /// similarity of the stored conversation to the request's.
    Hit { age_secs: u64, similarity: Option<f32> },
    /// Looked up, not found: forwarded (and stored if it completes).
    Miss,
    /// Not looked up: `Cache-Control: no-cache` / `no-store`, or a request that is not
    /// deterministic while the project caches only those.
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit { .. } => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What the cache phase does for one request.
#[derive(Clone, Debug)]
pub struct CachePlan {
    pub key: CacheKey,
    pub lookup: bool,
    pub store: bool,
    pub ttl: Duration,
    /// For a chat request of a project with `cache.semantic` on: what is embedded and
    /// where it is searched.
    pub semantic: Option<SemanticPlan>,
}

/// Where a forwarded answer is stored once it completed.
#[derive(Clone, Debug)]
pub struct CacheTarget {
    pub key: CacheKey,
    pub ttl: Duration,
    /// Also under the conversation's embedding.
    pub semantic: Option<SemanticTarget>,
}

impl CachePlan {
    /// The header value when nothing was found (or looked up).
    pub fn status(&self) -> CacheStatus {
        if self.lookup { CacheStatus::Miss } else { CacheStatus::Bypass }
    }

    /// Where a forwarded answer is stored, if it is: `vector` is the conversation's
    /// embedding when the semantic half could get one.
    pub fn store_to(self, project: &str, vector: Option<Vec<f32>>) -> Option<CacheTarget> {
        let semantic = match (self.semantic, vector) {
            (Some(plan), Some(vector)) => {
                Some(SemanticTarget { project: project.to_owned(), partition: plan.partition, vector })
            }
            _ => None,
        };
        self.store.then_some(CacheTarget { key: self.key, ttl: self.ttl, semantic })
    }
}

/// The request's `Cache-Control` directives that concern the cache: (no-cache,
/// no-store).
fn directives(headers: &HeaderMap) -> (bool, bool) {
    let (mut no_cache, mut no_store) = (false, false);
    for value in headers.get_all(reqwest::header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim();
            no_cache |= directive.eq_ignore_ascii_case("no-cache");
            no_store |= directive.eq_ignore_ascii_case("no-store");
        }
    }
    (no_cache, no_store)
}

impl Gateway {
    /// The cache phase's plan for a request: `None` when the project's cache is off
    /// (or there is no cache), else the key and whether to look up and store, with the
    /// status the answer reports if nothing is found.
    pub fn cache_plan(
        &self,
        authed: &Authed,
        view: &RequestView<'_>,
        body: &Bytes,
        headers: &HeaderMap,
    ) -> Option<Result<CachePlan, CacheStatus>> {
        let settings = &authed.project.cache;
        if !settings.enabled || self.cache.is_none() || !cacheable(view.endpoint) {
            return None;
        }
        let (no_cache, no_store) = directives(headers);
        if no_store {
            return Some(Err(CacheStatus::Bypass));
        }
        let Ok(request) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Some(Err(CacheStatus::Bypass));
        };
        if settings.deterministic_only
            && view.endpoint != Endpoint::Embeddings
            && !tollgate_cache::key::is_deterministic(&request)
        {
            return Some(Err(CacheStatus::Bypass));
        }
        let key = tollgate_cache::key::exact_key(&authed.key.project_id, view.endpoint.name(), &request);
        let semantic = (settings.semantic && view.endpoint == Endpoint::ChatCompletions && self.semantic.is_some())
            .then(|| tollgate_cache::semantic::semantic_request(&authed.key.project_id, &request))
            .flatten()
            .map(|s| SemanticPlan {
                partition: s.partition,
                conversation: s.conversation,
                threshold: settings.semantic_threshold.get() as f32,
            });
        let ttl = Duration::from_secs(settings.ttl_secs);
        Some(Ok(CachePlan { key, lookup: !no_cache, store: true, ttl, semantic }))
    }

    /// The entry stored under the plan's key and still fresh for `ttl`, or `None` on
    /// a miss or any failure (logged).
    pub async fn cache_lookup(&self, plan: &CachePlan, now_ms: i64) -> Option<Entry> {
        let cache = self.cache.as_ref()?;
        let found = tokio::time::timeout(self.settings.cache_timeout, cache.get(&plan.key)).await;
        let bytes = match found {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, backend = cache.kind(), "cache lookup failed: treated as a miss");
                return None;
            }
            Err(_) => {
                tracing::warn!(backend = cache.kind(), "cache lookup timed out: treated as a miss");
                return None;
            }
        };
        let entry = Entry::decode(&bytes)?;
        // The project may have shortened its TTL since the entry was stored.
        let fresh = now_ms.saturating_sub(entry.created_ms) < i64::try_from(plan.ttl.as_millis()).unwrap_or(i64::MAX);
        fresh.then_some(entry)
    }

    /// Stores `entry` (off the response path, in a tracked task) unless it is larger
    /// than `cache_max_entry_bytes`: under its exact key, and under its embedding when
    /// the target has one; a failure is logged.
    pub fn cache_put(&self, target: CacheTarget, entry: Entry) {
        let Some(cache) = self.cache.clone() else { return };
        let CacheTarget { key, ttl, semantic } = target;
        let value = entry.encode();
        if value.len() > self.settings.cache_max_entry_bytes {
            tracing::debug!(bytes = value.len(), "answer larger than cache.max_entry_bytes: not cached");
            return;
        }
        if let Some(semantic) = semantic {
            self.semantic_put(key, ttl, semantic, entry.created_ms, value.clone());
        }
        let timeout = self.settings.cache_timeout;
        self.tasks.spawn(async move {
            match tokio::time::timeout(timeout, cache.put(&key, value, ttl)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, backend = cache.kind(), "cache store failed"),
                Err(_) => tracing::warn!(backend = cache.kind(), "cache store timed out"),
            }
        });
    }
}

/// The body a hit is answered with: the stored JSON, or for a stream request its SSE
/// replay (`None` if the entry cannot be replayed: then it is a miss). Returns the body
/// and whether it is SSE.
pub fn hit_body(view: &RequestView<'_>, entry: &Entry) -> Option<(Bytes, bool)> {
    if !view.stream {
        return Some((entry.body.clone(), false));
    }
    let kind = match view.endpoint {
        Endpoint::ChatCompletions => Kind::Chat,
        Endpoint::Completions => Kind::Completion,
        Endpoint::Embeddings | Endpoint::Messages | Endpoint::Responses => return None,
    };
    replay::sse(kind, &entry.body, view.client_wants_usage).map(|b| (b, true))
}

/// Whether answers of `endpoint` are cached: not Messages and Responses (yet), whose
/// streams cannot be replayed.
pub fn cacheable(endpoint: Endpoint) -> bool {
    matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings)
}

/// The replay kind of an endpoint's streams.
pub fn stream_kind(endpoint: Endpoint) -> Option<Kind> {
    match endpoint {
        Endpoint::ChatCompletions => Some(Kind::Chat),
        Endpoint::Completions => Some(Kind::Completion),
        Endpoint::Embeddings | Endpoint::Messages | Endpoint::Responses => None,
    }
}
