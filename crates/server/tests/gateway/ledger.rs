//! The ledger under pressure: refusals aggregated per key and minute, the queue depth
//! in `/health`, and commits that fail or stall turning the answer into an error
//! (issue 10, items 16 and 19).

use serde_json::{Value, json};
const DB_FILE: &str = "tollgate.db";

use crate::helpers::*;

fn rows(usage: &Value) -> Vec<Value> {
    usage["data"].as_array().expect("rows").clone()
}

/// A key looping on 429s adds one ledger row per minute that counts them, not one
/// row each; the row is written on graceful shutdown; `/health` shows the queue.
#[tokio::test]
async fn a_key_looping_on_refusals_adds_one_counting_row_a_minute_kept_over_shutdown() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for _ in 0..10 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    for _ in 0..40 {
        assert_eq!(app.chat(&key).await.status, 429);
    }
    let verify = app.verify(json!({ "key": key, "cost": 1 })).await;
    assert_eq!(verify.body["code"], "RATE_LIMITED", "{:?}", verify.body);

    let health = reply(app.http.get(app.url("/health"))).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok", "{:?}", health.body);
    let ledger = &health.body["ledger"];
    assert!(ledger["queued"].is_u64() && ledger["written"].is_u64(), "{ledger}");
    assert_eq!(ledger["capacity"], 50_000, "half of ledger_buffer");
    assert_eq!(ledger["dropped"], 0);
    assert!(ledger["open_refusal_rows"].as_u64().expect("open rows") >= 1, "{ledger}");

    // Shut down with the minute's refusal rows still open; restart and look.
    let (data_dir, mock_url, tmp) = app.stop().await;
    let app = spawn_app_with(config(&data_dir, &mock_url)).await;
    let usage = app.usage("?project=acme&limit=1000").await;
    let rows = rows(&usage);
    let answered = rows.iter().filter(|r| r["status"] == 200).count();
    assert_eq!(answered, 10, "{usage}");
    let refusals: Vec<&Value> = rows.iter().filter(|r| r["status"] == 429).collect();
    assert!(
        !refusals.is_empty() && refusals.len() <= 4,
        "one row per endpoint and minute, not {} rows of {} refusals",
        refusals.len(),
        41
    );
    let counted: u64 = refusals.iter().map(|r| r["requests"].as_u64().expect("requests")).sum();
    assert_eq!(counted, 41, "every refusal is counted: {usage}");
    for r in &refusals {
        assert_eq!(r["usage_source"], "refusals", "{r}");
        assert_eq!(r["counted"], false, "{r}");
    }
    drop(tmp);
}

/// Makes every ledger insert fail inside SQLite, as a full disk would.
fn refuse_ledger_writes(app: &TestApp) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(app.data_dir.join(DB_FILE)).expect("open db");
    conn.busy_timeout(std::time::Duration::from_secs(10)).expect("busy timeout");
    conn.execute_batch(
        "CREATE TRIGGER refuse_usage BEFORE INSERT ON usage BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
    )
    .expect("trigger");
    conn
}

fn stream_body() -> Value {
    json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hello" }] })
}

/// With `durability = "sync"`, a commit that fails makes a non-streaming answer a 503
/// in OpenAI's shape saying the upstream answered, and ends a stream with an error
/// event instead of `[DONE]`. Once the ledger recovers both requests are recorded.
#[tokio::test]
async fn a_failed_commit_is_a_503_or_an_error_event_and_the_record_is_kept() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let before = app.chat_body(&key, stream_body(), &[]).await.text().await.expect("stream");
    assert!(before.trim_end().ends_with("data: [DONE]"), "a clean end while commits work: {before}");

    let conn = refuse_ledger_writes(&app);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "usage_not_recorded");
    assert_eq!(r.body["error"]["type"], "api_error");
    let message = r.body["error"]["message"].as_str().expect("message");
    assert!(message.contains("upstream provider answered"), "{message}");

    let response = app.chat_body(&key, stream_body(), &[]).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("stream");
    assert!(!text.contains("[DONE]"), "no clean end: {text}");
    let last = text.trim_end().lines().last().expect("an event");
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").expect("data event")).expect("json");
    assert_eq!(event["error"]["code"], "usage_not_recorded", "{text}");

    conn.execute_batch("DROP TRIGGER refuse_usage;").expect("drop trigger");
    let usage = app.usage("?project=acme").await;
    let statuses: Vec<u64> = rows(&usage).iter().filter_map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [200, 200, 200], "the records were kept and written after recovery: {usage}");
}

/// A store that stalls (its write lock held, as a frozen database would) bounds how
/// long a response waits for its commit: `commit_timeout_ms`, then a 503.
#[tokio::test]
async fn a_stalled_commit_is_bounded_by_commit_timeout() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.commit_timeout_ms = 200;
    let app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    let key = app.project_key("acme", "pro").await;
    assert_eq!(app.chat(&key).await.status, 200);

    let conn = rusqlite::Connection::open(app.data_dir.join(DB_FILE)).expect("open db");
    conn.execute_batch("BEGIN IMMEDIATE;").expect("hold the write lock");
    // The client gives up after 4 s, below the store's own 5 s busy timeout: only
    // `commit_timeout_ms` can answer it in time (unbounded, the answer waited for the
    // writer's attempts, 15 s and more).
    let request = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .timeout(std::time::Duration::from_secs(4))
        .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] }));
    let r = reply(request).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "usage_not_recorded");
    let verify = app.verify(json!({ "key": key, "cost": 1 })).await;
    assert_eq!(verify.status, 503, "{:?}", verify.body);
    conn.execute_batch("ROLLBACK;").expect("release");

    let usage = app.usage("?project=acme").await;
    assert_eq!(rows(&usage).len(), 3, "every request is in the ledger after the stall: {usage}");
    assert_eq!(app.chat(&key).await.status, 200);
}

/// Back-pressure: while the ledger's queue is full (its writer stalled), a new request
/// waits for room, at most `commit_timeout_ms`, and is then refused with a 503
/// `ledger_backlog` before anything is forwarded or charged; `/health` says
/// `degraded`. The answered requests' records are all kept and written afterwards.
#[tokio::test]
async fn a_full_ledger_queue_holds_new_requests_back_and_drops_no_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.durability = tollgate_server::config::Durability::Async;
    raw.commit_timeout_ms = 200;
    raw.ledger_buffer = 6; // back-pressure at 3 records waiting
    let app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    let key = app.project_key("acme", "pro").await;

    let conn = rusqlite::Connection::open(app.data_dir.join(DB_FILE)).expect("open db");
    conn.execute_batch("BEGIN IMMEDIATE;").expect("stall the writer");
    for i in 0..3 {
        let r = app.chat(&key).await;
        assert_eq!(r.status, 200, "request {i} fits: {:?}", r.body);
    }
    app.settled().await;
    let health = reply(app.http.get(app.url("/health"))).await;
    assert_eq!(health.body["status"], "degraded", "{:?}", health.body);
    assert_eq!(health.body["ledger"]["queued"], 3, "{:?}", health.body);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "ledger_backlog");
    conn.execute_batch("ROLLBACK;").expect("release");

    let usage = app.usage("?project=acme").await;
    assert_eq!(rows(&usage).len(), 3, "every answered request is recorded, the refused one is not: {usage}");
    assert_eq!(app.state.ledger.queue().dropped, 0);
    assert_eq!(app.chat(&key).await.status, 200, "room again");
}
