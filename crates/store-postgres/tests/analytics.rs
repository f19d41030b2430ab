//! The PostgreSQL store against the analytics conformance suite, each test in a
//! schema of its own (dropped afterwards), against the real PostgreSQL named by
//! `TOLLGATE_TEST_DATABASE_URL` (which `scripts/test.sh` sets); unreachable, every
//! test fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tollgate_analytics::AnalyticsStore;
use tollgate_analytics::conformance::{self, Reopen};
use tollgate_store::Ledger;
use tollgate_store_postgres::{PostgresSettings, PostgresStore};

fn settings() -> PostgresSettings {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let schema = format!("tgan_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let url = std::env::var("TOLLGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tollgate_test".to_owned());
    let mut settings = PostgresSettings::new(url);
    settings.schema = Some(schema);
    settings.pool_size = 4;
    settings
}

struct Postgres {
    settings: PostgresSettings,
    store: PostgresStore,
}

impl Postgres {
    async fn fresh() -> Self {
        let settings = settings();
        let store = open(&settings).await;
        Self { settings, store }
    }

    async fn finish(self) {
        self.store.ledger().close().await.expect("close ledger");
        let schema = self.settings.schema.clone().expect("schema");
        self.store.drop_schema(&schema).await.expect("drop test schema");
    }
}

async fn open(settings: &PostgresSettings) -> PostgresStore {
    match PostgresStore::open(settings).await {
        Ok(store) => store,
        Err(e) => panic!("PostgreSQL at {} cannot be used: {e}", settings.url),
    }
}

#[async_trait]
impl Reopen for Postgres {
    fn parts(&self) -> (Arc<dyn Ledger>, Arc<dyn AnalyticsStore>) {
        (self.store.ledger(), self.store.ledger())
    }

    async fn reopen(&mut self) {
        self.store.ledger().close().await.expect("close");
        self.store = open(&self.settings).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_follow_appends_and_ignore_replays() {
    let pg = Postgres::fresh().await;
    let ledger = pg.store.ledger();
    conformance::rollups_follow_appends_and_ignore_replays(&*ledger, &*ledger).await;
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_queries_sum_rollups() {
    let pg = Postgres::fresh().await;
    let ledger = pg.store.ledger();
    conformance::grouped_queries_sum_rollups(&*ledger, &*ledger).await;
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_rows_in_batches_and_keeps_rollups() {
    let pg = Postgres::fresh().await;
    let ledger = pg.store.ledger();
    conformance::retention_deletes_rows_in_batches_and_keeps_rollups(&*ledger, &*ledger).await;
    pg.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_brute_force() {
    let mut pg = Postgres::fresh().await;
    conformance::random_operations_match_brute_force(&mut pg, 0..6, 40).await;
    pg.finish().await;
}
