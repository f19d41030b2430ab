//! The embedded store against the analytics conformance suite: rollups written in
//! the ledger's transactions, grouped queries, retention, and the property test of
//! random appends, replays, retention runs and restarts against a brute-force
//! aggregation of the ledger.

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_analytics::AnalyticsStore;
use tollgate_analytics::conformance::{self, Reopen};
use tollgate_store::Ledger;
use tollgate_store_embedded::EmbeddedStore;

struct Embedded {
    dir: tempfile::TempDir,
    store: Option<EmbeddedStore>,
}

impl Embedded {
    fn fresh() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open store");
        Self { dir, store: Some(store) }
    }

    fn store(&self) -> &EmbeddedStore {
        self.store.as_ref().expect("open")
    }
}

#[async_trait]
impl Reopen for Embedded {
    fn parts(&self) -> (Arc<dyn Ledger>, Arc<dyn AnalyticsStore>) {
        (self.store().ledger(), self.store().ledger())
    }

    async fn reopen(&mut self) {
        if let Some(store) = self.store.take() {
            store.close().await.expect("close");
        }
        self.store = Some(EmbeddedStore::open(self.dir.path()).expect("reopen"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_follow_appends_and_ignore_replays() {
    let s = Embedded::fresh();
    let ledger = s.store().ledger();
    conformance::rollups_follow_appends_and_ignore_replays(&*ledger, &*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_queries_sum_rollups() {
    let s = Embedded::fresh();
    let ledger = s.store().ledger();
    conformance::grouped_queries_sum_rollups(&*ledger, &*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_rows_in_batches_and_keeps_rollups() {
    let s = Embedded::fresh();
    let ledger = s.store().ledger();
    conformance::retention_deletes_rows_in_batches_and_keeps_rollups(&*ledger, &*ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_brute_force() {
    let mut s = Embedded::fresh();
    conformance::random_operations_match_brute_force(&mut s, 0..12, 40).await;
}

/// A ledger written before the rollups existed is rolled up by the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_rolls_up_rows_already_stored() {
    let mut s = Embedded::fresh();
    let project = "an-migration";
    let mut rng = conformance::Rng::new(9);
    let records: Vec<_> =
        (0..200).map(|i| conformance::random_record(&mut rng, format!("an-mig-{i}"), project, 50)).collect();
    let ledger = s.store().ledger();
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let db = s.store().db_path().to_owned();
    s.store.take().expect("open").close().await.expect("close");
    drop(ledger);
    // Back to schema 5: no rollup table (and none of the later migrations' columns).
    {
        let conn = rusqlite::Connection::open(&db).expect("open db");
        conn.execute_batch(
            "DROP INDEX usage_seq; ALTER TABLE usage DROP COLUMN seq; DROP TABLE ledger_seq; DROP TABLE event_cursors; \
             DROP TABLE usage_hourly; ALTER TABLE usage DROP COLUMN upstream_request_id; \
             DROP TABLE usage_hourly_total; DROP TABLE usage_daily_total; DROP TABLE usage_hourly_project; DROP TABLE usage_daily_project; DROP TABLE usage_hourly_endpoint; \
             DROP TABLE usage_daily_endpoint; DROP TABLE usage_hourly_model; DROP TABLE usage_daily_model; \
             DROP TABLE usage_hourly_key; DROP TABLE usage_daily_key; DROP TABLE usage_hourly_key_detail; DROP TABLE usage_daily_key_detail; DROP TABLE usage_counted; \
             DROP TABLE usage_hourly_key_volume; DROP TABLE usage_daily_key_volume; PRAGMA user_version = 5;",
        )
        .expect("downgrade");
    }
    s.reopen().await;
    let (_, analytics) = s.parts();
    let stored = conformance::stored_rollups(&*analytics, project).await;
    assert_eq!(stored, tollgate_analytics::rollup::brute_force(&records));
    // Migration 8 filled the projections from those rollups: every query agrees.
    for _ in 0..40 {
        let q = conformance::random_query(&mut rng, project, 50);
        conformance::assert_query_matches(&*analytics, &records, &q, "after the migrations").await;
    }
}
