//! The analytics conformance suite every backend runs (embedded and PostgreSQL),
//! in the manner of `tollgate_store::conformance`: plain `pub async fn`s over trait
//! objects that panic on the first deviation, every time derived from
//! [`NOW`](tollgate_store::conformance::NOW), every scenario in projects of its own.
//!
//! The reference is [`brute_force`]: the rollups of the ledger, aggregated from its
//! raw rows by the same definition the stores apply per batch. The property test
//! ([`random_operations_match_brute_force`]) runs seeded random sequences of
//! appends, replays, `append_new` calls, retention runs and restarts and compares
//! after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR};
use tollgate_core::{UsageQuery, UsageRecord, UsageSource};
use tollgate_store::Ledger;
use tollgate_store::conformance::NOW;

use crate::rollup::{CacheOutcome, RollupKey, RollupValues, brute_force, hour_of};
use crate::store::{AnalyticsStore, Dimension, RollupFilter, RollupQuery, Sums};

/// What the property test needs to restart a store on the same data.
#[async_trait]
pub trait Reopen: Send {
    /// The store's ledger and analytics, as open now.
    fn parts(&self) -> (Arc<dyn Ledger>, Arc<dyn AnalyticsStore>);
    /// Closes the store (ledger flushed) and opens it again on the same data.
    async fn reopen(&mut self);
}

/// A small deterministic generator (xorshift64*), so a failing seed replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// A random record of `project_id` within the `span_hours` hours before [`NOW`].
pub fn random_record(rng: &mut Rng, id: String, project_id: &str, span_hours: i64) -> UsageRecord {
    let refusal = rng.below(10) == 0;
    let status = if refusal { 429 } else { *rng.pick(&[200, 200, 200, 200, 400, 500, 502]) };
    let prompt = rng.below(4_000);
    let cached = if rng.below(3) == 0 { rng.below(prompt + 1) } else { 0 };
    let cost = if rng.below(8) == 0 { 0 } else { rng.below(20_000) };
    UsageRecord {
        id,
        ts_ms: NOW - rng.below((span_hours * MS_PER_HOUR) as u64) as i64,
        project_id: project_id.to_owned(),
        key_id: format!("key{}", rng.below(3)),
        endpoint: rng.pick(&["chat.completions", "embeddings"]).to_string(),
        provider: rng.pick(&["openai", "anthropic", ""]).to_string(),
        model: rng.pick(&[Some("gpt-4o"), Some("claude-sonnet"), None]).map(str::to_owned),
        status,
        counted: status == 200 && !refusal,
        requests: if refusal { 1 + rng.below(20) } else { 1 },
        prompt_tokens: prompt,
        completion_tokens: rng.below(2_000),
        cached_tokens: cached,
        cost_micros: cost,
        uncached_cost_micros: cost + if cached > 0 { rng.below(5_000) } else { 0 },
        usage_source: if refusal { UsageSource::Refusals } else { UsageSource::Reported },
        latency_ms: *rng.pick(&[0, 3, 40, 250, 900, 4_000, 70_000]) + rng.below(50),
        ..UsageRecord::default()
    }
}

/// The brute-force answer of a grouped query: `records` filtered and aggregated
/// directly, keyed by (hour, dimension values). Every store answers the same
/// whichever table it reads (the full rollup, a projection per hour or per day).
pub fn brute_force_query(
    records: &[UsageRecord],
    q: &RollupQuery,
) -> BTreeMap<(Option<i64>, Vec<String>), RollupValues> {
    let f = &q.filter;
    let text = |d: Dimension, r: &UsageRecord| -> String {
        match d {
            Dimension::Project => r.project_id.clone(),
            Dimension::Key => r.key_id.clone(),
            Dimension::Model => r.model.clone().unwrap_or_default(),
            Dimension::Provider => r.provider.clone(),
            Dimension::Endpoint => r.endpoint.clone(),
            Dimension::StatusClass => (r.status / 100).to_string(),
            Dimension::Cache => CacheOutcome::of(r).as_str().to_owned(),
            Dimension::Counted => r.counted.to_string(),
        }
    };
    let mut out: BTreeMap<(Option<i64>, Vec<String>), RollupValues> = BTreeMap::new();
    if !q.by_hour && q.group_by.is_empty() {
        out.insert((None, vec![]), RollupValues::default());
    }
    for r in records {
        let hour = hour_of(r.ts_ms);
        let matches = hour >= q.from_ms
            && hour < q.to_ms
            && f.project_id.as_ref().is_none_or(|v| *v == r.project_id)
            && f.key_id.as_ref().is_none_or(|v| *v == r.key_id)
            && f.model.as_ref().is_none_or(|v| *v == r.model.clone().unwrap_or_default())
            && f.provider.as_ref().is_none_or(|v| *v == r.provider)
            && f.endpoint.as_ref().is_none_or(|v| *v == r.endpoint)
            && f.counted.is_none_or(|v| v == r.counted);
        if matches {
            let key = (q.by_hour.then_some(hour), q.group_by.iter().map(|d| text(*d, r)).collect());
            out.entry(key).or_default().add_record(r);
        }
    }
    if !q.latency_buckets {
        out.values_mut().for_each(|v| v.latency_buckets = Default::default());
    }
    out.values_mut().for_each(|v| *v = q.sums.keep(v));
    out
}

/// A random grouped query over `project`'s records of the `span_hours` before
/// [`NOW`]: random range (often whole UTC days), dimensions, filters and grain.
pub fn random_query(rng: &mut Rng, project: &str, span_hours: i64) -> RollupQuery {
    let from_ms = hour_of(NOW) - rng.below(span_hours as u64 + 4) as i64 * MS_PER_HOUR;
    let to_ms = from_ms + (1 + rng.below(span_hours as u64 + 4)) as i64 * MS_PER_HOUR;
    let mut group_by = Vec::new();
    for _ in 0..rng.below(3) {
        let d = *rng.pick(&Dimension::ALL);
        if !group_by.contains(&d) {
            group_by.push(d);
        }
    }
    let mut filter = RollupFilter { project_id: Some(project.to_owned()), ..RollupFilter::default() };
    match rng.below(6) {
        0 => filter.key_id = Some(format!("key{}", rng.below(3))),
        1 => filter.model = Some(rng.pick(&["gpt-4o", "claude-sonnet", ""]).to_string()),
        2 => filter.counted = Some(true),
        3 => filter.provider = Some(rng.pick(&["openai", "anthropic"]).to_string()),
        _ => {}
    }
    let sums = *rng.pick(&[
        Sums::ALL,
        Sums::ALL,
        Sums::REQUESTS,
        Sums::TOKENS,
        Sums::COST,
        Sums::LATENCY,
        Sums::REQUESTS.union(Sums::COST),
    ]);
    RollupQuery {
        from_ms,
        to_ms,
        filter,
        by_hour: rng.below(2) == 0,
        group_by,
        latency_buckets: rng.below(2) == 0,
        sums,
    }
}

/// Checks `q` on the store against [`brute_force_query`] over `records`.
pub async fn assert_query_matches(
    analytics: &dyn AnalyticsStore,
    records: &[UsageRecord],
    q: &RollupQuery,
    what: &str,
) {
    let groups = analytics.rollup_groups(q.clone()).await.expect("grouped query");
    let n = groups.len();
    let got: BTreeMap<(Option<i64>, Vec<String>), RollupValues> =
        groups.into_iter().map(|g| ((g.hour_ms, g.dims), g.values)).collect();
    assert_eq!(got.len(), n, "{what}: one row per group ({q:?})");
    assert_eq!(got, brute_force_query(records, q), "{what}: {q:?} reads {:?}", q.source());
}

/// The stored rollups of a project, keyed like [`brute_force`].
pub async fn stored_rollups(analytics: &dyn AnalyticsStore, project: &str) -> BTreeMap<RollupKey, RollupValues> {
    let rows = analytics
        .rollup_rows(NOW - 400 * MS_PER_DAY, NOW + MS_PER_DAY, Some(project.to_owned()))
        .await
        .expect("rollup rows");
    let n = rows.len();
    let map: BTreeMap<_, _> = rows.into_iter().collect();
    assert_eq!(map.len(), n, "one rollup row per group");
    map
}

/// Every ledger row of a project.
pub async fn ledger_rows(ledger: &dyn Ledger, project: &str) -> Vec<UsageRecord> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let page = ledger
            .query(UsageQuery {
                project_id: Some(project.to_owned()),
                cursor: cursor.take(),
                limit: 500,
                ..UsageQuery::default()
            })
            .await
            .expect("query");
        let full = page.len() == 500;
        cursor = page.last().map(|r| (r.ts_ms, r.id.clone()));
        all.extend(page);
        if !full {
            return all;
        }
    }
}

/// Appended records are rolled up; a replayed id changes nothing.
pub async fn rollups_follow_appends_and_ignore_replays(ledger: &dyn Ledger, analytics: &dyn AnalyticsStore) {
    let project = "an-conf-append";
    let mut rng = Rng::new(1);
    let records: Vec<UsageRecord> =
        (0..300).map(|i| random_record(&mut rng, format!("an-append-{i}"), project, 30)).collect();
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let expected = brute_force(&records);
    assert_eq!(stored_rollups(analytics, project).await, expected);
    // Replays with other values, through both paths: nothing moves.
    for r in records.iter().take(50) {
        ledger.append(UsageRecord { cost_micros: 1_000_000, status: 500, ..r.clone() });
    }
    ledger.flush().await.expect("flush");
    let replays: Vec<UsageRecord> =
        records.iter().skip(50).take(20).map(|r| UsageRecord { requests: 99, ..r.clone() }).collect();
    let fresh = ledger.append_new(replays).await.expect("append_new");
    assert!(fresh.iter().all(|f| !f), "every one a replay");
    assert_eq!(stored_rollups(analytics, project).await, expected);
    // append_new of new records is rolled up too.
    let more: Vec<UsageRecord> =
        (0..40).map(|i| random_record(&mut rng, format!("an-append-new-{i}"), project, 30)).collect();
    let fresh = ledger.append_new(more.clone()).await.expect("append_new");
    assert!(fresh.iter().all(|f| *f));
    let all: Vec<UsageRecord> = records.into_iter().chain(more).collect();
    assert_eq!(stored_rollups(analytics, project).await, brute_force(&all));
}

/// Grouped queries add rollups up per hour and dimension, with filters.
pub async fn grouped_queries_sum_rollups(ledger: &dyn Ledger, analytics: &dyn AnalyticsStore) {
    let project = "an-conf-groups";
    let mut rng = Rng::new(2);
    let records: Vec<UsageRecord> =
        (0..400).map(|i| random_record(&mut rng, format!("an-groups-{i}"), project, 48)).collect();
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let query = |by_hour: bool, group_by: Vec<Dimension>, filter: RollupFilter| RollupQuery {
        from_ms: hour_of(NOW) - 48 * MS_PER_HOUR,
        to_ms: hour_of(NOW) + MS_PER_HOUR,
        filter: RollupFilter { project_id: Some(project.to_owned()), ..filter },
        by_hour,
        group_by,
        latency_buckets: true,
        sums: Sums::ALL,
    };
    // Totals.
    let total = analytics.rollup_groups(query(false, vec![], RollupFilter::default())).await.expect("totals");
    let mut expected = RollupValues::default();
    records.iter().for_each(|r| expected.add_record(r));
    assert_eq!(total.len(), 1);
    assert_eq!(total[0].values, expected);
    // Without the histogram: the same sums, empty buckets.
    let lean = RollupQuery { latency_buckets: false, ..query(false, vec![], RollupFilter::default()) };
    let lean = analytics.rollup_groups(lean).await.expect("totals without buckets");
    let without = RollupValues { latency_buckets: Default::default(), ..expected };
    assert_eq!(lean[0].values, without);
    // Requests only: the other sums read as zero.
    let requests_only =
        RollupQuery { latency_buckets: false, sums: Sums::REQUESTS, ..query(false, vec![], RollupFilter::default()) };
    let requests_only = analytics.rollup_groups(requests_only).await.expect("requests only");
    assert_eq!(requests_only[0].values, RollupValues { requests: expected.requests, ..RollupValues::default() });
    // Per model, counted only.
    let by_model = analytics
        .rollup_groups(query(false, vec![Dimension::Model], RollupFilter { counted: Some(true), ..Default::default() }))
        .await
        .expect("by model");
    let mut expected: BTreeMap<String, RollupValues> = BTreeMap::new();
    for r in records.iter().filter(|r| r.counted) {
        expected.entry(r.model.clone().unwrap_or_default()).or_default().add_record(r);
    }
    let got: BTreeMap<String, RollupValues> = by_model.into_iter().map(|g| (g.dims[0].clone(), g.values)).collect();
    assert_eq!(got, expected);
    // Per hour and status class, for one key.
    let filter = RollupFilter { key_id: Some("key1".to_owned()), ..Default::default() };
    let groups = analytics
        .rollup_groups(query(true, vec![Dimension::StatusClass, Dimension::Counted], filter))
        .await
        .expect("by hour");
    let mut expected: BTreeMap<(i64, String, String), RollupValues> = BTreeMap::new();
    for r in records.iter().filter(|r| r.key_id == "key1") {
        let class = (r.status / 100).to_string();
        expected.entry((hour_of(r.ts_ms), class, r.counted.to_string())).or_default().add_record(r);
    }
    let got: BTreeMap<(i64, String, String), RollupValues> = groups
        .into_iter()
        .map(|g| ((g.hour_ms.expect("hour"), g.dims[0].clone(), g.dims[1].clone()), g.values))
        .collect();
    assert_eq!(got, expected);
    // A range before every record sums nothing.
    let empty = RollupQuery {
        from_ms: NOW - 400 * MS_PER_DAY,
        to_ms: NOW - 300 * MS_PER_DAY,
        ..query(true, vec![], RollupFilter::default())
    };
    assert!(analytics.rollup_groups(empty).await.expect("empty").is_empty());
}

/// Retention deletes old ledger rows in bounded batches and keeps their rollups;
/// then old rollups go too.
pub async fn retention_deletes_rows_in_batches_and_keeps_rollups(ledger: &dyn Ledger, analytics: &dyn AnalyticsStore) {
    let project = "an-conf-retention";
    let mut rng = Rng::new(3);
    let records: Vec<UsageRecord> =
        (0..200).map(|i| random_record(&mut rng, format!("an-retention-{i}"), project, 72)).collect();
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let before = stored_rollups(analytics, project).await;
    let cutoff = hour_of(NOW) - 36 * MS_PER_HOUR;
    let old = records.iter().filter(|r| r.ts_ms < cutoff).count() as u64;
    assert!(old > 30, "the scenario has old rows");
    let mut deleted = 0;
    let mut calls = 0;
    loop {
        let n = analytics.delete_usage_before(cutoff, 25).await.expect("delete");
        assert!(n <= 25, "a batch is bounded");
        deleted += n;
        calls += 1;
        if n < 25 {
            break;
        }
    }
    assert_eq!(deleted, old);
    assert!(calls >= old / 25);
    let left = ledger_rows(ledger, project).await;
    assert!(left.iter().all(|r| r.ts_ms >= cutoff));
    assert_eq!(left.len() as u64, records.len() as u64 - old);
    assert_eq!(stored_rollups(analytics, project).await, before, "rollups outlive raw rows");
    let removed = analytics.delete_rollups_before(cutoff).await.expect("delete rollups");
    let after = stored_rollups(analytics, project).await;
    assert_eq!(removed as usize, before.len() - after.len());
    assert_eq!(after, brute_force(&left), "what is left equals the ledger left");
}

/// The property test: for each seed, a random sequence of operations on a project of
/// its own, comparing after each step (a) the stored rollups with the brute-force
/// aggregation of every record ever stored, and (b) the rollups of the hours that
/// retention has not reached with the brute-force aggregation of the ledger's rows.
pub async fn random_operations_match_brute_force(store: &mut dyn Reopen, seeds: std::ops::Range<u64>, steps: usize) {
    for seed in seeds {
        let project = format!("an-prop-{seed}");
        let mut rng = Rng::new(seed + 1_000);
        // First copy of every id stored, deleted or not (the rollups keep them all).
        let mut stored: BTreeMap<String, UsageRecord> = BTreeMap::new();
        let mut deleted: BTreeSet<String> = BTreeSet::new();
        let mut cutoff = i64::MIN;
        let mut next_id = 0;
        let mut fresh = |rng: &mut Rng| {
            next_id += 1;
            random_record(rng, format!("an-prop-{seed}-{next_id}"), &project, 96)
        };
        for step in 0..steps {
            let (ledger, analytics) = store.parts();
            let live: Vec<String> = stored.keys().filter(|id| !deleted.contains(*id)).cloned().collect();
            match rng.below(10) {
                0..=3 => {
                    for _ in 0..1 + rng.below(60) {
                        let r = fresh(&mut rng);
                        if r.ts_ms >= cutoff {
                            stored.entry(r.id.clone()).or_insert_with(|| r.clone());
                            ledger.append(r);
                        }
                    }
                }
                4 | 5 if !live.is_empty() => {
                    // Replays of stored ids with other values, mixed with new records.
                    let mut batch = Vec::new();
                    for _ in 0..1 + rng.below(20) {
                        let id = rng.pick(&live).clone();
                        let original = &stored[&id];
                        batch.push(UsageRecord { cost_micros: 7, latency_ms: 1, requests: 5, ..original.clone() });
                    }
                    let new = fresh(&mut rng);
                    let is_new = new.ts_ms >= cutoff && !stored.contains_key(&new.id);
                    if is_new {
                        batch.push(new.clone());
                    }
                    if rng.below(2) == 0 {
                        let answers = ledger.append_new(batch).await.expect("append_new");
                        let expected_new = answers.iter().filter(|a| **a).count();
                        assert_eq!(expected_new, usize::from(is_new), "seed {seed} step {step}: replays are not new");
                    } else {
                        for r in batch {
                            ledger.append(r);
                        }
                    }
                    if is_new {
                        stored.insert(new.id.clone(), new);
                    }
                }
                6 => {
                    store.reopen().await;
                    continue;
                }
                7 => {
                    ledger.flush().await.expect("flush");
                    cutoff = cutoff.max(hour_of(NOW) - (96 - rng.below(60) as i64) * MS_PER_HOUR);
                    let batch = 1 + rng.below(40) as usize;
                    while analytics.delete_usage_before(cutoff, batch).await.expect("retention") == batch as u64 {}
                    for (id, r) in &stored {
                        if r.ts_ms < cutoff {
                            deleted.insert(id.clone());
                        }
                    }
                }
                _ => {}
            }
            ledger.flush().await.expect("flush");
            let all: Vec<UsageRecord> = stored.values().cloned().collect();
            let got = stored_rollups(&*analytics, &project).await;
            assert_eq!(got, brute_force(&all), "seed {seed} step {step}: rollups equal every record stored");
            let rows = ledger_rows(&*ledger, &project).await;
            assert_eq!(rows.len(), stored.len() - deleted.len(), "seed {seed} step {step}: ledger rows");
            // Grouped queries, whichever table answers them, equal the records'
            // brute-force aggregation (the projections never drift).
            for _ in 0..3 {
                let q = random_query(&mut rng, &project, 96);
                assert_query_matches(&*analytics, &all, &q, &format!("seed {seed} step {step}")).await;
            }
            let retained: BTreeMap<_, _> = got.into_iter().filter(|(k, _)| k.hour_ms >= cutoff).collect();
            let from_ledger: BTreeMap<_, _> =
                brute_force(&rows).into_iter().filter(|(k, _)| k.hour_ms >= cutoff).collect();
            assert_eq!(retained, from_ledger, "seed {seed} step {step}: rollups equal the ledger's rows");
        }
    }
}
