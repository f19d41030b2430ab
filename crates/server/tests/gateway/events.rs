//! The usage events sink against the real nats-server (JetStream): every ledger
//! record reaches the stream exactly once with its fields; a NATS that is down leaves
//! the gateway serving with the lag visible, and everything is published once it is
//! up; across `kill -9` and restarts every record ends in the stream and the copies
//! published again are dropped by their `Nats-Msg-Id`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_core::UsageRecord;
use tollgate_server::config::{Config, RawConfig, Secret};

#[path = "../support/jetstream.rs"]
mod jetstream;

use jetstream::{eventually, message_count, nats_url, read_stream, require_jetstream, unique_stream};

use crate::helpers::*;

fn with_events(mut raw: RawConfig, url: &str, stream: &str, subject: &str) -> RawConfig {
    raw.events.nats_url = Some(Secret::new(url));
    raw.events.stream = stream.to_owned();
    raw.events.subject = subject.to_owned();
    raw.events.poll_interval_ms = 50;
    raw.events.batch = 7;
    raw
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app.http.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Every record of the ledger, after the settlements and the refusal rows are written.
async fn ledger_records(app: &TestApp) -> Vec<UsageRecord> {
    app.settled().await;
    app.state.ledger.flush_refusals().await.expect("flush");
    app.state.ledger.records_since(0).await.expect("ledger")
}

/// Issue 18: N requests (answers and refusals) through the embedded gateway; every
/// ledger record appears in the stream exactly once, in commit order, with its fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ledger_record_is_published_once_with_its_fields() {
    let url = nats_url();
    let js = require_jetstream(&url).await;
    let (stream, subject) = unique_stream();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let raw = with_events(raw_config(tmp.path(), &mock), &url, &stream, &subject);
    let mut app = spawn_app_with(Config::from_raw(raw).expect("config")).await;
    app.keep_dir(tmp);
    let paid = app.project_key("acme", "enterprise").await;
    let (free, _) = app.create_key(json!({ "project": "acme", "plan": "free" })).await;
    for _ in 0..20 {
        assert_eq!(app.chat(&paid).await.status, 200);
    }
    // The free plan allows 10 a minute: two refusals, folded into one refusal row.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..12).map(|_| app.chat(&free))).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    let records = ledger_records(&app).await;
    let refusal_rows: Vec<&UsageRecord> =
        records.iter().filter(|r| r.usage_source == tollgate_core::UsageSource::Refusals).collect();
    assert_eq!(refusal_rows.iter().map(|r| r.requests).sum::<u64>(), 2, "the refusal rows count both refusals");
    assert_eq!(records.len(), 30 + refusal_rows.len(), "20 + 10 answers and the refusal row(s)");
    eventually(Duration::from_secs(60), "every record in the stream", || async {
        message_count(&js, &stream).await >= records.len() as u64
    })
    .await;
    let got = read_stream(&js, &stream).await;
    assert_eq!(got.messages, records.len() as u64, "one message per record");
    for r in &records {
        assert_eq!(got.ids.get(&r.id), Some(&1), "{} exactly once", r.id);
        let body = &got.bodies[&r.id];
        assert_eq!(body["schema"], "tollgate.usage.v1");
        assert_eq!(body["project"], r.project_id.as_str());
        assert_eq!(body["key"], r.key_id.as_str());
        assert_eq!(body["endpoint"], r.endpoint.as_str());
        assert_eq!(body["model"].as_str(), r.model.as_deref());
        assert_eq!(body["status"], r.status);
        assert_eq!(body["counted"], r.counted);
        assert_eq!(body["requests"], r.requests);
        assert_eq!(body["prompt_tokens"], r.prompt_tokens);
        assert_eq!(body["completion_tokens"], r.completion_tokens);
        assert_eq!(body["cost_micros"], r.cost_micros);
        assert_eq!(body["latency_ms"], r.latency_ms);
        assert_eq!(body["usage_source"], r.usage_source.as_str());
        assert_eq!(body["ts_ms"], r.ts_ms);
        assert_eq!(body["time"], tollgate_core::calendar::to_rfc3339(r.ts_ms));
    }
    assert!(records.iter().any(|r| r.status == 200 && r.cost_micros > 0), "answers carry their cost");
    for refusal in &refusal_rows {
        assert_eq!(got.bodies[&refusal.id]["usage_source"], "refusals");
        assert_eq!(got.bodies[&refusal.id]["status"], 429);
    }
    let seqs: Vec<i64> = got.order.iter().map(|id| got.bodies[id]["ledger_seq"].as_i64().expect("seq")).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "published in commit order: {seqs:?}");
    eventually(Duration::from_secs(30), "the lag back to zero", || async {
        metric(&app, "tollgate_events_lag_records").await == 0
    })
    .await;
    assert_eq!(metric(&app, "tollgate_events_published_total").await, records.len() as u64);
    assert_eq!(metric(&app, "tollgate_events_duplicates_total").await, 0);
    let health = app.admin(reqwest::Method::GET, "/health/detailed", None).await;
    assert_eq!(health.body["events"]["active"], true, "{}", health.body);
    assert_eq!(health.body["events"]["stream"], stream.as_str());
    assert!(!health.body.to_string().contains("nats://"), "the NATS URL is never shown");
    app.stop().await;
    jetstream::delete_stream(&js, &stream).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// NATS down: the gateway keeps answering, the lag and the failures show in
/// `/metrics`; once a nats-server comes up on that address, the sink (retrying with
/// back-off) publishes everything. That server wants a user and password, given in
/// the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_keeps_the_gateway_serving_and_everything_is_published_once_it_is_up() {
    let port = free_port();
    let url = format!("nats://tollgate:s3cret-pw@127.0.0.1:{port}");
    let (stream, subject) = unique_stream();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let raw = with_events(raw_config(tmp.path(), &mock), &url, &stream, &subject);
    let app = spawn_app_with(Config::from_raw(raw).expect("config")).await;
    let key = app.project_key("acme", "enterprise").await;
    for _ in 0..9 {
        assert_eq!(app.chat(&key).await.status, 200, "served while NATS is down");
    }
    let records = ledger_records(&app).await;
    assert_eq!(records.len(), 9);
    eventually(Duration::from_secs(30), "the lag and the failures visible", || async {
        metric(&app, "tollgate_events_lag_records").await == 9
            && metric(&app, "tollgate_events_failures_total").await >= 1
    })
    .await;
    let health = app.admin(reqwest::Method::GET, "/health/detailed", None).await;
    assert_eq!(health.body["events"]["connected"], false, "{}", health.body);
    assert!(health.body["events"]["last_error"].is_string(), "{}", health.body);
    assert!(!health.body.to_string().contains("s3cret-pw"), "the password is never shown");

    let store = tempfile::tempdir().expect("jetstream dir");
    let mut server = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--user", "tollgate", "--pass", "s3cret-pw", "-js", "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server must be installed (scripts/test.sh installs it)");
    let js = require_jetstream_within(&url, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(90), "everything published after NATS came up", || async {
        message_count(&js, &stream).await == 9
    })
    .await;
    let got = read_stream(&js, &stream).await;
    let ids: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got.ids.keys().map(String::as_str).collect::<HashSet<_>>(), ids);
    eventually(Duration::from_secs(30), "the lag back to zero", || async {
        metric(&app, "tollgate_events_lag_records").await == 0
    })
    .await;
    app.stop().await;
    let _ = server.kill();
    let _ = server.wait();
}

/// The test's own nats-server (user `tollgate`), once it accepts connections.
async fn require_jetstream_within(url: &str, within: Duration) -> async_nats::jetstream::Context {
    let url = url.replace("tollgate:s3cret-pw@", "");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let options = async_nats::ConnectOptions::with_user_and_password("tollgate".into(), "s3cret-pw".into());
        let last = match options.connect(url.as_str()).await {
            Ok(client) => {
                let js = async_nats::jetstream::new(client);
                match js.get_stream("TGTEST_NO_SUCH_STREAM").await {
                    Ok(_) => return js,
                    Err(e) if e.to_string().contains("not found") => return js,
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "the test's nats-server did not start within {within:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `tollgate serve` with the sink on, started from its log line (not a sleep).
async fn start_process(data_dir: &std::path::Path, port: u16, mock: &str, events: (&str, &str, &str)) -> Child {
    let (url, stream, subject) = events;
    let mut command = serve_command(data_dir, port, mock);
    command
        .env("TOLLGATE_EVENTS__NATS_URL", url)
        .env("TOLLGATE_EVENTS__STREAM", stream)
        .env("TOLLGATE_EVENTS__SUBJECT", subject)
        .env("TOLLGATE_EVENTS__BATCH", "5")
        .env("TOLLGATE_EVENTS__POLL_INTERVAL_MS", "20");
    spawn_until_listening(&mut command).await
}

/// Every ledger id, through the usage API.
async fn ledger_ids(http: &reqwest::Client, base: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("{base}/api/v1/usage?limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value =
            http.get(&path).bearer_auth(ADMIN_TOKEN).send().await.expect("usage").json().await.expect("json");
        for row in page["data"].as_array().expect("rows") {
            ids.insert(row["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return ids,
        }
    }
}

async fn process_metric(http: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Issue 18, at least once across a crash: the gateway is killed (SIGKILL) while it
/// serves and publishes; after a restart every record of the ledger is in the stream
/// once. Then the stored cursor is moved back to the start (a crash after JetStream
/// acknowledged, before the cursor was stored, writ large): the restarted sink
/// publishes everything again, and JetStream drops every copy by its `Nats-Msg-Id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_way_then_restart_publishes_every_record_once() {
    let url = nats_url();
    let js = require_jetstream(&url).await;
    let (stream, subject) = unique_stream();
    let events = (url.as_str(), stream.as_str(), subject.as_str());
    let tmp = tempfile::tempdir().expect("tmp");
    let mock = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = start_process(tmp.path(), port, &mock, events).await;
    let admin = |m: reqwest::Method, path: &str| http.request(m, format!("{base}{path}")).bearer_auth(ADMIN_TOKEN);
    let r = admin(reqwest::Method::POST, "/api/v1/projects").json(&json!({ "id": "acme" })).send().await;
    assert_eq!(r.expect("project").status(), 201);
    let created: Value = admin(reqwest::Method::POST, "/api/v1/keys")
        .json(&json!({ "project": "acme", "plan": "enterprise" }))
        .send()
        .await
        .expect("key")
        .json()
        .await
        .expect("json");
    let key = created["key"].as_str().expect("secret").to_owned();
    // Four clients back to back; the gateway is killed once the sink has published
    // some of their records, while it publishes more.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, url, key, tx) = (http.clone(), format!("{base}/v1/chat/completions"), key.clone(), tx.clone());
        clients.spawn(async move {
            let body = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hi" }] });
            loop {
                let Ok(r) = http.post(&url).bearer_auth(&key).json(&body).send().await else { return };
                let id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let ok = r.status().is_success();
                if r.bytes().await.is_ok()
                    && ok
                    && let Some(id) = id
                {
                    let _ = tx.send(id);
                }
            }
        });
    }
    drop(tx);
    eventually(Duration::from_secs(60), "some records published before the crash", || async {
        message_count(&js, &stream).await >= 40
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    while clients.join_next().await.is_some() {}
    let mut acknowledged = HashSet::new();
    while let Ok(id) = rx.try_recv() {
        acknowledged.insert(id);
    }

    let mut child = start_process(tmp.path(), port, &mock, events).await;
    let ledger = ledger_ids(&http, &base).await;
    assert!(acknowledged.is_subset(&ledger), "every answered request is in the ledger");
    eventually(Duration::from_secs(60), "every ledger record in the stream after the restart", || async {
        message_count(&js, &stream).await >= ledger.len() as u64
    })
    .await;
    let got = read_stream(&js, &stream).await;
    assert_eq!(got.messages, ledger.len() as u64, "the stream holds exactly the ledger's records");
    assert_eq!(got.ids.keys().cloned().collect::<HashSet<_>>(), ledger);
    assert!(got.ids.values().all(|n| *n == 1), "no record twice");
    eprintln!(
        "{} records in the ledger after kill -9, {} answered before it; {} published again after the restart",
        ledger.len(),
        acknowledged.len(),
        process_metric(&http, &base, "tollgate_events_duplicates_total").await
    );

    // Back to the start of the ledger: everything is published again and dropped.
    eventually(Duration::from_secs(30), "the sink caught up", || async {
        process_metric(&http, &base, "tollgate_events_lag_records").await == 0
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    {
        let db = rusqlite::Connection::open(tmp.path().join("tollgate.db")).expect("open the store");
        let moved = db.execute("UPDATE event_cursors SET seq = 0", []).expect("rewind the cursor");
        assert_eq!(moved, 1, "one sink cursor");
    }
    let mut child = start_process(tmp.path(), port, &mock, events).await;
    eventually(Duration::from_secs(60), "every record published again", || async {
        process_metric(&http, &base, "tollgate_events_duplicates_total").await == ledger.len() as u64
    })
    .await;
    assert_eq!(process_metric(&http, &base, "tollgate_events_published_total").await, 0, "nothing stored twice");
    assert_eq!(message_count(&js, &stream).await, ledger.len() as u64, "JetStream dropped every copy by id");
    child.kill().expect("stop");
    let _ = child.wait();
    jetstream::delete_stream(&js, &stream).await;
}

/// With `create_stream = false` and no stream yet, nothing can be published: retention
/// then keeps every unpublished row however old; once the stream exists the sink
/// publishes them all, and the next retention run deletes the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_unpublished_rows_until_the_sink_has_published_them() {
    let url = nats_url();
    let js = require_jetstream(&url).await;
    let (stream, subject) = unique_stream();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut raw = with_events(raw_config(tmp.path(), &mock), &url, &stream, &subject);
    raw.events.create_stream = false;
    let mut app = spawn_app_with(Config::from_raw(raw).expect("config")).await;
    app.keep_dir(tmp);
    let now = tollgate_gateway::now_ms();
    const DAY: i64 = 24 * 3600 * 1000;
    let record = |i: i64, ts_ms: i64| UsageRecord {
        id: format!("ev-ret-{i}"),
        ts_ms,
        project_id: "ev-ret".into(),
        key_id: "k".into(),
        endpoint: "chat.completions".into(),
        status: 200,
        counted: true,
        requests: 1,
        ..UsageRecord::default()
    };
    let old: Vec<UsageRecord> = (0..6).map(|i| record(i, now - 120 * DAY - i * 1000)).collect();
    let recent: Vec<UsageRecord> = (6..9).map(|i| record(i, now - i * 1000)).collect();
    app.state.ledger.append_new(old).await.expect("store");
    app.state.ledger.append_new(recent).await.expect("store");
    eventually(Duration::from_secs(30), "the missing stream reported", || async {
        metric(&app, "tollgate_events_failures_total").await >= 1
            && metric(&app, "tollgate_events_lag_records").await == 9
    })
    .await;
    let run = tollgate_server::retention::retention_once(&app.state, now).await.expect("retention");
    assert_eq!(run.ledger_rows, 0, "rows the sink has not published are kept, past retention_days too");
    assert_eq!(app.state.ledger.records_since(0).await.expect("ledger").len(), 9);

    js.create_stream(async_nats::jetstream::stream::Config {
        name: stream.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await
    .expect("create the stream");
    eventually(Duration::from_secs(90), "everything published once the stream exists", || async {
        message_count(&js, &stream).await == 9
    })
    .await;
    eventually(Duration::from_secs(30), "the lag back to zero", || async {
        metric(&app, "tollgate_events_lag_records").await == 0
    })
    .await;
    let run = tollgate_server::retention::retention_once(&app.state, now).await.expect("retention");
    assert_eq!(run.ledger_rows, 6, "published rows past retention_days go");
    app.stop().await;
    jetstream::delete_stream(&js, &stream).await;
}
