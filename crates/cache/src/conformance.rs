//! The conformance suite every [`CacheStore`] backend runs (the in-memory one in this
//! crate's tests, Redis in `store-redis/tests/cache.rs`). Each scenario takes a
//! store nobody else writes to.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{CacheKey, CacheStore, Entry};

fn key(n: u8, salt: u8) -> CacheKey {
    let mut k = [n; 32];
    k[0] = salt;
    CacheKey(k)
}

/// A missing key is `None`; a stored value comes back byte for byte; a second put
/// replaces it; keys do not see each other's values.
pub async fn put_get_replace(store: &dyn CacheStore) {
    let (a, b) = (key(1, 0xa1), key(2, 0xa1));
    assert_eq!(store.get(&a).await.expect("get"), None);
    let entry = Entry {
        created_ms: 1_700_000_000_000,
        model: Some("m".into()),
        prompt_tokens: 3,
        completion_tokens: 4,
        cached_tokens: 0,
        body: Bytes::from_static(br#"{"choices":[]}"#),
    };
    store.put(&a, entry.encode(), Duration::from_secs(60)).await.expect("put");
    let got = store.get(&a).await.expect("get").expect("stored");
    assert_eq!(Entry::decode(&got), Some(entry.clone()));
    assert_eq!(store.get(&b).await.expect("get"), None, "another key sees nothing");
    let newer = Entry { created_ms: entry.created_ms + 1, ..entry };
    store.put(&a, newer.encode(), Duration::from_secs(60)).await.expect("put");
    let got = store.get(&a).await.expect("get").expect("stored");
    assert_eq!(Entry::decode(&got), Some(newer));
}

/// An entry is gone once its time to live has passed (polled with a deadline).
pub async fn entries_expire(store: &dyn CacheStore) {
    let k = key(3, 0xe1);
    store.put(&k, Bytes::from_static(b"short-lived"), Duration::from_millis(300)).await.expect("put");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get(&k).await.expect("get") {
            None => break,
            Some(v) => assert_eq!(&v[..], b"short-lived"),
        }
        assert!(Instant::now() < deadline, "the entry outlived its TTL by seconds");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Binary values of any byte, large ones included, are kept exactly.
pub async fn values_are_binary_safe(store: &dyn CacheStore) {
    let k = key(4, 0xb1);
    let value: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    store.put(&k, Bytes::from(value.clone()), Duration::from_secs(60)).await.expect("put");
    assert_eq!(store.get(&k).await.expect("get").as_deref(), Some(&value[..]));
}
