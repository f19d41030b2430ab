//! The conformance suite against the in-memory backend.

use tollgate_cache::{MemoryCache, conformance};

#[tokio::test]
async fn put_get_replace() {
    conformance::put_get_replace(&MemoryCache::new(1 << 20)).await;
}

#[tokio::test]
async fn entries_expire() {
    conformance::entries_expire(&MemoryCache::new(1 << 20)).await;
}

#[tokio::test]
async fn values_are_binary_safe() {
    conformance::values_are_binary_safe(&MemoryCache::new(1 << 20)).await;
}
