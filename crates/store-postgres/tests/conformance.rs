//! The PostgreSQL catalog and ledger against a real PostgreSQL
//! (`TOLLGATE_TEST_DATABASE_URL`, which `scripts/test.sh` sets): the shared
//! conformance suite, one test per scenario, each in a schema of its own that is
//! dropped afterwards; then what only this backend can be asked: migrations, the key
//! cache across two instances (announced changes and the TTL backstop), and the
//! ledger buffering while PostgreSQL refuses writes.
//!
//! Without the variable every test prints a notice and passes; with it set and
//! PostgreSQL unreachable, every test fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tollgate_core::{KeyHash, KeyRecord, KeyState, UsageQuery, UsageRecord};
use tollgate_store::conformance::{self, NOW};
use tollgate_store::{Catalog, Ledger};
use tollgate_store_postgres::{CatalogChange, ChangePublisher, PostgresCatalog, PostgresSettings, PostgresStore};

fn unique_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("tgtest_{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

fn settings(schema: &str) -> Option<PostgresSettings> {
    // Never skipped: without the service these tests fail rather than pass.
    let url = std::env::var("TOLLGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/tollgate_test".to_owned());
    let mut settings = PostgresSettings::new(url);
    settings.schema = Some(schema.to_owned());
    settings.pool_size = 4;
    Some(settings)
}

async fn open(settings: &PostgresSettings) -> PostgresStore {
    match PostgresStore::open(settings).await {
        Ok(store) => store,
        Err(e) => panic!("TOLLGATE_TEST_DATABASE_URL={} is set but PostgreSQL cannot be used: {e}", settings.url),
    }
}

/// A store in a fresh schema; the schema is dropped by [`finish`].
async fn fresh() -> Option<(PostgresStore, String)> {
    let schema = unique_schema();
    let settings = settings(&schema)?;
    Some((open(&settings).await, schema))
}

async fn finish(store: PostgresStore, schema: &str) {
    store.ledger().close().await.expect("close ledger");
    store.drop_schema(schema).await.expect("drop test schema");
}

macro_rules! scenarios {
    ($part:ident: $($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let Some((store, schema)) = fresh().await else { return };
            scenarios!(@run $part, store, $name);
            finish(store, &schema).await;
        }
    )+};
    (@run catalog, $store:ident, $name:ident) => {
        conformance::catalog::$name(&*$store.catalog()).await
    };
    (@run ledger, $store:ident, $name:ident) => {
        conformance::ledger::$name(&*$store.ledger()).await
    };
}

mod catalog {
    use super::*;
    scenarios!(catalog:
        projects,
        project_settings,
        plans,
        keys_create_get_list,
        update_key_versions_and_revocation,
        rotate_key_secret,
        lookup_unknown_hash,
        admin_tokens,
    );
}

mod ledger {
    use super::*;
    scenarios!(ledger:
        append_flush_query,
        append_is_idempotent,
        query_filters_order_and_pages,
        records_since_is_oldest_first,
        usage_totals_sum_counted_usage_per_bucket,
        anonymous_records_are_one_visitors_in_pages,
        many_appends_then_flush,
        append_new_reports_replays,
        refusals_are_aggregated_per_key_and_minute,
    );
}

/// The ledger in commit order (the usage events sink reads it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_follows_commit_order_and_cursors_move_forward() {
    let Some((store, schema)) = fresh().await else { return };
    let ledger = store.ledger();
    conformance::feed::records_follow_commit_order_and_cursors_move_forward(&*ledger, &*ledger).await;
    finish(store, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_whole_groups_on_one_store() {
    let Some((store, schema)) = fresh().await else { return };
    conformance::run_catalog(&*store.catalog()).await;
    conformance::run_ledger(&*store.ledger()).await;
    finish(store, &schema).await;
}

/// Opening again applies nothing twice; a database migrated by a newer tollgate is
/// refused rather than misread.
#[tokio::test]
async fn migrations_apply_once_and_refuse_newer_schemas() {
    let Some((store, schema)) = fresh().await else { return };
    let Some(settings) = settings(&schema) else { return };
    let again = open(&settings).await;
    again.ledger().close().await.expect("close");
    let client = store.pool().get().await.expect("client");
    let versions: i64 = client.query_one("SELECT count(*) FROM tollgate_migrations", &[]).await.expect("count").get(0);
    assert_eq!(versions, crate_migrations(), "every migration once");
    client.execute("INSERT INTO tollgate_migrations (version) VALUES (999)", &[]).await.expect("fake newer");
    drop(client);
    let newer = PostgresStore::open(&settings).await;
    assert!(newer.is_err(), "a newer schema must be refused");
    finish(store, &schema).await;
}

fn key(id: &str) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        project_id: "cache-project".to_owned(),
        name: None,
        plan: "free".to_owned(),
        metadata: serde_json::Map::new(),
        limit_overrides: Vec::new(),
        created_at_ms: NOW,
        expires_at_ms: None,
        revoked_at_ms: None,
        version: 1,
    }
}

/// Hands every change of one catalog to another, as Redis pub/sub does between
/// instances.
struct Relay(Arc<PostgresCatalog>);

#[async_trait]
impl ChangePublisher for Relay {
    async fn publish(&self, change: CatalogChange) {
        let decoded = CatalogChange::decode(&change.encode()).expect("wire form");
        self.0.apply_change(&decoded);
    }
}

/// Two instances on one database: B caches a key; A revokes it and rotates it; B sees
/// each change at once through the announcement, never an older version.
#[tokio::test]
async fn announced_changes_reach_the_other_instance_at_once() {
    let Some((a, schema)) = fresh().await else { return };
    let Some(settings) = settings(&schema) else { return };
    let b = open(&settings).await;
    a.catalog().set_publisher(Arc::new(Relay(b.catalog())));
    let hash = KeyHash::of("cache secret 1");
    let created = a.catalog().create_key(key("cacheKey0001"), hash).await.expect("create");
    let seen = b.catalog().lookup_key(&hash, NOW).await.expect("lookup").expect("found");
    assert_eq!(*seen, created);
    assert_eq!(b.catalog().cached_secrets(), 1);

    let revoked = a.catalog().update_key(KeyRecord { revoked_at_ms: Some(NOW), ..created }).await.expect("revoke");
    let seen = b.catalog().lookup_key(&hash, NOW + 1).await.expect("lookup").expect("still found");
    assert_eq!(seen.state(NOW + 1), KeyState::Revoked, "B sees the revoke at once");
    assert_eq!(seen.version, revoked.version);

    let new_hash = KeyHash::of("cache secret 2");
    let rotated = a.catalog().rotate_key_secret(&revoked.id, new_hash, None).await.expect("rotate");
    assert!(b.catalog().lookup_key(&hash, NOW).await.expect("lookup old").is_none(), "old secret retired on B");
    let seen = b.catalog().lookup_key(&new_hash, NOW).await.expect("lookup new").expect("new secret");
    assert_eq!(seen.version, rotated.version);

    b.ledger().close().await.expect("close b");
    finish(a, &schema).await;
}

/// Without an announcement (a lost pub/sub message) the other instance serves its
/// cached copy until the TTL, then reads the change.
#[tokio::test]
async fn the_ttl_is_the_backstop_for_lost_announcements() {
    let Some((a, schema)) = fresh().await else { return };
    let Some(mut settings) = settings(&schema) else { return };
    settings.key_cache_ttl = Duration::from_millis(300);
    let b = open(&settings).await;
    let hash = KeyHash::of("ttl secret");
    let created = a.catalog().create_key(key("cacheKey0002"), hash).await.expect("create");
    assert!(b.catalog().lookup_key(&hash, NOW).await.expect("lookup").is_some());
    a.catalog().update_key(KeyRecord { revoked_at_ms: Some(NOW), ..created }).await.expect("revoke");
    let stale = b.catalog().lookup_key(&hash, NOW + 1).await.expect("lookup").expect("cached");
    assert_eq!(stale.state(NOW + 1), KeyState::Active, "no announcement: the cached copy is served");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let seen = b.catalog().lookup_key(&hash, NOW + 1).await.expect("lookup").expect("found");
        if seen.state(NOW + 1) == KeyState::Revoked {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the TTL did not expire the stale entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.ledger().close().await.expect("close b");
    finish(a, &schema).await;
}

fn usage(id: &str) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms: NOW,
        project_id: "buffer-project".to_owned(),
        key_id: "bufferKey001".to_owned(),
        endpoint: "chat.completions".to_owned(),
        status: 200,
        counted: true,
        requests: 1,
        ..UsageRecord::default()
    }
}

async fn stored(ledger: &dyn Ledger) -> usize {
    let query = UsageQuery { project_id: Some("buffer-project".to_owned()), limit: 1_000, ..UsageQuery::default() };
    ledger.query(query).await.expect("query").len()
}

/// While PostgreSQL refuses writes the records wait in memory (flush says so), up to
/// the bound; once it accepts them again they are written without anyone asking, and
/// what was beyond the bound is counted as dropped.
#[tokio::test]
async fn the_ledger_buffers_while_postgres_refuses_writes() {
    let schema = unique_schema();
    let Some(mut settings) = settings(&schema) else { return };
    settings.ledger_buffer = 8;
    let store = open(&settings).await;
    let ledger = store.ledger();
    let admin = store.pool().get().await.expect("client");
    // Make every insert fail, as an outage would.
    admin.batch_execute("ALTER TABLE usage RENAME TO usage_away").await.expect("hide table");
    for i in 0..5 {
        ledger.append(usage(&format!("buffered-{i}")));
    }
    assert!(ledger.flush().await.is_err(), "flush reports that the records are not durable");
    assert_eq!(ledger.stats().queued.load(Ordering::Relaxed), 5);
    for i in 5..12 {
        ledger.append(usage(&format!("buffered-{i}")));
    }
    let started = std::time::Instant::now();
    assert!(ledger.flush().await.is_err());
    assert!(started.elapsed() < Duration::from_millis(500), "a flush during an outage answers at once");
    assert_eq!(ledger.stats().dropped.load(Ordering::Relaxed), 4, "12 records, room for 8");
    admin.batch_execute("ALTER TABLE usage_away RENAME TO usage").await.expect("restore table");
    // The writer retries by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored(&*ledger).await < 8 {
        assert!(tokio::time::Instant::now() < deadline, "buffered records were not written after recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored(&*ledger).await, 8);
    assert_eq!(ledger.stats().queued.load(Ordering::Relaxed), 0);
    ledger.flush().await.expect("flush after recovery");
    drop(admin);
    finish(store, &schema).await;
}

/// How many migrations this build ships (the `.sql` files of `migrations/`).
fn crate_migrations() -> i64 {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    let files = std::fs::read_dir(dir).expect("migrations dir");
    files.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "sql")).count() as i64
}
