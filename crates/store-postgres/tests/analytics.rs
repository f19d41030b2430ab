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

/// Records of three months, the partitions of the ledger they made.
async fn three_months(pg: &Postgres, project: &str) -> Vec<tollgate_core::UsageRecord> {
    use tollgate_core::calendar::MS_PER_DAY;
    let mut rng = conformance::Rng::new(77);
    let mut records = Vec::new();
    // 2023-09-20, 2023-10-15 and 2023-11-14 (NOW), 100 rows each.
    for (m, at) in [
        (9, tollgate_store::conformance::NOW - 55 * MS_PER_DAY),
        (10, tollgate_store::conformance::NOW - 30 * MS_PER_DAY),
        (11, tollgate_store::conformance::NOW),
    ] {
        for i in 0..100 {
            let mut r = conformance::random_record(&mut rng, format!("{project}-{m}-{i}"), project, 12);
            r.ts_ms = at - (tollgate_store::conformance::NOW - r.ts_ms);
            records.push(r);
        }
    }
    let ledger = pg.store.ledger();
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    records
}

async fn partitions(pg: &Postgres) -> Vec<String> {
    let client = pg.store.pool().get().await.expect("client");
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'usage'::regclass ORDER BY 1",
            &[],
        )
        .await
        .expect("partitions");
    rows.iter().map(|r| r.get(0)).collect()
}

/// The ledger is partitioned by UTC month; replays are ignored across partitions;
/// retention drops the months before its cutoff whole and batches the rest; the
/// rollups outlive them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_partitioned_by_month_and_retention_drops_whole_months() {
    let pg = Postgres::fresh().await;
    let project = "an-partitions";
    let records = three_months(&pg, project).await;
    assert_eq!(partitions(&pg).await, ["usage_202309", "usage_202310", "usage_202311"]);
    // Replays of every id (other values) are ignored, whichever month they are in.
    let replays: Vec<_> = records.iter().map(|r| tollgate_core::UsageRecord { requests: 9, ..r.clone() }).collect();
    assert!(pg.store.ledger().append_new(replays).await.expect("append_new").iter().all(|new| !new));
    let rollups = conformance::stored_rollups(&*pg.store.ledger(), project).await;
    assert_eq!(rollups, tollgate_analytics::rollup::brute_force(&records));
    // Retention up to 2023-11-01 plus a day: September and October go whole.
    let cutoff = tollgate_core::calendar::month_start(tollgate_store::conformance::NOW) + 86_400_000;
    let old = records.iter().filter(|r| r.ts_ms < cutoff).count() as u64;
    let analytics = pg.store.ledger();
    let mut deleted = 0;
    loop {
        let n = analytics.delete_usage_before(cutoff, 50).await.expect("retention");
        deleted += n.min(old);
        if n < 50 {
            break;
        }
    }
    assert_eq!(partitions(&pg).await, ["usage_202311"], "the old months are dropped");
    let left = conformance::ledger_rows(&*pg.store.ledger(), project).await;
    assert!(left.iter().all(|r| r.ts_ms >= cutoff));
    assert_eq!(left.len() as u64, records.len() as u64 - old);
    assert!(deleted >= old);
    let client = pg.store.pool().get().await.expect("client");
    let ids: i64 = client.query_one("SELECT count(*) FROM usage_ids", &[]).await.expect("ids").get(0);
    assert_eq!(ids as usize, left.len(), "the ids of deleted rows go too");
    drop(client);
    assert_eq!(conformance::stored_rollups(&*pg.store.ledger(), project).await, rollups, "rollups outlive raw rows");
    pg.finish().await;
}

/// Migration 9 moves a ledger stored before it into month partitions, keeps its ids
/// (replays still ignored) and fills the counted rollup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_9_moves_existing_rows_into_month_partitions() {
    let mut pg = Postgres::fresh().await;
    let project = "an-migration-9";
    let records = three_months(&pg, project).await;
    // Back to version 8: one unpartitioned table, its id the primary key.
    {
        let client = pg.store.pool().get().await.expect("client");
        client
            .batch_execute(
                "CREATE TABLE usage_v8 (LIKE usage INCLUDING DEFAULTS); INSERT INTO usage_v8 SELECT * FROM usage; \
                 DROP TABLE usage; DROP TABLE usage_ids; DROP TABLE usage_counted; \
                 DROP FUNCTION tollgate_usage_partition(BIGINT[]); ALTER TABLE usage_v8 RENAME TO usage; \
                 ALTER TABLE usage ADD PRIMARY KEY (id); CREATE INDEX usage_ts ON usage (ts_ms, id); \
                 CREATE INDEX usage_project_ts ON usage (project_id, ts_ms, id); \
                 CREATE INDEX usage_key_ts ON usage (key_id, ts_ms, id); \
                 CREATE INDEX usage_anonymous_ts ON usage (project_id, anonymous_id, ts_ms, id) \
                 WHERE anonymous_id IS NOT NULL; DELETE FROM tollgate_migrations WHERE version >= 9;",
            )
            .await
            .expect("downgrade");
    }
    pg.reopen().await;
    assert_eq!(partitions(&pg).await, ["usage_202309", "usage_202310", "usage_202311"]);
    let mut rows = conformance::ledger_rows(&*pg.store.ledger(), project).await;
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    let mut want = records.clone();
    want.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(rows, want, "every row moved, unchanged");
    let replays: Vec<_> = records.iter().take(30).cloned().collect();
    assert!(pg.store.ledger().append_new(replays).await.expect("append_new").iter().all(|new| !new));
    let client = pg.store.pool().get().await.expect("client");
    let counted: i64 = client
        .query_one("SELECT CAST(SUM(requests) AS BIGINT) FROM usage_counted WHERE project_id = $1", &[&project])
        .await
        .expect("counted")
        .get(0);
    let want: u64 = records.iter().filter(|r| r.counted).map(|r| r.requests).sum();
    assert_eq!(counted as u64, want, "the counted rollup holds every counted row");
    drop(client);
    pg.finish().await;
}

/// Migration 16 fills the keys' volumes (the narrow key projection) from the key
/// projection already stored: a ledger written before it answers every query alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_16_fills_the_key_volumes_from_the_key_projection() {
    let mut pg = Postgres::fresh().await;
    let project = "an-migration-16";
    let records = three_months(&pg, project).await;
    {
        let client = pg.store.pool().get().await.expect("client");
        client
            .batch_execute(
                "DROP TABLE usage_hourly_key_volume; DROP TABLE usage_daily_key_volume; \
                 DELETE FROM tollgate_migrations WHERE version >= 16;",
            )
            .await
            .expect("back to version 15");
    }
    pg.reopen().await;
    let client = pg.store.pool().get().await.expect("client");
    let filled: i64 = client
        .query_one("SELECT count(*) FROM usage_hourly_key_volume WHERE project_id = $1", &[&project])
        .await
        .expect("count")
        .get(0);
    assert!(filled > 0, "the migration filled the hourly key volumes");
    drop(client);
    let (_, analytics) = pg.parts();
    let mut rng = conformance::Rng::new(16);
    let span_hours = 24 * 90;
    for _ in 0..40 {
        let mut q = conformance::random_query(&mut rng, project, span_hours);
        // Whatever the random draw, half the queries read the keys' volumes.
        if rng.below(2) == 0 {
            q.group_by = vec![tollgate_analytics::store::Dimension::Key];
            q.latency_buckets = false;
            q.filter = tollgate_analytics::store::RollupFilter { key_id: q.filter.key_id, ..Default::default() };
            q.filter.project_id = Some(project.to_owned());
            assert_eq!(q.source().0.map(|k| k.name), Some("key_volume"), "{q:?}");
        }
        conformance::assert_query_matches(&*analytics, &records, &q, "after migration 16").await;
    }
    pg.finish().await;
}

/// Issue 18: a lease in PostgreSQL has one holder at a time; its holder renews it;
/// another takes it once released, or once it expires (a holder that died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_lease_has_one_holder_and_is_taken_over_when_its_holder_dies() {
    use std::time::Duration;
    use tollgate_store_postgres::PgLease;
    let pg = Postgres::fresh().await;
    let pool = pg.store.pool().clone();
    let a = PgLease::new(pool.clone(), "job", "instance-a", Duration::from_secs(60));
    let b = PgLease::new(pool.clone(), "job", "instance-b", Duration::from_secs(60));
    assert!(a.acquire_or_renew().await.expect("a takes"));
    assert!(!b.acquire_or_renew().await.expect("b waits"));
    assert!(a.acquire_or_renew().await.expect("a renews"));
    assert_eq!(b.current_holder().await.expect("holder").as_deref(), Some("instance-a"));
    // Concurrent attempts: exactly one wins.
    a.release().await.expect("release");
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let lease = PgLease::new(pool.clone(), "job", format!("c{i}"), Duration::from_secs(60));
            tokio::spawn(async move { lease.acquire_or_renew().await })
        })
        .collect();
    let mut wins = Vec::new();
    for task in tasks {
        wins.push(task.await.expect("task").expect("acquire"));
    }
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "one holder: {wins:?}");
    // A holder that stops renewing (it died) loses the lease when it expires.
    let short = PgLease::new(pool.clone(), "short", "dead", Duration::from_millis(200));
    let heir = PgLease::new(pool.clone(), "short", "heir", Duration::from_secs(60));
    assert!(short.acquire_or_renew().await.expect("take"));
    assert!(!heir.acquire_or_renew().await.expect("not yet"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !heir.acquire_or_renew().await.expect("try") {
        assert!(std::time::Instant::now() < deadline, "the expired lease was never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!short.acquire_or_renew().await.expect("the dead holder lost it"));
    drop(pool);
    pg.finish().await;
}

/// Many instances on one PostgreSQL write batches whose rollups touch the same rows:
/// they upsert in one fixed order, so none deadlocks, and the rollups add up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_the_same_rollup_rows_never_deadlock() {
    let pg = Postgres::fresh().await;
    let project = "an-concurrent";
    let mut writers = Vec::new();
    for _ in 0..4 {
        writers.push(open(&pg.settings).await);
    }
    let mut tasks = Vec::new();
    for (w, store) in writers.iter().enumerate() {
        let ledger = store.ledger();
        tasks.push(tokio::spawn(async move {
            let mut rng = conformance::Rng::new(500 + w as u64);
            for batch in 0..10 {
                let records: Vec<_> = (0..300)
                    .map(|i| conformance::random_record(&mut rng, format!("{project}-{w}-{batch}-{i}"), project, 6))
                    .collect();
                ledger.append_new(records).await.expect("a batch is written (no deadlock)");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    let rows = conformance::ledger_rows(&*pg.store.ledger(), project).await;
    assert_eq!(rows.len(), 4 * 10 * 300);
    assert_eq!(
        conformance::stored_rollups(&*pg.store.ledger(), project).await,
        tollgate_analytics::rollup::brute_force(&rows),
        "the rollups add up exactly"
    );
    for store in writers {
        store.ledger().close().await.ok();
    }
    pg.finish().await;
}
