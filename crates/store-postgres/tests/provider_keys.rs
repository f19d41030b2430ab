//! The provider key conformance suite against a real PostgreSQL
//! (`TOLLGATE_TEST_DATABASE_URL`, set by `scripts/test.sh`), one test per scenario,
//! each in a schema of its own that is dropped afterwards.

use std::sync::atomic::{AtomicU64, Ordering};

use tollgate_store::conformance;
use tollgate_store_postgres::{PostgresSettings, PostgresStore};

fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("tgpkeys_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

async fn fresh() -> (PostgresStore, String) {
    let schema = unique_schema();
    let url = std::env::var("TOLLGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tollgate_test".to_owned());
    let mut settings = PostgresSettings::new(url);
    settings.schema = Some(schema.clone());
    settings.pool_size = 4;
    match PostgresStore::open(&settings).await {
        Ok(store) => (store, schema),
        Err(e) => panic!("PostgreSQL at {} cannot be used: {e}", settings.url),
    }
}

async fn finish(store: PostgresStore, schema: &str) {
    tollgate_store::Ledger::close(&*store.ledger()).await.expect("close ledger");
    store.drop_schema(schema).await.expect("drop test schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_round_trip() {
    let (store, schema) = fresh().await;
    conformance::provider_keys::provider_keys_round_trip(&store.provider_keys()).await;
    finish(store, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_keys_pages_and_reseal() {
    let (store, schema) = fresh().await;
    conformance::provider_keys::provider_keys_pages_and_reseal(&store.provider_keys()).await;
    finish(store, &schema).await;
}
