//! The in-process cache in front of `lookup_key`, the catalog's hot path.
//!
//! Cache rules, so that a revoke or rotation is never undone by a stale write:
//! - every entry carries the key's version; an entry is never replaced by one with an
//!   older version;
//! - a lookup that misses notes the cache's *epoch* before querying, and stores its
//!   answer only if no invalidation happened meanwhile (every invalidation bumps the
//!   epoch), so a query that raced a change cannot put the old record back;
//! - entries expire after the TTL (30 s by default) in case an announcement was lost,
//!   and unknown secrets are remembered for at most [`NEGATIVE_TTL`], in a cache of
//!   their own with a bound of its own ([`MAX_UNKNOWN`]): anyone can mint well-formed
//!   keys (the checksum is not a secret), and a flood of them must neither evict the
//!   keys in use nor grow memory; when either part is full, its oldest entries go,
//!   the cache is never cleared whole.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tollgate_core::{KeyHash, KeyRecord};

/// How long an unknown secret is remembered as unknown (protects PostgreSQL from a
/// flood of well-formed but unknown keys without delaying a new key noticeably).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Known secrets kept at most (a bound on memory, not a tuning knob).
pub(crate) const MAX_ENTRIES: usize = 200_000;
/// Unknown secrets remembered at most.
pub const MAX_UNKNOWN: usize = 100_000;

/// A secret's key and, during a rotation's grace period, when the secret stops.
pub(crate) type Found = Option<(Arc<KeyRecord>, Option<i64>)>;

struct Cached {
    found: Found,
    loaded: Instant,
}

#[derive(Default)]
struct CacheState {
    by_hash: HashMap<KeyHash, Cached>,
    by_key: HashMap<String, Vec<KeyHash>>,
}

/// Unknown secrets, oldest first, each remembered for [`NEGATIVE_TTL`].
#[derive(Default)]
struct UnknownSecrets {
    order: std::collections::VecDeque<(KeyHash, Instant)>,
    at: HashMap<KeyHash, Instant>,
}

/// The key cache (see the module documentation).
pub(crate) struct KeyCache {
    state: RwLock<CacheState>,
    unknown: std::sync::Mutex<UnknownSecrets>,
    /// Bounds of the two parts.
    max_known: usize,
    max_unknown: usize,
    epoch: AtomicU64,
    ttl: Duration,
    /// A shorter TTL in force while change notices cannot arrive, in ms (0: none).
    degraded_ttl_ms: AtomicU64,
}

impl KeyCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn new(ttl: Duration, max_known: usize, max_unknown: usize) -> Self {
        Self {
            state: RwLock::default(),
            unknown: std::sync::Mutex::default(),
            max_known,
            max_unknown,
            epoch: AtomicU64::new(0),
            ttl,
            degraded_ttl_ms: AtomicU64::new(0),
        }
    }

    fn unknown(&self) -> std::sync::MutexGuard<'_, UnknownSecrets> {
        self.unknown.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capped(&self, ttl: Duration) -> Duration {
        match self.degraded_ttl_ms.load(Ordering::Relaxed) {
            0 => ttl,
            degraded => ttl.min(Duration::from_millis(degraded)),
        }
    }

    /// `Some(found)` for a fresh entry, `None` for a miss.
    pub(crate) fn get(&self, hash: &KeyHash) -> Option<Found> {
        {
            let state = self.read();
            if let Some(cached) = state.by_hash.get(hash) {
                return (cached.loaded.elapsed() < self.capped(self.ttl)).then(|| cached.found.clone());
            }
        }
        let unknown = self.unknown();
        let at = unknown.at.get(hash)?;
        (at.elapsed() < self.capped(self.ttl.min(NEGATIVE_TTL))).then_some(None)
    }

    /// Remembers an unknown secret, forgetting the oldest beyond the bound.
    fn insert_unknown(&self, hash: KeyHash) {
        let mut unknown = self.unknown();
        let now = Instant::now();
        while unknown.order.len() >= self.max_unknown.max(1) {
            let Some((old, at)) = unknown.order.pop_front() else { break };
            if unknown.at.get(&old) == Some(&at) {
                unknown.at.remove(&old);
            }
        }
        unknown.order.push_back((hash, now));
        unknown.at.insert(hash, now);
    }

    /// Makes room for one known secret: expired entries first, then the oldest.
    fn evict_known(&self, state: &mut CacheState) {
        if state.by_hash.len() < self.max_known {
            return;
        }
        let ttl = self.ttl;
        state.by_hash.retain(|_, cached| cached.loaded.elapsed() < ttl);
        while state.by_hash.len() >= self.max_known.max(1) {
            let Some(oldest) = state.by_hash.iter().min_by_key(|(_, c)| c.loaded).map(|(h, _)| *h) else { break };
            state.by_hash.remove(&oldest);
        }
        let CacheState { by_hash, by_key } = state;
        by_key.retain(|_, hashes| {
            hashes.retain(|h| by_hash.contains_key(h));
            !hashes.is_empty()
        });
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores what a lookup found, unless an invalidation happened since `epoch` or
    /// the entry there is newer.
    pub(crate) fn insert(&self, hash: KeyHash, found: Found, epoch: u64) {
        let mut state = self.write();
        // Checked under the write lock: invalidations bump the epoch under it too.
        if self.epoch() != epoch {
            return;
        }
        if let (Some(existing), Some((new, _))) = (state.by_hash.get(&hash).and_then(|c| c.found.as_ref()), &found)
            && existing.0.version > new.version
        {
            return;
        }
        let Some((record, _)) = &found else {
            drop(state);
            self.insert_unknown(hash);
            return;
        };
        self.unknown().at.remove(&hash);
        if !state.by_hash.contains_key(&hash) {
            self.evict_known(&mut state);
        }
        {
            let hashes = state.by_key.entry(record.id.clone()).or_default();
            if !hashes.contains(&hash) {
                hashes.push(hash);
            }
        }
        state.by_hash.insert(hash, Cached { found, loaded: Instant::now() });
    }

    /// Drops every entry of key `id` older than `version` (all of them when `None`).
    pub(crate) fn invalidate_key(&self, id: &str, version: Option<u64>) {
        let mut state = self.write();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let Some(hashes) = state.by_key.remove(id) else {
            return;
        };
        let mut kept = Vec::new();
        for hash in hashes {
            let fresh = state
                .by_hash
                .get(&hash)
                .and_then(|c| c.found.as_ref())
                .is_some_and(|(record, _)| version.is_some_and(|v| record.version >= v));
            if fresh {
                kept.push(hash);
            } else {
                state.by_hash.remove(&hash);
            }
        }
        if !kept.is_empty() {
            state.by_key.insert(id.to_owned(), kept);
        }
    }

    pub(crate) fn clear(&self) {
        let mut state = self.write();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *state = CacheState::default();
        *self.unknown() = UnknownSecrets::default();
    }

    pub(crate) fn len(&self) -> usize {
        self.read().by_hash.len()
    }

    /// While change notices cannot arrive, entries live at most `ttl` (`None`: the
    /// configured TTL again).
    pub(crate) fn set_degraded_ttl(&self, ttl: Option<Duration>) {
        let ms = ttl.map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        self.degraded_ttl_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn unknown_len(&self) -> usize {
        self.unknown().at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, version: u64) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: id.to_owned(),
            project_id: "p".to_owned(),
            name: None,
            plan: "free".to_owned(),
            metadata: serde_json::Map::new(),
            limit_overrides: Vec::new(),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
            version,
        })
    }

    fn cache() -> KeyCache {
        KeyCache::new(Duration::from_secs(30), MAX_ENTRIES, MAX_UNKNOWN)
    }

    /// Issue 10, item 12: forged keys (well-formed, unknown) cannot flush the keys in
    /// use out of the cache, and neither part grows past its bound.
    #[test]
    fn a_flood_of_unknown_secrets_never_evicts_known_ones_and_stays_bounded() {
        let cache = KeyCache::new(Duration::from_secs(30), 4, 100);
        let known = KeyHash::of("known");
        cache.insert(known, Some((record("k", 1), None)), cache.epoch());
        for n in 0..10_000 {
            cache.insert(KeyHash::of(&format!("forged-{n}")), None, cache.epoch());
        }
        assert!(cache.get(&known).is_some_and(|f| f.is_some()), "the known key is still served from memory");
        assert_eq!(cache.unknown_len(), 100, "unknown secrets stay within their bound");
        assert!(cache.get(&KeyHash::of("forged-9999")).is_some(), "the newest unknown is remembered");
        assert!(cache.get(&KeyHash::of("forged-0")).is_none(), "the oldest unknown was forgotten");
    }

    #[test]
    fn a_full_cache_evicts_its_oldest_entries_instead_of_starting_over() {
        let cache = KeyCache::new(Duration::from_secs(30), 3, 100);
        let hashes: Vec<KeyHash> = (0..5).map(|n| KeyHash::of(&format!("s{n}"))).collect();
        for (n, hash) in hashes.iter().enumerate() {
            cache.insert(*hash, Some((record(&format!("k{n}"), 1), None)), cache.epoch());
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&hashes[0]).is_none() && cache.get(&hashes[1]).is_none(), "the oldest two went");
        assert!(hashes[2..].iter().all(|h| cache.get(h).is_some()), "the newest three stayed");
    }

    #[test]
    fn a_load_that_raced_an_invalidation_is_not_cached() {
        let cache = cache();
        let hash = KeyHash::of("secret");
        let epoch = cache.epoch();
        // The lookup queried v1; meanwhile a revoke (v2) was announced.
        cache.invalidate_key("k", Some(2));
        cache.insert(hash, Some((record("k", 1), None)), epoch);
        assert!(cache.get(&hash).is_none(), "the stale v1 must not be cached");
        cache.insert(hash, Some((record("k", 2), None)), cache.epoch());
        assert_eq!(cache.get(&hash).and_then(|f| f.map(|(r, _)| r.version)), Some(2));
    }

    #[test]
    fn an_older_version_never_replaces_a_newer_entry() {
        let cache = cache();
        let hash = KeyHash::of("secret");
        cache.insert(hash, Some((record("k", 5), None)), cache.epoch());
        cache.insert(hash, Some((record("k", 4), None)), cache.epoch());
        assert_eq!(cache.get(&hash).and_then(|f| f.map(|(r, _)| r.version)), Some(5));
        // An announcement of a version we already have keeps the entry; a newer one
        // drops it.
        cache.invalidate_key("k", Some(5));
        assert!(cache.get(&hash).is_some());
        cache.invalidate_key("k", Some(6));
        assert!(cache.get(&hash).is_none());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = KeyCache { ttl: Duration::ZERO, ..cache() };
        let hash = KeyHash::of("secret");
        cache.insert(hash, Some((record("k", 1), None)), cache.epoch());
        assert!(cache.get(&hash).is_none());
    }
}
