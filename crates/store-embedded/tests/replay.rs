//! The counter rebuild at start (issue 10, item 17): counters rebuilt from the sums
//! the store computes equal what replaying every record did, and the rebuild never
//! loads the ledger (`records_since`), only bounded pages of sums.

use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, month_start};
use tollgate_core::{
    Amounts, ApiKey, KeyRecord, LimitSpec, Metric, Plan, Project, SubjectKind, TRANSFER_ENDPOINT, UsageQuery,
    UsageRecord, UsageSource, Window, record_items,
};
use tollgate_store::conformance::NOW;
use tollgate_store::replay::replay_ledger;
use tollgate_store::{Catalog, Ledger, Limiter, PlanCache, StoreResult, TotalsPages, TotalsQuery};
use tollgate_store_embedded::{EmbeddedLimiter, EmbeddedStore};

/// A ledger that refuses to be loaded whole, and remembers the largest page of sums
/// it handed out.
struct NoFullLoad {
    inner: Arc<dyn Ledger>,
}

#[async_trait]
impl Ledger for NoFullLoad {
    fn append(&self, record: UsageRecord) {
        self.inner.append(record);
    }
    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>> {
        self.inner.append_new(records).await
    }
    async fn flush(&self) -> StoreResult<()> {
        self.inner.flush().await
    }
    async fn query(&self, query: UsageQuery) -> StoreResult<Vec<UsageRecord>> {
        self.inner.query(query).await
    }
    async fn records_since(&self, _since_ms: i64) -> StoreResult<Vec<UsageRecord>> {
        panic!("the counter rebuild loaded the whole ledger")
    }
    async fn usage_totals(&self, query: TotalsQuery) -> StoreResult<TotalsPages> {
        self.inner.usage_totals(query).await
    }
    async fn anonymous_records(
        &self,
        project_id: &str,
        anonymous_id: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<UsageRecord>> {
        self.inner.anonymous_records(project_id, anonymous_id, since_ms, after, limit).await
    }
    async fn close(&self) -> StoreResult<()> {
        self.inner.close().await
    }
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

fn every_limit() -> Vec<LimitSpec> {
    let mut limits = Vec::new();
    for metric in [Metric::Requests, Metric::TotalTokens, Metric::OutputTokens, Metric::CostMicros] {
        for window in [Window::Minute, Window::Hour, Window::Day, Window::Month] {
            for subject in [SubjectKind::Key, SubjectKind::Project, SubjectKind::Ip] {
                limits.push(LimitSpec::new(metric, window, 1_000_000_000_000).with_subject(subject));
            }
        }
    }
    limits.push(LimitSpec::new(Metric::TotalTokens, Window::Day, 1_000_000_000_000).for_model("gpt-4o"));
    limits.push(LimitSpec::new(Metric::Requests, Window::Hour, 1_000_000_000_000).for_endpoint("embeddings"));
    limits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_rebuilt_from_store_sums_equal_a_replay_of_every_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    let catalog = store.catalog();
    catalog.create_project(Project::new("acme", "Acme", 0)).await.expect("project");
    catalog
        .put_plan(Plan { name: "everything".into(), description: None, limits: every_limit(), time_zone: None })
        .await
        .expect("plan");
    let anonymous = [Window::Minute, Window::Hour, Window::Day, Window::Month]
        .map(|w| LimitSpec::new(Metric::Requests, w, 1_000_000_000).with_subject(SubjectKind::Anonymous));
    catalog
        .put_plan(Plan { name: "anonymous".into(), description: None, limits: anonymous.to_vec(), time_zone: None })
        .await
        .expect("anon");
    let mut keys = Vec::new();
    for seed in 0..3u8 {
        let key =
            ApiKey::generate(&[seed.wrapping_mul(37).wrapping_add(1); tollgate_core::key::RANDOM_BYTES]).expect("key");
        let record = KeyRecord {
            id: key.public_id().to_owned(),
            project_id: "acme".into(),
            name: None,
            plan: "everything".into(),
            metadata: serde_json::Map::new(),
            limit_overrides: Vec::new(),
            created_at_ms: 0,
            expires_at_ms: None,
            revoked_at_ms: None,
            version: 1,
        };
        keys.push(catalog.create_key(record, key.hash()).await.expect("create key"));
    }

    // Records over every tier the rebuild buckets by, and some it must ignore.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let month = month_start(NOW);
    let mut records = Vec::new();
    for i in 0..3_000 {
        let age = match rng.below(5) {
            0 => rng.below(70_000) as i64,
            1 => rng.below(2 * MS_PER_HOUR as u64) as i64,
            2 => rng.below(MS_PER_DAY as u64) as i64,
            3 => rng.below((NOW - month) as u64) as i64,
            _ => (NOW - month) + rng.below(MS_PER_DAY as u64) as i64,
        };
        let key = rng.pick(&keys).clone();
        let record = UsageRecord {
            id: format!("r{i:05}"),
            ts_ms: NOW - age,
            project_id: "acme".into(),
            key_id: key.id.clone(),
            endpoint: rng.pick(&["chat.completions", "embeddings", TRANSFER_ENDPOINT]).to_string(),
            provider: "openai".into(),
            model: rng.pick(&[Some("gpt-4o"), Some("gpt-4o-mini"), None]).map(str::to_owned),
            status: 200,
            counted: rng.below(10) != 0,
            requests: 1,
            prompt_tokens: rng.below(500),
            completion_tokens: rng.below(300),
            cost_micros: rng.below(10_000),
            usage_source: UsageSource::Reported,
            client_ip: rng
                .pick(&[None, Some("203.0.113.7"), Some("2001:db8::1"), Some("2001:db8::2")])
                .map(str::to_owned),
            anonymous_id: rng.pick(&[None, Some("visitor-a"), Some("visitor-b")]).map(str::to_owned),
            ..UsageRecord::default()
        };
        store.ledger().append(record.clone());
        records.push(record);
    }
    store.ledger().flush().await.expect("flush");

    let plans = PlanCache::load(&*catalog).await.expect("plans");
    let ledger = NoFullLoad { inner: store.ledger() };
    let rebuilt = EmbeddedLimiter::new();
    let sums = replay_ledger(&*catalog, &ledger, &rebuilt, &plans, "anonymous", NOW).await.expect("rebuild");

    // What the old rebuild did: every counted record of the window, oldest first.
    let anonymous_plan = plans.get("anonymous");
    let since = TotalsQuery::for_replay(NOW).since_ms;
    let mut ordered: Vec<&UsageRecord> = records.iter().filter(|r| r.counted && r.ts_ms >= since).collect();
    ordered.sort_by(|a, b| (a.ts_ms, &a.id).cmp(&(b.ts_ms, &b.id)));
    let replayed = EmbeddedLimiter::new();
    let authed_of = |key_id: &str| {
        let key = keys.iter().find(|k| k.id == key_id).expect("key").clone();
        plans.resolve(Arc::new(key)).expect("plan")
    };
    for r in &ordered {
        let items = record_items(&authed_of(&r.key_id), r, anonymous_plan.as_deref());
        replayed.apply(&r.project_id, &items, r.amounts(), r.ts_ms).await.expect("apply");
    }
    assert!(sums < ordered.len(), "the store summed records ({sums} sums for {} records)", ordered.len());

    let compare = async |rebuilt: &EmbeddedLimiter, what: &str| {
        let mut compared = 0;
        for r in &records {
            let items = record_items(&authed_of(&r.key_id), r, anonymous_plan.as_deref());
            let want = replayed.peek("acme", &items, Amounts::default(), NOW).await.expect("peek");
            let got = rebuilt.peek("acme", &items, Amounts::default(), NOW).await.expect("peek");
            for (w, g) in want.statuses.iter().zip(&got.statuses) {
                assert_eq!((g.used, g.reset_at_ms), (w.used, w.reset_at_ms), "{} {what}", w.spec.name());
                compared += 1;
            }
        }
        assert!(compared > 10_000, "{compared} statuses compared");
        assert!(replayed.counters() > 100 && replayed.counters() == rebuilt.counters(), "the same counters exist");
    };
    compare(&rebuilt, "after the rebuild").await;

    // The rebuild reads the counted rollup, not the ledger's rows: with every raw row
    // older than the finer tiers deleted behind the store's back, it rebuilds the
    // same counters from the same number of sums.
    let cutoff = NOW - 2 * MS_PER_HOUR - 15 * 60_000;
    let deleted = rusqlite::Connection::open(store.db_path())
        .expect("open db")
        .execute("DELETE FROM usage WHERE ts_ms < ?1", [cutoff])
        .expect("delete old rows");
    assert!(deleted > 1_000, "{deleted} rows deleted");
    let again = EmbeddedLimiter::new();
    let sums_again = replay_ledger(&*catalog, &ledger, &again, &plans, "anonymous", NOW).await.expect("rebuild");
    assert_eq!(sums_again, sums);
    compare(&again, "after the rebuild without the old rows").await;
}

/// A large ledger of few groups: the rebuild replays one sum per group and bucket,
/// not one per row, so its work and memory follow the groups, not the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebuild_of_a_large_ledger_replays_sums_per_bucket_not_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open store");
    let catalog = store.catalog();
    catalog.create_project(Project::new("acme", "Acme", 0)).await.expect("project");
    let limits = vec![LimitSpec::new(Metric::Requests, Window::Month, 1_000_000_000_000)];
    catalog.put_plan(Plan { name: "monthly".into(), description: None, limits, time_zone: None }).await.expect("plan");
    catalog
        .put_plan(Plan { name: "anonymous".into(), description: None, limits: Vec::new(), time_zone: None })
        .await
        .expect("anon");
    let key = ApiKey::generate(&[7; tollgate_core::key::RANDOM_BYTES]).expect("key");
    let record = KeyRecord {
        id: key.public_id().to_owned(),
        project_id: "acme".into(),
        name: None,
        plan: "monthly".into(),
        metadata: serde_json::Map::new(),
        limit_overrides: Vec::new(),
        created_at_ms: 0,
        expires_at_ms: None,
        revoked_at_ms: None,
        version: 1,
    };
    let key = catalog.create_key(record, key.hash()).await.expect("create key");
    // 200,000 rows over the last 5 days (or the month so far, if shorter).
    let month = month_start(NOW);
    let span = (NOW - month).min(5 * MS_PER_DAY);
    const ROWS: i64 = 200_000;
    for batch in 0..ROWS / 5_000 {
        let records: Vec<UsageRecord> = (0..5_000)
            .map(|i| {
                let n = batch * 5_000 + i;
                UsageRecord {
                    id: format!("big{n:06}"),
                    ts_ms: NOW - 1 - (n * span / ROWS),
                    project_id: "acme".into(),
                    key_id: key.id.clone(),
                    endpoint: "chat.completions".into(),
                    provider: "openai".into(),
                    model: Some("gpt-4o".into()),
                    status: 200,
                    counted: true,
                    requests: 1,
                    usage_source: UsageSource::Reported,
                    ..UsageRecord::default()
                }
            })
            .collect();
        store.ledger().append_new(records).await.expect("append");
    }
    let plans = PlanCache::load(&*catalog).await.expect("plans");
    let ledger = NoFullLoad { inner: store.ledger() };
    let limiter = EmbeddedLimiter::new();
    let sums = replay_ledger(&*catalog, &ledger, &limiter, &plans, "anonymous", NOW).await.expect("rebuild");
    // Quarter hours of the span, plus the minute and second buckets of the finer tiers.
    let bound = (span / (15 * 60_000)) as usize + 2 * 60 + 2 * 60 + 4;
    assert!(sums <= bound, "{sums} sums replayed for {ROWS} rows (bound {bound})");
    let authed = plans.resolve(Arc::new(key.clone())).expect("plan");
    let probe = UsageRecord { key_id: key.id.clone(), project_id: "acme".into(), ..UsageRecord::default() };
    let items = record_items(&authed, &probe, None);
    let status = limiter.peek("acme", &items, Amounts::default(), NOW).await.expect("peek");
    assert_eq!(status.statuses[0].used, ROWS as u64, "every row counted once");
}
