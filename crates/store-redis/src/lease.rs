//! A lease in Redis: one holder at a time, for a TTL, renewed by its holder while it
//! works, so one instance of many does a job (the counter rebuild) and another takes
//! over within a TTL when it dies.

use std::time::Duration;

use redis::Script;
use tollgate_store::StoreResult;

use crate::{RedisConn, bounded};

/// Takes the lease when free (`SET NX PX`) or renews it when this holder has it.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// Gives the lease up, only if this holder has it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One holder's handle on a named lease.
pub struct Lease {
    conn: RedisConn,
    key: String,
    holder: String,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease stored at `key`, held as `holder` (unique per instance) for `ttl`
    /// after each renewal; each call bounded by `timeout`.
    pub fn new(conn: RedisConn, key: String, holder: String, ttl: Duration, timeout: Duration) -> Self {
        Self { conn, key, holder, ttl, timeout }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if it is free, or renews it for another TTL if this holder
    /// has it. True while this holder has it; false while another one does.
    pub async fn acquire_or_renew(&self) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let script = Script::new(ACQUIRE);
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.key).arg(&self.holder).arg(ttl_ms);
        let held: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(held == 1)
    }

    /// Gives the lease up if this holder has it, so another holder takes it at once.
    pub async fn release(&self) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let script = Script::new(RELEASE);
        let mut invocation = script.prepare_invoke();
        invocation.key(&self.key).arg(&self.holder);
        let _released: i64 = bounded(self.timeout, invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }
}
