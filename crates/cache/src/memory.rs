//! The in-process backend: an LRU bounded by bytes, each entry with its own expiry.
//! One mutex, held for a map operation only (never across an await); the least
//! recently used entries are evicted until the total fits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{CacheError, CacheKey, CacheStore};

/// What an entry costs beyond its value's bytes (key, order index, bookkeeping).
pub const ENTRY_OVERHEAD: usize = 128;

pub struct MemoryCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<CacheKey, Slot>,
    /// Use order: tick → key; the smallest tick is the least recently used.
    order: BTreeMap<u64, CacheKey>,
    bytes: usize,
    tick: u64,
}

struct Slot {
    value: Bytes,
    expires: Instant,
    tick: u64,
}

impl Inner {
    fn remove(&mut self, key: &CacheKey) {
        if let Some(slot) = self.map.remove(key) {
            self.order.remove(&slot.tick);
            self.bytes -= slot.value.len() + ENTRY_OVERHEAD;
        }
    }
}

impl MemoryCache {
    /// A cache holding at most `max_bytes` (values plus [`ENTRY_OVERHEAD`] each).
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes held now (values plus overhead).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries held now (some may have expired and not been looked at since).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get_now(&self, key: &CacheKey, now: Instant) -> Option<Bytes> {
        let mut inner = self.lock();
        let expired = inner.map.get(key)?.expires <= now;
        if expired {
            inner.remove(key);
            return None;
        }
        inner.tick += 1;
        let tick = inner.tick;
        let slot = inner.map.get_mut(key)?;
        let old = std::mem::replace(&mut slot.tick, tick);
        let value = slot.value.clone();
        inner.order.remove(&old);
        inner.order.insert(tick, *key);
        Some(value)
    }

    pub fn put_now(&self, key: &CacheKey, value: Bytes, ttl: Duration, now: Instant) {
        let size = value.len() + ENTRY_OVERHEAD;
        let mut inner = self.lock();
        inner.remove(key);
        if size > self.max_bytes || ttl.is_zero() {
            return;
        }
        while inner.bytes + size > self.max_bytes {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            if let Some(slot) = inner.map.remove(&oldest) {
                inner.bytes -= slot.value.len() + ENTRY_OVERHEAD;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        let expires = now.checked_add(ttl).unwrap_or(now + Duration::from_secs(365 * 86_400));
        inner.order.insert(tick, *key);
        inner.map.insert(*key, Slot { value, expires, tick });
        inner.bytes += size;
    }
}

#[async_trait::async_trait]
impl CacheStore for MemoryCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, CacheError> {
        Ok(self.get_now(key, Instant::now()))
    }

    async fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        self.put_now(key, value, ttl, Instant::now());
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> CacheKey {
        CacheKey([n; 32])
    }

    #[test]
    fn least_recently_used_goes_first_and_bytes_stay_bounded() {
        let cache = MemoryCache::new(3 * (100 + ENTRY_OVERHEAD));
        let now = Instant::now();
        let value = Bytes::from(vec![7u8; 100]);
        let ttl = Duration::from_secs(60);
        for n in 0..3 {
            cache.put_now(&k(n), value.clone(), ttl, now);
        }
        assert!(cache.get_now(&k(0), now).is_some(), "0 is now the most recent");
        cache.put_now(&k(3), value.clone(), ttl, now);
        assert!(cache.get_now(&k(1), now).is_none(), "1 was the least recently used");
        for n in [0, 2, 3] {
            assert!(cache.get_now(&k(n), now).is_some(), "{n}");
        }
        assert!(cache.bytes() <= 3 * (100 + ENTRY_OVERHEAD));
        for n in 10..200 {
            cache.put_now(&k(n), value.clone(), ttl, now);
            assert!(cache.bytes() <= 3 * (100 + ENTRY_OVERHEAD));
        }
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn too_big_is_not_stored_and_expired_is_gone() {
        let cache = MemoryCache::new(1000);
        let now = Instant::now();
        cache.put_now(&k(1), Bytes::from(vec![0u8; 1000]), Duration::from_secs(60), now);
        assert!(cache.get_now(&k(1), now).is_none());
        assert_eq!(cache.bytes(), 0);
        cache.put_now(&k(2), Bytes::from_static(b"x"), Duration::from_secs(1), now);
        assert!(cache.get_now(&k(2), now).is_some());
        assert!(cache.get_now(&k(2), now + Duration::from_secs(1)).is_none());
        assert_eq!(cache.bytes(), 0);
    }
}
