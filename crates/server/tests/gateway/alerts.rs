//! Alerts over real sockets: threshold crossings under concurrent load produce exactly
//! one delivery per threshold, verified by the official `standardwebhooks` Python
//! library; retries, dead letters and redelivery; Slack to a local receiver; e-mail
//! to a real `aiosmtpd` sink; outbound URL checks; tenant scoping; delivery after a
//! restart with the same `webhook-id`; no channel secret in clear on disk.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tollgate_server::config::RawConfig;

use crate::helpers::*;

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: String,
}

#[derive(Default)]
struct ReceiverState {
    /// Requests answered 200.
    ok: Mutex<Vec<Received>>,
    /// Every request, failed ones too.
    hits: AtomicUsize,
    /// Answer 500 to this many requests first.
    fail_first: AtomicUsize,
    /// Answer 500 to every request while set.
    always_fail: std::sync::atomic::AtomicBool,
}

/// A local HTTP receiver (webhook or Slack) on a random port.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: String) -> StatusCode {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if state.always_fail.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    if state.fail_first.load(Ordering::SeqCst) > 0 {
        state.fail_first.fetch_sub(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let headers = headers.iter().map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())).collect();
    state.ok.lock().expect("lock").push(Received { headers, body });
    StatusCode::OK
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(address: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind(address).await.expect("bind receiver");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ReceiverState::default());
        let app = axum::Router::new().route("/hook", axum::routing::post(receive)).with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver { url: format!("http://127.0.0.1:{port}/hook"), state }
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.ok.lock().expect("lock").clone()
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// Waits until `check` holds, polling, for at most `within`.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Verifies each message with the official Standard Webhooks library (Python):
/// returns the parsed payloads, or fails the test.
pub fn verify_with_standardwebhooks(secret: &str, messages: &[Received]) -> Vec<Value> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
job = json.load(sys.stdin)
wh = Webhook(job["secret"])
out = [wh.verify(m["body"], m["headers"]) for m in job["messages"]]
print(json.dumps(out))
"#;
    let job = json!({
        "secret": secret,
        "messages": messages.iter().map(|m| json!({ "body": m.body, "headers": m.headers })).collect::<Vec<_>>(),
    });
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/test.sh installs standardwebhooks)");
    child.stdin.take().expect("stdin").write_all(job.to_string().as_bytes()).expect("write job");
    let out = child.wait_with_output().expect("python3 ran");
    assert!(
        out.status.success(),
        "standardwebhooks refused a signature (or is not installed: python3 -m pip install standardwebhooks): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("verified payloads")
}

pub fn alerts_config(raw: &mut RawConfig) {
    raw.alerts.allow_private_targets = true;
    raw.alerts.retry_schedule_ms = vec![30, 60, 90];
    raw.alerts.poll_ms = 50;
    raw.alerts.send_timeout_ms = 2_000;
    raw.alerts.lease_secs = 5;
}

/// An app for alerts tests: loopback receivers allowed, fast retries.
pub async fn alerts_app() -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    alerts_config(&mut raw);
    let config = tollgate_server::config::Config::from_raw(raw).expect("config");
    let mut app = spawn_app_with(config).await;
    app.keep_dir(tmp);
    app
}

/// A project with a key on a plan of one daily request quota of `limit`.
pub async fn quota_key(app: &TestApp, project: &str, limit: u64) -> String {
    app.create_project(project).await;
    let plan = format!("daily-{project}");
    let r = app
        .admin(
            reqwest::Method::PUT,
            &format!("/api/v1/plans/{plan}"),
            Some(json!({ "limits": [{ "metric": "requests", "window": "day", "limit": limit }] })),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    app.create_key(json!({ "project": project, "plan": plan })).await.0
}

pub async fn webhook_channel(app: &TestApp, project: &str, url: &str) -> (String, String) {
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": project, "kind": "webhook", "url": url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let secret = r.body["secret"].as_str().expect("the secret is shown once").to_owned();
    assert!(secret.starts_with("whsec_"));
    (r.body["id"].as_str().expect("id").to_owned(), secret)
}

pub async fn rule(app: &TestApp, body: Value) -> String {
    let r = app.admin(reqwest::Method::POST, "/api/v1/alerts/rules", Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["id"].as_str().expect("id").to_owned()
}

pub async fn deliveries(app: &TestApp, query: &str) -> Vec<Value> {
    let r = app.admin(reqwest::Method::GET, &format!("/api/v1/alerts/deliveries{query}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["data"].as_array().expect("list").clone()
}

pub async fn wait_for_deliveries(app: &TestApp, query: &str, status: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = deliveries(app, query).await;
        if list.iter().filter(|d| d["status"] == status).count() >= n {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {n} {status} deliveries: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_requests_send_one_verified_webhook_per_threshold() {
    let app = alerts_app().await;
    let key = quota_key(&app, "acme", 100).await;
    let receiver = Receiver::start().await;
    let (channel, secret) = webhook_channel(&app, "acme", &receiver.url).await;
    rule(&app, json!({ "project": "acme", "metric": "requests", "channels": [channel] })).await;

    let mut tasks = Vec::new();
    for _ in 0..200 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "hi" }] }))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task").expect("request") == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 100, "exactly the quota was admitted");
    let list = wait_for_deliveries(&app, "", "delivered", 3).await;
    assert_eq!(list.len(), 3, "one delivery per threshold, never one per request: {list:?}");
    // Nothing else is on its way: every event of the project is delivered.
    let received = receiver.received();
    assert_eq!(received.len(), 3, "the receiver got exactly three webhooks");
    let payloads = verify_with_standardwebhooks(&secret, &received);
    let mut thresholds: Vec<u64> =
        payloads.iter().map(|p| p["data"]["threshold_percent"].as_u64().expect("threshold")).collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, [80, 90, 100]);
    for p in &payloads {
        assert_eq!(p["type"], "limit.threshold_crossed");
        assert_eq!(p["data"]["project_id"], "acme");
        assert_eq!(p["data"]["limit"], 100);
        assert_eq!(p["data"]["used"], p["data"]["threshold_percent"], "crossed by the charge that reached it");
        assert_eq!(p["data"]["window"], "day");
    }
    let ids: std::collections::HashSet<_> = received.iter().map(|m| m.headers["webhook-id"].clone()).collect();
    assert_eq!(ids.len(), 3);
    // The events API shows them with their deliveries.
    let events = app.admin(reqwest::Method::GET, "/api/v1/alerts/events", None).await;
    assert_eq!(events.body["data"].as_array().map(Vec::len), Some(3), "{:?}", events.body);
    assert_eq!(events.body["data"][0]["deliveries"][0]["status"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_retries_then_dead_letters_that_can_be_redelivered() {
    let app = alerts_app().await;
    app.create_project("acme").await;
    let flaky = Receiver::start().await;
    flaky.state.fail_first.store(3, Ordering::SeqCst);
    let (flaky_channel, secret) = webhook_channel(&app, "acme", &flaky.url).await;
    // Test send: through the outbox like any alert; 500, 500, 500, then 200.
    let r = app.admin(reqwest::Method::POST, &format!("/api/v1/alerts/channels/{flaky_channel}/test"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("delivery id").to_owned();
    wait_for_deliveries(&app, &format!("?event={}", r.body["event_id"].as_str().expect("event")), "delivered", 1).await;
    let d = app.admin(reqwest::Method::GET, &format!("/api/v1/alerts/deliveries/{id}"), None).await;
    assert_eq!(d.body["attempts"], 4, "{:?}", d.body);
    let log = d.body["attempt_log"].as_array().expect("attempts");
    assert_eq!(log.iter().map(|a| a["status_code"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), [500, 500, 500, 200]);
    assert_eq!(flaky.hits(), 4);
    let received = flaky.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].headers["webhook-id"], id, "the delivery id is the webhook-id");
    let payload = verify_with_standardwebhooks(&secret, &received);
    assert_eq!(payload[0]["type"], "alert.test");

    // Always failing: dead after 1 + 3 retries, listed, then redelivered.
    let down = Receiver::start().await;
    down.state.always_fail.store(true, Ordering::SeqCst);
    let (down_channel, _) = webhook_channel(&app, "acme", &down.url).await;
    let r = app.admin(reqwest::Method::POST, &format!("/api/v1/alerts/channels/{down_channel}/test"), None).await;
    let id = r.body["id"].as_str().expect("delivery id").to_owned();
    let dead = wait_for_deliveries(&app, "?status=dead", "dead", 1).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], id.as_str());
    assert_eq!(dead[0]["attempts"], 4);
    assert!(dead[0]["last_error"].as_str().unwrap_or("").contains("500"), "{:?}", dead[0]);
    assert_eq!(down.hits(), 4);
    down.state.always_fail.store(false, Ordering::SeqCst);
    let r = app.admin(reqwest::Method::POST, &format!("/api/v1/alerts/deliveries/{id}/redeliver"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "pending");
    wait_for_deliveries(&app, "?status=delivered", "delivered", 2).await;
    assert_eq!(down.received().len(), 1);
    assert_eq!(down.received()[0].headers["webhook-id"], id);
    let d = app.admin(reqwest::Method::GET, &format!("/api/v1/alerts/deliveries/{id}"), None).await;
    assert_eq!(d.body["attempt_log"].as_array().map(Vec::len), Some(5), "every attempt is kept");
}

/// A real SMTP sink: aiosmtpd writes each message it receives to a file in `dir`.
struct SmtpSink {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    fn start() -> SmtpSink {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let script = r#"
import os, sys
from aiosmtpd.controller import Controller
out, port = sys.argv[1], int(sys.argv[2])
class Sink:
    async def handle_DATA(self, server, session, envelope):
        n = len(os.listdir(out))
        tmp = os.path.join(out, f"{n}.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.content)
        os.rename(tmp, os.path.join(out, f"{n}.eml"))
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=port)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script, dir.path().to_str().expect("utf-8 path"), &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test.sh installs aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("sink output");
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start (python3 -m pip install aiosmtpd)");
        SmtpSink { port, dir, child }
    }

    fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        files.sort();
        files.iter().map(|p| std::fs::read_to_string(p).expect("message")).collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_email_channels_receive_the_crossing() {
    let app = alerts_app().await;
    let key = quota_key(&app, "acme", 10).await;
    let slack = Receiver::start().await;
    let sink = SmtpSink::start();
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "acme", "kind": "slack", "url": slack.url, "name": "ops" })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body.get("secret").is_none() && r.body.get("url").is_none(), "a Slack URL is a secret: {:?}", r.body);
    let slack_channel = r.body["id"].as_str().expect("id").to_owned();
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({
                "project": "acme", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": sink.port,
                "smtp_tls": "none", "from": "tollgate <alerts@example.com>", "to": ["ops@example.com"]
            })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let email_channel = r.body["id"].as_str().expect("id").to_owned();
    rule(
        &app,
        json!({ "project": "acme", "window": "day", "thresholds": [80], "channels": [slack_channel, email_channel] }),
    )
    .await;
    for _ in 0..8 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    wait_for_deliveries(&app, "", "delivered", 2).await;
    let got = slack.received();
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_str(&got[0].body).expect("Slack gets JSON");
    assert!(body["text"].as_str().expect("text").contains("80%"), "{body}");
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[1]["type"], "section");
    assert!(blocks[1]["fields"].as_array().expect("fields").iter().all(|f| f["type"] == "mrkdwn"));
    assert!(blocks[1]["fields"].to_string().contains("8 of 10"), "{body}");
    eventually(Duration::from_secs(10), "the e-mail", || !sink.messages().is_empty()).await;
    let mail = sink.messages().remove(0);
    assert!(mail.contains("Subject: [tollgate] acme: requests day at 80% (8 of 10)"), "{mail}");
    assert!(mail.contains("To: ops@example.com"), "{mail}");
    assert!(mail.contains("text/plain") && mail.contains("text/html"), "plain text and HTML: {mail}");
    assert!(mail.contains("8 of 10"), "{mail}");
}

#[tokio::test]
async fn private_targets_bad_input_and_other_projects_are_refused() {
    // Default settings: no private targets.
    let app = spawn_app().await;
    app.create_project("acme").await;
    app.create_project("other").await;
    let post = |body: Value| app.admin(reqwest::Method::POST, "/api/v1/alerts/channels", Some(body));
    for url in ["http://127.0.0.1:9/hook", "http://10.0.0.1/", "http://169.254.169.254/latest", "http://[::1]/"] {
        let r = post(json!({ "project": "acme", "kind": "webhook", "url": url })).await;
        assert_eq!(r.status, 400, "{url}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], "url");
    }
    for (body, param) in [
        (json!({ "project": "acme", "kind": "webhook" }), Some("url")),
        (json!({ "project": "acme", "kind": "pager" }), None),
        (json!({ "project": "acme", "kind": "webhook", "url": "ftp://example.com/" }), Some("url")),
        (
            json!({ "project": "acme", "kind": "email", "smtp_host": "h", "from": "not an address", "to": ["a@b.c"] }),
            Some("from"),
        ),
        (json!({ "project": "acme", "kind": "email", "smtp_host": "h", "from": "a@b.c", "to": [] }), Some("to")),
        (json!({ "project": "nope", "kind": "webhook", "url": "https://example.com/" }), Some("project")),
        (json!([1, 2]), None),
    ] {
        let r = post(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert!(r.body["error"]["message"].is_string());
        if let Some(param) = param {
            assert_eq!(r.body["error"]["param"], param, "{body}: {:?}", r.body);
        }
    }
    let rules = |body: Value| app.admin(reqwest::Method::POST, "/api/v1/alerts/rules", Some(body));
    for body in [
        json!({ "project": "acme", "thresholds": [0], "channels": ["ch_x"] }),
        json!({ "project": "acme", "thresholds": [], "channels": ["ch_x"] }),
        json!({ "project": "acme", "channels": ["ch_missing"] }),
        json!({ "project": "acme", "metric": "bananas", "channels": ["ch_x"] }),
        json!({ "project": "acme" }),
    ] {
        let r = rules(body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
    }
    let r = app.admin(reqwest::Method::GET, "/api/v1/alerts/deliveries?status=lost", None).await;
    assert_eq!(r.status, 400);
    // An e-mail channel (no URL to check) in "other", then a token of "acme".
    let r = post(json!({ "project": "other", "kind": "email", "smtp_host": "127.0.0.1", "smtp_tls": "none",
                         "from": "a@example.com", "to": ["b@example.com"] }))
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let others = r.body["id"].as_str().expect("id").to_owned();
    let rule_id = rule(&app, json!({ "project": "other", "channels": [others.clone()] })).await;
    let r = app.admin(reqwest::Method::POST, "/api/v1/admin-tokens", Some(json!({ "project": "acme" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["token"].as_str().expect("token").to_owned();
    for path in [
        format!("/api/v1/alerts/channels/{others}"),
        format!("/api/v1/alerts/rules/{rule_id}"),
        "/api/v1/alerts/rules?project=other".to_owned(),
    ] {
        let r = app.admin_as(&token, reqwest::Method::GET, &path, None).await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
    }
    let r = app.admin_as(&token, reqwest::Method::DELETE, &format!("/api/v1/alerts/channels/{others}"), None).await;
    assert_eq!(r.status, 404);
    let r = app.admin_as(&token, reqwest::Method::GET, "/api/v1/alerts/channels", None).await;
    assert_eq!(r.body["data"].as_array().map(Vec::len), Some(0), "{:?}", r.body);
    // Its own project's rule may not use another project's channel.
    let r = app
        .admin_as(&token, reqwest::Method::POST, "/api/v1/alerts/rules", Some(json!({ "channels": [others] })))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Starts the real binary with alerts set for tests, and returns once it logs that it
/// is listening (read from its log, not guessed with a sleep).
async fn start_binary(data_dir: &std::path::Path, port: u16, mock_url: &str) -> Child {
    let mut command = serve_command(data_dir, port, mock_url);
    command
        .env("TOLLGATE_ALERTS__ALLOW_PRIVATE_TARGETS", "true")
        .env("TOLLGATE_ALERTS__RETRY_SCHEDULE_MS", "[1500]")
        .env("TOLLGATE_ALERTS__POLL_MS", "50");
    spawn_until_listening(&mut command).await
}

async fn call(http: &reqwest::Client, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn binary_deliveries(http: &reqwest::Client, base: &str) -> Vec<Value> {
    let (status, body) = call(http, reqwest::Method::GET, format!("{base}/api/v1/alerts/deliveries"), None).await;
    assert_eq!(status, 200, "{body:?}");
    body["data"].as_array().expect("list").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_is_delivered_after_kill_9_once_with_the_same_webhook_id() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut child = start_binary(tmp.path(), port, &mock_url).await;
    let post = reqwest::Method::POST;
    let (s, b) = call(&http, post.clone(), format!("{base}/api/v1/projects"), Some(json!({ "id": "acme" }))).await;
    assert_eq!(s, 201, "{b:?}");
    let plan = json!({ "limits": [{ "metric": "requests", "window": "day", "limit": 5 }] });
    let (s, b) = call(&http, reqwest::Method::PUT, format!("{base}/api/v1/plans/daily5"), Some(plan)).await;
    assert!(s == 200 || s == 201, "{b:?}");
    let (s, b) =
        call(&http, post.clone(), format!("{base}/api/v1/keys"), Some(json!({ "project": "acme", "plan": "daily5" })))
            .await;
    assert_eq!(s, 201, "{b:?}");
    let key = b["key"].as_str().expect("key").to_owned();
    let receiver = Receiver::start().await;
    receiver.state.always_fail.store(true, Ordering::SeqCst);
    let channel = json!({ "project": "acme", "kind": "webhook", "url": receiver.url });
    let (s, b) = call(&http, post.clone(), format!("{base}/api/v1/alerts/channels"), Some(channel)).await;
    assert_eq!(s, 201, "{b:?}");
    let secret = b["secret"].as_str().expect("secret").to_owned();
    let rule = json!({ "project": "acme", "thresholds": [100], "channels": [b["id"]] });
    let (s, b) = call(&http, post.clone(), format!("{base}/api/v1/alerts/rules"), Some(rule)).await;
    assert_eq!(s, 201, "{b:?}");
    for _ in 0..5 {
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "hi" }] }))
            .send()
            .await
            .expect("chat");
        assert_eq!(r.status(), 200);
    }
    // The crossing is in the outbox and its first attempt failed; kill -9 before the retry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let webhook_id = loop {
        let list = binary_deliveries(&http, &base).await;
        if let Some(d) = list.first().filter(|d| d["attempts"] == 1) {
            break d["id"].as_str().expect("id").to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no first attempt: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert_eq!(receiver.received().len(), 0);

    // After the restart the worker finds it and delivers it once, with the same id.
    receiver.state.always_fail.store(false, Ordering::SeqCst);
    let mut child = start_binary(tmp.path(), port, &mock_url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = binary_deliveries(&http, &base).await;
        if list.first().is_some_and(|d| d["status"] == "delivered") {
            assert_eq!(list.len(), 1);
            assert_eq!(list[0]["attempts"], 2, "{list:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not delivered after the restart: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let received = receiver.received();
    assert_eq!(received.len(), 1, "delivered once");
    assert_eq!(received[0].headers["webhook-id"], webhook_id, "with the same webhook-id");
    verify_with_standardwebhooks(&secret, &received);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_secrets_are_never_on_disk_in_clear_nor_returned() {
    let app = alerts_app().await;
    app.create_project("acme").await;
    let receiver = Receiver::start().await;
    let (channel, secret) = webhook_channel(&app, "acme", &receiver.url).await;
    let slack_url = format!("{}?token=slack-secret-T0K3N", receiver.url);
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "acme", "kind": "slack", "url": slack_url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let password = "smtp-password-S3CR3T";
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "acme", "kind": "email", "smtp_host": "127.0.0.1", "smtp_username": "u",
                         "smtp_password": password, "from": "a@example.com", "to": ["b@example.com"] })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let listed = app.admin(reqwest::Method::GET, "/api/v1/alerts/channels", None).await;
    let shown = listed.body.to_string()
        + &app.admin(reqwest::Method::GET, &format!("/api/v1/alerts/channels/{channel}"), None).await.body.to_string();
    let secret_b64 = secret.trim_start_matches("whsec_");
    for s in [secret_b64, "slack-secret-T0K3N", password] {
        assert!(!shown.contains(s), "the API never returns a secret after creation");
    }
    app.state.ledger.flush().await.expect("flush");
    let (dir, _, _tmp) = app.stop().await;
    let mut files = vec![dir.clone()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).expect("dir").filter_map(Result::ok).map(|e| e.path()));
            continue;
        }
        // A file the store removed as it closed (a WAL index) is no longer on disk.
        let Ok(bytes) = std::fs::read(&path) else { continue };
        scanned += 1;
        for s in [secret_b64, "slack-secret-T0K3N", password] {
            assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{s} in clear in {}", path.display());
        }
    }
    assert!(scanned >= 2, "the database was scanned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossing_lost_before_its_outbox_write_is_found_again_when_counters_are_rebuilt() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let build = || {
        let mut raw = raw_config(tmp.path(), &mock_url);
        alerts_config(&mut raw);
        tollgate_server::config::Config::from_raw(raw).expect("config")
    };
    let app = spawn_app_with(build()).await;
    let key = quota_key(&app, "acme", 10).await;
    let receiver = Receiver::start().await;
    let (channel, _) = webhook_channel(&app, "acme", &receiver.url).await;
    rule(&app, json!({ "project": "acme", "window": "day", "thresholds": [80], "channels": [channel] })).await;
    for _ in 0..8 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    wait_for_deliveries(&app, "", "delivered", 1).await;
    let (dir, _, _keep) = app.stop().await;
    // As if the process had died between the charge and the outbox write.
    let db = rusqlite::Connection::open(dir.join("tollgate.db")).expect("open db");
    db.execute_batch("DELETE FROM alert_attempts; DELETE FROM alert_deliveries; DELETE FROM alert_events;")
        .expect("forget the outbox");
    drop(db);

    let app = spawn_app_with(build()).await;
    wait_for_deliveries(&app, "", "delivered", 1).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].headers["webhook-id"], received[1].headers["webhook-id"], "the same event, found again");
    // Rebuilding again finds an event that is already there: nothing more is sent.
    let (_, _, _keep2) = app.stop().await;
    let app = spawn_app_with(build()).await;
    assert_eq!(deliveries(&app, "").await.len(), 1);
    assert_eq!(app.chat(&key).await.status, 200, "the ninth request (90 %: no rule)");
    app.stop().await;
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_defaults_apply_to_projects_without_rules_of_their_own() {
    let app = alerts_app().await;
    let key = quota_key(&app, "acme", 4).await;
    let own_key = quota_key(&app, "own", 4).await;
    let receiver = Receiver::start().await;
    // Operator channel and default rule (no project).
    let r = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "kind": "webhook", "url": receiver.url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["project"], Value::Null);
    let default_rule = rule(&app, json!({ "thresholds": [50], "channels": [r.body["id"]] })).await;
    // "own" has a rule of its own (at 100 %), which replaces the default there.
    let (own_channel, _) = webhook_channel(&app, "own", &receiver.url).await;
    rule(&app, json!({ "project": "own", "thresholds": [100], "channels": [own_channel] })).await;
    for _ in 0..4 {
        assert_eq!(app.chat(&key).await.status, 200);
        assert_eq!(app.chat(&own_key).await.status, 200);
    }
    wait_for_deliveries(&app, "", "delivered", 2).await;
    let mut seen: Vec<(String, u64, String)> = receiver
        .received()
        .iter()
        .map(|m| {
            let v: Value = serde_json::from_str(&m.body).expect("json");
            let d = &v["data"];
            (
                d["project_id"].as_str().unwrap_or("").to_owned(),
                d["threshold_percent"].as_u64().unwrap_or(0),
                d["rule_id"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!((seen[0].0.as_str(), seen[0].1, seen[0].2.as_str()), ("acme", 50, default_rule.as_str()));
    assert_eq!((seen[1].0.as_str(), seen[1].1), ("own", 100));
    // A project token does not see the operator's defaults.
    let r = app.admin(reqwest::Method::POST, "/api/v1/admin-tokens", Some(json!({ "project": "acme" }))).await;
    let token = r.body["token"].as_str().expect("token").to_owned();
    let r = app.admin_as(&token, reqwest::Method::GET, &format!("/api/v1/alerts/rules/{default_rule}"), None).await;
    assert_eq!(r.status, 404);
}
