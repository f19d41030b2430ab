//! `[cache]`: the response cache's bounds (docs/caching.md). Whether a project's
//! answers are cached, and for how long, are project settings (`cache` in
//! `/api/v1/projects`); these bound the cache of the whole server.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// Bytes the in-process cache holds at most (embedded store), least recently
    /// used entries evicted first.
    pub max_memory_bytes: usize,
    /// Largest entry stored (its answer plus a small header); larger answers are
    /// not cached.
    pub max_entry_bytes: usize,
    /// Longest wait for one lookup or store; past it the request is a miss.
    pub timeout_ms: u64,
    /// The model conversations are embedded with for the semantic cache (through the
    /// upstream's `/v1/embeddings`).
    pub semantic_embedding_model: String,
    /// Longest wait for a semantic lookup's embedding call, or a semantic store.
    pub semantic_timeout_ms: u64,
    /// Entries of the semantic index one project holds at most (its oldest go first).
    pub semantic_max_entries_per_project: usize,
    /// Bytes the semantic index holds at most, in each instance (answers, vectors and
    /// graph links; the soonest to expire go first).
    pub semantic_max_memory_bytes: usize,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            timeout_ms: 250,
            semantic_embedding_model: "text-embedding-3-small".to_owned(),
            semantic_timeout_ms: 2_000,
            semantic_max_entries_per_project: 10_000,
            semantic_max_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The checked `[cache]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_memory_bytes: usize,
    pub max_entry_bytes: usize,
    pub timeout: Duration,
    pub semantic_embedding_model: String,
    pub semantic_timeout: Duration,
    pub semantic_max_entries_per_project: usize,
    pub semantic_max_memory_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        cache_settings(&RawCache::default()).unwrap_or_else(|_| unreachable!("the defaults are valid"))
    }
}

pub(super) fn cache_settings(raw: &RawCache) -> Result<CacheSettings, ConfigError> {
    if raw.max_entry_bytes == 0 || raw.max_entry_bytes > 64 * 1024 * 1024 {
        return Err(invalid("cache.max_entry_bytes", "must be from 1 to 67108864"));
    }
    if raw.max_memory_bytes < raw.max_entry_bytes {
        return Err(invalid("cache.max_memory_bytes", "must be at least cache.max_entry_bytes"));
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
        return Err(invalid("cache.timeout_ms", "must be from 1 to 60000"));
    }
    let model = raw.semantic_embedding_model.trim();
    if model.is_empty() || model.len() > 200 || !model.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("cache.semantic_embedding_model", "must be a model name (1-200 visible ASCII characters)"));
    }
    if raw.semantic_timeout_ms == 0 || raw.semantic_timeout_ms > 60_000 {
        return Err(invalid("cache.semantic_timeout_ms", "must be from 1 to 60000"));
    }
    if raw.semantic_max_entries_per_project == 0 {
        return Err(invalid("cache.semantic_max_entries_per_project", "must be at least 1"));
    }
    if raw.semantic_max_memory_bytes < raw.max_entry_bytes {
        return Err(invalid("cache.semantic_max_memory_bytes", "must be at least cache.max_entry_bytes"));
    }
    Ok(CacheSettings {
        max_memory_bytes: raw.max_memory_bytes,
        max_entry_bytes: raw.max_entry_bytes,
        timeout: Duration::from_millis(raw.timeout_ms),
        semantic_embedding_model: model.to_owned(),
        semantic_timeout: Duration::from_millis(raw.semantic_timeout_ms),
        semantic_max_entries_per_project: raw.semantic_max_entries_per_project,
        semantic_max_memory_bytes: raw.semantic_max_memory_bytes,
    })
}
