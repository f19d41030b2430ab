//! The response cache's conformance suite against a real Redis
//! (`TOLLGATE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), each scenario under
//! a key prefix of its own. Fails, never skips, when Redis does not answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tollgate_cache::conformance;
use tollgate_store_redis::{KeySpace, RedisCache, RedisConn, RedisSettings};

const TIMEOUT: Duration = Duration::from_secs(5);

async fn redis_cache() -> RedisCache {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let settings = RedisSettings { url: url.clone(), cluster: false, timeout: TIMEOUT };
    let conn = RedisConn::connect(&settings).await.expect("redis connection settings");
    if let Err(e) = conn.ping(TIMEOUT).await {
        panic!("Redis at {url} does not answer: {e}");
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let prefix = format!("tgtest:cache:{}:{nanos:x}:{}:", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    RedisCache::new(conn, &KeySpace::new(prefix), TIMEOUT)
}

#[tokio::test]
async fn put_get_replace() {
    conformance::put_get_replace(&redis_cache().await).await;
}

#[tokio::test]
async fn entries_expire() {
    conformance::entries_expire(&redis_cache().await).await;
}

#[tokio::test]
async fn values_are_binary_safe() {
    conformance::values_are_binary_safe(&redis_cache().await).await;
}
