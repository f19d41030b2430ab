//! The embedded store against the shared conformance suite (one test per scenario,
//! each on a fresh store in a temporary directory), plus what only this backend can
//! be asked: durability across close and reopen, and that no secret reaches the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_core::{AdminToken, ApiKey, KeyRecord, LimitSpec, Metric, Plan, Project, UsageQuery, UsageRecord, Window};
use tollgate_store::conformance::{self, NOW};
use tollgate_store::{AdminTokenRecord, Catalog, Ledger, Limiter, StoreError};
use tollgate_store_embedded::{DB_FILE, EmbeddedStore, OpenOptions};

fn operator_token(token: &AdminToken, project_id: Option<&str>) -> AdminTokenRecord {
    AdminTokenRecord {
        id: AdminTokenRecord::id_for(&token.hash()),
        project_id: project_id.map(str::to_owned),
        name: None,
        prefix: Some(token.prefix().to_owned()),
        created_at_ms: NOW,
        expires_at_ms: None,
        revoked_at_ms: None,
    }
}

fn fresh() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    (dir, store)
}

macro_rules! scenarios {
    ($part:ident: $($name:ident),+ $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            let (_dir, store) = fresh();
            scenarios!(@run $part, store, $name);
        }
    )+};
    (@run catalog, $store:ident, $name:ident) => {
        conformance::catalog::$name(&*$store.catalog()).await
    };
    (@run limiter, $store:ident, $name:ident) => {
        conformance::limiter::$name($store.limiter()).await
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

mod limiter {
    use super::*;
    scenarios!(limiter:
        exact_admission_under_concurrency,
        all_or_nothing,
        binding_refusal_is_reported,
        zero_amount_limits_are_reported,
        settle_adjusts_once,
        settle_with_zero_refunds,
        reserve_without_hold_is_final,
        repeated_reserve_does_not_double_charge,
        retry_and_reset_times,
        apply_charges_without_checking,
        a_reservation_lives_as_long_as_its_hold,
        prune_drops_idle_counters,
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
    let (_dir, store) = fresh();
    let ledger = store.ledger();
    conformance::feed::records_follow_commit_order_and_cursors_move_forward(&*ledger, &*ledger).await;
    store.close().await.expect("close");
}

/// The grouped runners work on one shared instance each, as later backends may use
/// them. The catalog runs through `EmbeddedStore`'s own `Catalog` implementation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_suite_on_one_store() {
    let (_dir, store) = fresh();
    conformance::run_catalog(&store).await;
    conformance::run_limiter(store.limiter()).await;
    conformance::run_ledger(&*store.ledger()).await;
    store.close().await.expect("close");
}

fn random(seed: u8) -> Vec<u8> {
    (0..tollgate_core::key::RANDOM_BYTES).map(|i| (i as u8).wrapping_mul(131).wrapping_add(seed)).collect()
}

fn key_record(id: &str, project_id: &str, plan: &str) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        project_id: project_id.to_owned(),
        name: Some("reopened".to_owned()),
        plan: plan.to_owned(),
        metadata: serde_json::Map::new(),
        limit_overrides: vec![LimitSpec::new(Metric::TotalTokens, Window::Day, 9_000)],
        created_at_ms: NOW,
        expires_at_ms: None,
        revoked_at_ms: None,
        version: 1,
    }
}

fn usage(id: &str, ts_ms: i64) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms,
        project_id: "reopen".to_owned(),
        key_id: "reopenKey001".to_owned(),
        endpoint: "chat.completions".to_owned(),
        model: Some("m".to_owned()),
        status: 200,
        counted: true,
        requests: 1,
        prompt_tokens: 10,
        completion_tokens: 5,
        cost_micros: 7,
        latency_ms: 100,
        ..UsageRecord::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_then_reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = ApiKey::generate(&random(1)).expect("key");
    let rotated = ApiKey::with_public_id(key.public_id(), &random(2)).expect("rotated key");
    let admin = AdminToken::generate(&random(3)).expect("admin token");
    let plan = Plan {
        name: "reopen-plan".to_owned(),
        description: None,
        limits: vec![LimitSpec::new(Metric::Requests, Window::Minute, 5)],
        time_zone: Some(tollgate_core::Zone::parse("Pacific/Chatham").expect("zone")),
    };
    let project = Project::new("reopen", "Reopen", NOW);
    let grace_until = NOW + 60_000;
    let record = {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let catalog = store.catalog();
        catalog.create_project(project.clone()).await.expect("project");
        catalog.put_plan(plan.clone()).await.expect("plan");
        catalog.create_key(key_record(key.public_id(), "reopen", "reopen-plan"), key.hash()).await.expect("key");
        let record =
            catalog.rotate_key_secret(key.public_id(), rotated.hash(), Some(grace_until)).await.expect("rotate");
        catalog.create_admin_token(operator_token(&admin, None), admin.hash()).await.expect("admin");
        // Appended just before close, never flushed: close must commit them.
        let ledger = store.ledger();
        for i in 0..50 {
            ledger.append(usage(&format!("reopen-{i:03}"), NOW + i));
        }
        store.close().await.expect("close");
        record
    };

    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let catalog = store.catalog();
    assert_eq!(catalog.get_project("reopen").await.expect("get project"), Some(project));
    assert_eq!(catalog.get_plan("reopen-plan").await.expect("get plan"), Some(plan));
    assert_eq!(catalog.get_key(key.public_id()).await.expect("get key"), Some(record.clone()));
    assert_eq!(catalog.indexed_secrets(), 2, "the index is rebuilt from the database");
    let found = catalog.lookup_key(&rotated.hash(), NOW).await.expect("lookup new");
    assert_eq!(found.as_deref(), Some(&record));
    let found = catalog.lookup_key(&key.hash(), grace_until - 1).await.expect("lookup old");
    assert_eq!(found.as_deref(), Some(&record), "the old secret's grace period survives a restart");
    assert!(catalog.lookup_key(&key.hash(), grace_until).await.expect("lookup old late").is_none());
    assert_eq!(catalog.lookup_admin_token(&admin.hash()).await.expect("admin"), Some(operator_token(&admin, None)));
    assert!(catalog.has_operator_token(NOW).await.expect("operator"));

    let ledger = store.ledger();
    let records = ledger.records_since(NOW).await.expect("records since");
    assert_eq!(records.len(), 50, "records appended just before close are durable");
    assert_eq!(records[49], usage("reopen-049", NOW + 49));
    store.close().await.expect("close again");
}

/// Every file of the store directory, as raw bytes (the database, its WAL and index).
fn raw_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            let path = entry.expect("entry").path();
            (path.display().to_string(), std::fs::read(&path).expect("read file"))
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_disk() {
    let (dir, store) = fresh();
    let catalog = store.catalog();
    let key = ApiKey::generate(&random(7)).expect("key");
    let rotated = ApiKey::with_public_id(key.public_id(), &random(8)).expect("rotated");
    let admin = AdminToken::generate(&random(9)).expect("admin");
    catalog.create_key(key_record(key.public_id(), "p", "free"), key.hash()).await.expect("create key");
    catalog.rotate_key_secret(key.public_id(), rotated.hash(), Some(NOW)).await.expect("rotate");
    catalog.create_admin_token(operator_token(&admin, Some("p")), admin.hash()).await.expect("admin");

    let files = raw_files(dir.path());
    assert!(files.iter().any(|(name, _)| name.ends_with(DB_FILE)));
    let mut hash_seen = false;
    for (name, bytes) in &files {
        for secret in [key.expose(), rotated.expose(), admin.expose()] {
            assert!(!contains(bytes, secret.as_bytes()), "a secret was written to {name}");
            // The part after the public id is the secret proper.
            let tail = &secret[secret.len() - 20..];
            assert!(!contains(bytes, tail.as_bytes()), "part of a secret was written to {name}");
        }
        hash_seen |= contains(bytes, key.hash().to_hex().as_bytes());
    }
    assert!(hash_seen, "the hash is stored, so the scan did read the data");
    store.close().await.expect("close");
    for (name, bytes) in raw_files(dir.path()) {
        assert!(!contains(&bytes, key.expose().as_bytes()), "a secret was written to {name} by close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_after_close() {
    let (_dir, store) = fresh();
    let ledger = store.ledger();
    ledger.append(usage("before-close", NOW));
    ledger.close().await.expect("close");
    ledger.close().await.expect("a second close is a no-op");
    ledger.append(usage("after-close", NOW + 1));
    assert!(matches!(ledger.flush().await, Err(StoreError::Unavailable { .. })), "flush after close");
    let all = ledger.query(UsageQuery { limit: 10, ..UsageQuery::default() }).await.expect("query after close");
    let ids: Vec<_> = all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["before-close"], "queries still work; late appends are dropped");
}

/// Dropping a store without closing it returns at once; the writer commits what was
/// queued in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_without_close_does_not_hang() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let ledger = store.ledger();
        for i in 0..100 {
            ledger.append(usage(&format!("dropped-{i:03}"), NOW + i));
        }
        let started = Instant::now();
        drop(ledger);
        drop(store);
        assert!(started.elapsed() < Duration::from_secs(1), "drop blocked");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = store.ledger().records_since(NOW).await.expect("records").len();
        if found == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "only {found} of 100 records committed after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_is_usable_as_a_trait_object() {
    let (_dir, store) = fresh();
    let limiter: Arc<dyn Limiter> = store.limiter();
    let catalog: Arc<dyn Catalog> = store.catalog();
    let ledger: Arc<dyn Ledger> = store.ledger();
    assert_eq!(limiter.held_reservations().await.expect("held"), 0);
    assert!(catalog.list_projects().await.expect("projects").is_empty());
    ledger.flush().await.expect("flush");
}

/// `durability = "fsync"`: the ledger's connections fsync every commit (FULL); by
/// default they hand commits to the OS (NORMAL, survives kill -9).
#[tokio::test]
async fn the_fsync_option_makes_ledger_commits_synchronous_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    assert_eq!(store.ledger().synchronous().expect("pragma"), 1, "NORMAL by default");
    store.close().await.expect("close");
    drop(store);
    let store = EmbeddedStore::open_with(dir.path(), OpenOptions { ledger_fsync: true, ..OpenOptions::default() })
        .expect("open");
    assert_eq!(store.ledger().synchronous().expect("pragma"), 2, "FULL with fsync");
    store.close().await.expect("close");
}
