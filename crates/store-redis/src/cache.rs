//! The response cache in Redis, shared by every instance: one string per entry,
//! `<prefix>cache:<sha-256 hex>`, written with `SET … PX <ttl>` so Redis expires it.
//! Entries are size-capped by the gateway before they get here; Redis's own
//! `maxmemory` (with `volatile-lru` or `allkeys-lru`) bounds the whole.

use std::time::Duration;

use bytes::Bytes;
use tollgate_cache::{CacheError, CacheKey, CacheStore};

use crate::{KeySpace, RedisConn, bounded};

pub struct RedisCache {
    conn: RedisConn,
    prefix: String,
    timeout: Duration,
}

impl RedisCache {
    pub fn new(conn: RedisConn, keys: &KeySpace, timeout: Duration) -> Self {
        Self { conn, prefix: format!("{}cache:", keys.prefix()), timeout }
    }

    fn name(&self, key: &CacheKey) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 64);
        name.push_str(&self.prefix);
        name.push_str(&key.hex());
        name
    }
}

#[async_trait::async_trait]
impl CacheStore for RedisCache {
    async fn get(&self, key: &CacheKey) -> Result<Option<Bytes>, CacheError> {
        let mut conn = self.conn.clone();
        let mut get = redis::cmd("GET");
        get.arg(self.name(key));
        let value: Option<Vec<u8>> =
            bounded(self.timeout, get.query_async(&mut conn)).await.map_err(|e| CacheError(e.to_string()))?;
        Ok(value.map(Bytes::from))
    }

    async fn put(&self, key: &CacheKey, value: Bytes, ttl: Duration) -> Result<(), CacheError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let mut set = redis::cmd("SET");
        set.arg(self.name(key)).arg(&value[..]).arg("PX").arg(ms);
        bounded(self.timeout, set.query_async::<()>(&mut conn)).await.map_err(|e| CacheError(e.to_string()))
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
