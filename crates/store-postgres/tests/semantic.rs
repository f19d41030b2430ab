//! The semantic cache's rows in a real PostgreSQL (`TOLLGATE_TEST_DATABASE_URL`, set
//! by `scripts/test.sh`; a missing server fails the test): a row comes back exactly
//! (vector as REAL[], answer as bytes), a second write of the same project and key
//! replaces it, rows of other projects are kept apart, expired rows are neither read
//! nor kept, and `since` reads by the store's clock.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tollgate_cache::CacheKey;
use tollgate_cache::semantic::{SemanticRow, SemanticStore};
use tollgate_store_postgres::{PostgresSettings, PostgresStore};

fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("tgsemantic_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn now_ms() -> i64 {
    tollgate_store::clock::now_ms()
}

fn row(project: &str, key: u8, expires_ms: i64) -> SemanticRow {
    SemanticRow {
        key: CacheKey([key; 32]),
        project: project.into(),
        partition: CacheKey([0xaa; 32]),
        vector: vec![0.6, -0.8, 0.0],
        entry: Bytes::from(vec![key, 0, 255, 7]),
        created_ms: now_ms(),
        expires_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_round_trip_replace_and_expire() {
    let schema = unique_schema();
    let url = std::env::var("TOLLGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tollgate_test".to_owned());
    let mut settings = PostgresSettings::new(url);
    settings.schema = Some(schema.clone());
    let store = match PostgresStore::open(&settings).await {
        Ok(store) => store,
        Err(e) => panic!("PostgreSQL at {} cannot be used: {e}", settings.url),
    };
    let rows = store.semantic();
    let later = now_ms() + 60_000;
    let a = row("a", 1, later);
    rows.insert(&a).await.expect("insert");
    rows.insert(&row("b", 1, later)).await.expect("same key, another project");
    let read = rows.since(i64::MIN, now_ms(), 100).await.expect("since");
    assert_eq!(read.len(), 2);
    assert!(read.contains(&a), "{read:?}");

    let newer = SemanticRow { vector: vec![1.0, 0.0, 0.0], entry: Bytes::from_static(b"newer"), ..a.clone() };
    rows.insert(&newer).await.expect("replace");
    let read = rows.since(i64::MIN, now_ms(), 100).await.expect("since");
    assert_eq!(read.iter().filter(|r| r.project == "a").cloned().collect::<Vec<_>>(), vec![newer]);

    // Nothing stored from a second on; an expired row is not read, and the next write
    // deletes it.
    assert!(rows.since(now_ms() + 1_000, now_ms(), 100).await.expect("since").is_empty());
    rows.insert(&row("a", 2, now_ms() - 1)).await.expect("an expired row");
    assert_eq!(rows.since(i64::MIN, now_ms(), 100).await.expect("since").len(), 2);
    rows.insert(&row("a", 3, later)).await.expect("insert");
    assert_eq!(rows.count().await.expect("count"), 3, "the expired row was deleted");
    assert_eq!(rows.since(i64::MIN, now_ms(), 1).await.expect("since").len(), 1, "limit");

    tollgate_store::Ledger::close(&*store.ledger()).await.expect("close ledger");
    store.drop_schema(&schema).await.expect("drop test schema");
}
