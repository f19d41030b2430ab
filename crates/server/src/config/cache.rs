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
}

impl Default for RawCache {
    fn default() -> Self {
        Self { max_memory_bytes: 64 * 1024 * 1024, max_entry_bytes: 1024 * 1024, timeout_ms: 250 }
    }
}

/// The checked `[cache]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_memory_bytes: usize,
    pub max_entry_bytes: usize,
    pub timeout: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        let raw = RawCache::default();
        Self {
            max_memory_bytes: raw.max_memory_bytes,
            max_entry_bytes: raw.max_entry_bytes,
            timeout: Duration::from_millis(raw.timeout_ms),
        }
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
    Ok(CacheSettings {
        max_memory_bytes: raw.max_memory_bytes,
        max_entry_bytes: raw.max_entry_bytes,
        timeout: Duration::from_millis(raw.timeout_ms),
    })
}
