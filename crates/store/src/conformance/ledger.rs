//! Ledger scenarios: append and flush, idempotence by id, filtered and paginated
//! queries (newest first), and the oldest-first scan used to rebuild counters.
//!
//! Every scenario writes under project ids of its own and filters by them, so they can
//! share one ledger. Durability across a restart is left to each backend's own tests.

use tollgate_core::{UsageQuery, UsageRecord, UsageSource};

use super::NOW;
use crate::{Ledger, TOTALS_PAGE, TotalsQuery};

fn record(id: &str, ts_ms: i64, project_id: &str, key_id: &str) -> UsageRecord {
    UsageRecord {
        id: id.to_owned(),
        ts_ms,
        project_id: project_id.to_owned(),
        key_id: key_id.to_owned(),
        endpoint: "chat.completions".to_owned(),
        model: Some("gpt-4o-mini".to_owned()),
        status: 200,
        counted: true,
        requests: 1,
        prompt_tokens: 120,
        completion_tokens: 30,
        cost_micros: 42,
        latency_ms: 850,
        provider: "openai".to_owned(),
        cached_tokens: 20,
        uncached_cost_micros: 50,
        usage_source: UsageSource::Reported,
        price_version: Some("2026-11-01".to_owned()),
        client_ip: Some("203.0.113.7".to_owned()),
        anonymous_id: Some("anon-1".to_owned()),
        price_estimated: false,
        upstream_request_id: Some(format!("req_upstream_{id}")),
    }
}

fn ids(records: &[UsageRecord]) -> Vec<&str> {
    records.iter().map(|r| r.id.as_str()).collect()
}

async fn query(ledger: &dyn Ledger, query: UsageQuery) -> Vec<UsageRecord> {
    ledger.query(query).await.expect("query")
}

fn in_project(project: &str, limit: usize) -> UsageQuery {
    UsageQuery { project_id: Some(project.to_owned()), limit, ..UsageQuery::default() }
}

/// Appended records are found after a flush, every field intact, newest first.
pub async fn append_flush_query(ledger: &dyn Ledger) {
    let project = "conf-ledger-basic";
    let first = record("conf-basic-1", NOW, project, "confBasicKey");
    let second = UsageRecord {
        id: "conf-basic-2".to_owned(),
        ts_ms: NOW + 1,
        endpoint: "embeddings".to_owned(),
        model: None,
        status: 429,
        counted: false,
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_micros: 0,
        latency_ms: 3,
        price_estimated: true,
        ..first.clone()
    };
    ledger.append(first.clone());
    ledger.append(second.clone());
    ledger.flush().await.expect("flush");
    assert_eq!(query(ledger, in_project(project, 10)).await, vec![second, first]);
    ledger.flush().await.expect("a flush with nothing queued");
}

/// The same id appended twice is stored once; the first one wins.
pub async fn append_is_idempotent(ledger: &dyn Ledger) {
    let project = "conf-ledger-idem";
    let original = record("conf-idem-1", NOW, project, "confIdemKey1");
    let retry = UsageRecord { status: 502, latency_ms: 1, ..original.clone() };
    ledger.append(original.clone());
    ledger.append(retry.clone());
    ledger.flush().await.expect("flush");
    assert_eq!(query(ledger, in_project(project, 10)).await, vec![original.clone()]);

    ledger.append(retry);
    ledger.flush().await.expect("flush again");
    assert_eq!(
        query(ledger, in_project(project, 10)).await,
        vec![original],
        "an id appended after its first copy is durable is still ignored"
    );
}

/// Filters (project, key, `from_ms` inclusive, `to_ms` exclusive), order (`ts_ms`
/// then `id`, both descending), `limit`, and the cursor meaning "strictly older than
/// this (ts, id) pair".
pub async fn query_filters_order_and_pages(ledger: &dyn Ledger) {
    let (project, other_project) = ("conf-ledger-q", "conf-ledger-q-other");
    let t = NOW;
    let a1 = record("conf-q-a1", t, project, "confQKeyA");
    let a2 = record("conf-q-a2", t + 1_000, project, "confQKeyA");
    // Same instant as a2: the id breaks the tie ("conf-q-b1" > "conf-q-a2").
    let b1 = record("conf-q-b1", t + 1_000, project, "confQKeyB");
    let a3 = record("conf-q-a3", t + 2_000, project, "confQKeyA");
    let b2 = record("conf-q-b2", t + 3_000, project, "confQKeyB");
    let elsewhere = record("conf-q-o1", t + 1_000, other_project, "confQKeyO");
    // Appended out of order on purpose.
    for r in [&b1, &a3, &elsewhere, &a1, &b2, &a2] {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");

    let everything = query(ledger, in_project(project, 100)).await;
    assert_eq!(ids(&everything), ["conf-q-b2", "conf-q-a3", "conf-q-b1", "conf-q-a2", "conf-q-a1"]);
    assert_eq!(everything[0], b2);

    let by_key = UsageQuery { key_id: Some("confQKeyA".to_owned()), limit: 100, ..UsageQuery::default() };
    assert_eq!(ids(&query(ledger, by_key).await), ["conf-q-a3", "conf-q-a2", "conf-q-a1"]);
    let both = UsageQuery { key_id: Some("confQKeyB".to_owned()), ..in_project(project, 100) };
    assert_eq!(ids(&query(ledger, both).await), ["conf-q-b2", "conf-q-b1"]);
    let wrong = UsageQuery { key_id: Some("confQKeyA".to_owned()), ..in_project(other_project, 100) };
    assert!(query(ledger, wrong).await.is_empty(), "filters combine with AND");

    let from = UsageQuery { from_ms: Some(t + 1_000), ..in_project(project, 100) };
    assert_eq!(ids(&query(ledger, from).await), ["conf-q-b2", "conf-q-a3", "conf-q-b1", "conf-q-a2"]);
    let to = UsageQuery { to_ms: Some(t + 3_000), ..in_project(project, 100) };
    assert_eq!(ids(&query(ledger, to).await), ["conf-q-a3", "conf-q-b1", "conf-q-a2", "conf-q-a1"]);
    let range = UsageQuery { from_ms: Some(t + 1_000), to_ms: Some(t + 2_000), ..in_project(project, 100) };
    assert_eq!(ids(&query(ledger, range).await), ["conf-q-b1", "conf-q-a2"]);

    assert_eq!(ids(&query(ledger, in_project(project, 2)).await), ["conf-q-b2", "conf-q-a3"]);
    let after = |ts: i64, id: &str, limit: usize| UsageQuery {
        cursor: Some((ts, id.to_owned())),
        ..in_project(project, limit)
    };
    assert_eq!(ids(&query(ledger, after(a3.ts_ms, &a3.id, 2)).await), ["conf-q-b1", "conf-q-a2"]);
    // Same timestamp, smaller id only.
    assert_eq!(ids(&query(ledger, after(b1.ts_ms, &b1.id, 10)).await), ["conf-q-a2", "conf-q-a1"]);
    assert_eq!(ids(&query(ledger, after(a2.ts_ms, &a2.id, 10)).await), ["conf-q-a1"]);
    assert!(query(ledger, after(a1.ts_ms, &a1.id, 10)).await.is_empty());

    // Walking page by page visits every record once, in order.
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = query(ledger, UsageQuery { cursor: cursor.clone(), ..in_project(project, 2) }).await;
        assert!(page.len() <= 2, "limit respected");
        let Some(last) = page.last() else { break };
        cursor = Some((last.ts_ms, last.id.clone()));
        walked.extend(page);
    }
    assert_eq!(walked, everything);
}

/// `records_since` returns every record at or after the instant, oldest first.
pub async fn records_since_is_oldest_first(ledger: &dyn Ledger) {
    let project = "conf-ledger-since";
    let t = NOW + 10 * 86_400_000;
    let records = [
        record("conf-since-0", t - 1, project, "confSinceKey"),
        record("conf-since-2", t, project, "confSinceKey"),
        record("conf-since-1", t, project, "confSinceKey"),
        record("conf-since-3", t + 5, project, "confSinceKey"),
    ];
    for r in records.iter().rev() {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let since: Vec<UsageRecord> =
        ledger.records_since(t).await.expect("records_since").into_iter().filter(|r| r.project_id == project).collect();
    assert_eq!(ids(&since), ["conf-since-1", "conf-since-2", "conf-since-3"]);
    assert_eq!(since[2], records[3]);
}

/// Thousands of appends (more than one writer batch) are all durable after one flush.
pub async fn many_appends_then_flush(ledger: &dyn Ledger) {
    const COUNT: usize = 2_500;
    let project = "conf-ledger-many";
    for i in 0..COUNT {
        let ts = NOW + i64::try_from(i).unwrap_or(i64::MAX);
        ledger.append(record(&format!("conf-many-{i:05}"), ts, project, "confManyKey"));
    }
    ledger.flush().await.expect("flush");
    let found = query(ledger, in_project(project, COUNT * 2)).await;
    assert_eq!(found.len(), COUNT);
    assert_eq!(found[0].id, format!("conf-many-{:05}", COUNT - 1));
}

/// `append_new` stores durably and tells replays apart: the same id twice is new
/// once, and the first record stored wins.
pub async fn append_new_reports_replays(ledger: &dyn Ledger) {
    let project = "conf-ledger-new";
    let a = record("conf-new-a", NOW, project, "confNewKey01");
    let b = record("conf-new-b", NOW + 1, project, "confNewKey01");
    let fresh = ledger.append_new(vec![a.clone(), b.clone()]).await.expect("append_new");
    assert_eq!(fresh, vec![true, true]);
    let mut b_again = b.clone();
    b_again.prompt_tokens = 999_999;
    let c = record("conf-new-c", NOW + 2, project, "confNewKey01");
    let fresh = ledger.append_new(vec![b_again, c]).await.expect("append_new again");
    assert_eq!(fresh, vec![false, true], "a replayed id is not new");
    // Durable at return: no flush needed before reading.
    let stored = query(ledger, in_project(project, 10)).await;
    assert_eq!(ids(&stored), vec!["conf-new-c", "conf-new-b", "conf-new-a"]);
    assert_eq!(stored[1].prompt_tokens, b.prompt_tokens, "the first record stored wins");
}

/// Refused requests become one row per key, endpoint, status and minute, counting
/// them (`requests`), marked `usage_source: "refusals"` and not counted; written by
/// `flush_refusals` (and when the minute ends, or on close).
pub async fn refusals_are_aggregated_per_key_and_minute(ledger: &dyn Ledger) {
    let project = "conf-ledger-refusals";
    let refusal = |i: i64, key: &str, ts_ms: i64| UsageRecord {
        status: 429,
        counted: false,
        requests: 1,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_micros: 0,
        cached_tokens: 0,
        uncached_cost_micros: 0,
        usage_source: UsageSource::None,
        ..record(&format!("conf-refusal-{key}-{i}"), ts_ms, project, key)
    };
    let minute = NOW - NOW.rem_euclid(60_000);
    for i in 0..300 {
        ledger.record_refusal(refusal(i, "confLoopKey", minute + i * 100));
    }
    ledger.record_refusal(refusal(0, "confOtherKey", minute + 5));
    ledger.record_refusal(refusal(1, "confLoopKey", minute + 60_000));
    ledger.flush_refusals().await.expect("flush refusals");
    let rows = query(ledger, in_project(project, 10)).await;
    let mut seen: Vec<_> = rows.iter().map(|r| (r.key_id.as_str(), r.ts_ms, r.requests)).collect();
    seen.sort();
    assert_eq!(
        seen,
        [("confLoopKey", minute, 300), ("confLoopKey", minute + 60_000, 1), ("confOtherKey", minute + 5, 1)],
        "one row per key and minute: {rows:?}"
    );
    for row in &rows {
        assert_eq!(row.usage_source, UsageSource::Refusals, "{row:?}");
        assert!(!row.counted && row.status == 429 && row.cost_micros == 0, "{row:?}");
        assert!(row.id.starts_with(crate::refusals::ID_PREFIX), "{row:?}");
        assert_eq!((row.client_ip.as_deref(), row.anonymous_id.as_deref()), (None, None));
    }
    assert_eq!(ledger.queue().open_refusal_rows, 0);
}

/// Every page of [`Ledger::usage_totals`], checked for size and order.
async fn all_totals(ledger: &dyn Ledger, query: TotalsQuery) -> Vec<UsageRecord> {
    let mut pages = ledger.usage_totals(query).await.expect("usage totals");
    let mut all: Vec<UsageRecord> = Vec::new();
    while let Some(page) = pages.recv().await {
        let page = page.expect("a page of totals");
        assert!(!page.is_empty() && page.len() <= TOTALS_PAGE, "a page holds 1..={TOTALS_PAGE}, not {}", page.len());
        all.extend(page);
    }
    assert!(all.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms), "oldest bucket first");
    all
}

/// What the limits look at in a total, with its bucket.
type GroupKey = (i64, String, String, Option<String>, String, Option<String>, Option<String>);

fn group_of(record: &UsageRecord, bucket: i64) -> GroupKey {
    (
        bucket,
        record.key_id.clone(),
        record.provider.clone(),
        record.model.clone(),
        record.endpoint.clone(),
        record.client_ip.clone(),
        record.anonymous_id.clone(),
    )
}

/// The store sums counted usage per what limits look at and per bucket (per second
/// in the last two minutes, per minute in the last two hours, per quarter hour
/// before, nothing before the month), exactly as summing the records would, oldest
/// bucket first, in pages of at most `TOTALS_PAGE` (a project with more groups than
/// a page spans pages).
pub async fn usage_totals_sum_counted_usage_per_bucket(ledger: &dyn Ledger) {
    let project = "conf-ledger-totals";
    let query = TotalsQuery::for_replay(NOW);
    let month = tollgate_core::calendar::month_start(NOW);
    let times = [
        NOW,
        NOW - 400,
        NOW - 1_000,
        NOW - 1_001,
        NOW - 90_000,
        NOW - 119_999,
        NOW - 3_600_000,
        NOW - 7_000_000,
        NOW - 7_300_000,
        NOW - 86_400_000,
        month + 1,
        month,
        month - 1,
    ];
    let mut records = Vec::new();
    for (i, ts) in times.iter().enumerate() {
        for variant in 0..4u64 {
            let mut r = record(&format!("conf-totals-{i}-{variant}"), *ts, project, ["confTotA", "confTotB"][i % 2]);
            r.requests = 1 + variant;
            r.prompt_tokens = 100 * (i as u64 + 1) + variant;
            r.completion_tokens = 7 * variant;
            r.cost_micros = 1_000 + variant;
            match variant {
                1 => r.anonymous_id = None,
                2 => (r.client_ip, r.model) = (None, None),
                3 => r.endpoint = "embeddings".to_owned(),
                _ => {}
            }
            records.push(r);
        }
        let mut refused = record(&format!("conf-totals-{i}-refused"), *ts, project, "confTotA");
        refused.counted = false;
        records.push(refused);
    }
    // More groups than one page, all in one bucket.
    let wide = "conf-ledger-totals-wide";
    for i in 0..TOTALS_PAGE + 50 {
        records.push(record(&format!("conf-totals-wide-{i}"), NOW - 5_000_000, wide, &format!("confWide{i:05}")));
    }
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");

    let mut expected: std::collections::BTreeMap<(String, GroupKey), [u64; 4]> = Default::default();
    for r in records.iter().filter(|r| r.counted && r.ts_ms >= query.since_ms) {
        let sums = expected.entry((r.project_id.clone(), group_of(r, query.bucket_of(r.ts_ms)))).or_default();
        for (sum, add) in sums.iter_mut().zip([r.requests, r.prompt_tokens, r.completion_tokens, r.cost_micros]) {
            *sum += add;
        }
    }
    let mut found: std::collections::BTreeMap<(String, GroupKey), [u64; 4]> = Default::default();
    for total in all_totals(ledger, query).await.into_iter().filter(|t| t.project_id == project || t.project_id == wide)
    {
        assert!(total.counted && total.id.is_empty(), "{total:?}");
        let sums = [total.requests, total.prompt_tokens, total.completion_tokens, total.cost_micros];
        let previous = found.insert((total.project_id.clone(), group_of(&total, total.ts_ms)), sums);
        assert!(previous.is_none(), "one total per group and bucket: {total:?}");
    }
    assert_eq!(found, expected);
    // Buckets nest: the second and the minute a record falls in are kept.
    assert_eq!(TotalsQuery::for_replay(NOW).bucket_of(NOW - 1_001), NOW - 2_000);
    assert_eq!(TotalsQuery::for_replay(NOW).bucket_of(NOW - 300_000) % 60_000, 0);
}

/// An attach reads one visitor's counted records in one project, oldest first, a
/// page at a time: not another visitor's, not another project's, not refusals, not
/// before `since`.
pub async fn anonymous_records_are_one_visitors_in_pages(ledger: &dyn Ledger) {
    let project = "conf-ledger-anon";
    let mut mine = Vec::new();
    let mut records = Vec::new();
    for (i, ts) in [NOW - 50, NOW - 40, NOW - 40, NOW - 40, NOW - 10].into_iter().enumerate() {
        let mut r = record(&format!("conf-anon-{i}"), ts, project, "confAnonKey");
        r.anonymous_id = Some("visitor-a".to_owned());
        mine.push(r.id.clone());
        records.push(r);
    }
    let mut other_visitor = record("conf-anon-other", NOW - 30, project, "confAnonKey");
    other_visitor.anonymous_id = Some("visitor-b".to_owned());
    let mut other_project = record("conf-anon-elsewhere", NOW - 30, "conf-ledger-anon-2", "confAnonKey");
    other_project.anonymous_id = Some("visitor-a".to_owned());
    let mut refused = record("conf-anon-refused", NOW - 30, project, "confAnonKey");
    (refused.anonymous_id, refused.counted) = (Some("visitor-a".to_owned()), false);
    let mut early = record("conf-anon-early", NOW - 1_000, project, "confAnonKey");
    early.anonymous_id = Some("visitor-a".to_owned());
    records.extend([other_visitor, other_project, refused, early]);
    for r in &records {
        ledger.append(r.clone());
    }
    ledger.flush().await.expect("flush");
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = ledger.anonymous_records(project, "visitor-a", NOW - 100, after.take(), 2).await.expect("page");
        assert!(page.len() <= 2);
        let full = page.len() == 2;
        after = page.last().map(|r| (r.ts_ms, r.id.clone()));
        seen.extend(page.into_iter().map(|r| r.id));
        if !full {
            break;
        }
    }
    assert_eq!(seen, mine, "oldest first (time, then id), every page after the last");
}
