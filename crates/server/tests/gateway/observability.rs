//! Seeing into a running gateway: `/metrics` after real traffic (checked by
//! Prometheus's own `promtool`), the access log of the real binary, W3C trace
//! context passed upstream, and the startup warning and 502 when no provider key is
//! configured.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

/// The value of the series `line_start` (name and labels exactly) in a scrape.
fn series(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `promtool check metrics` on `text`; panics (never skips) when promtool is missing.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (Debian package `prometheus`; scripts/test.sh installs it)");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n---\n{text}");
}

#[tokio::test]
async fn metrics_after_real_traffic_count_routes_models_tokens_and_refusals_and_pass_promtool() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for _ in 0..10 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    assert_eq!(app.chat(&key).await.status, 429, "free allows 10 a minute");
    assert_eq!(app.chat("tg_not_a_key").await.status, 401);
    let pro = app.create_key(json!({ "project": "acme", "plan": "pro" })).await.0;
    let verified = app.verify(json!({ "key": pro, "dry_run": true })).await;
    assert_eq!(verified.status, 200);
    assert_eq!(verified.body["valid"], true);
    let failed = app.chat_with(&pro, &[("x-mock-status", "503")]).await;
    assert_eq!(failed.status, 503);
    let events = app
        .admin(
            reqwest::Method::POST,
            "/api/v1/usage/events",
            Some(json!({ "events": [{ "id": "evt-metrics", "key_id": verified.body["key_id"] }] })),
        )
        .await;
    assert_eq!(events.status, 200, "{:?}", events.body);
    app.settled().await;

    let scrape = app.http.get(app.url("/metrics")).send().await.expect("scrape");
    assert_eq!(scrape.status(), 200);
    let content_type = scrape.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = scrape.text().await.expect("body");

    let chat = "tollgate_http_requests_total{route=\"/v1/chat/completions\"";
    let ok = format!("{chat},status_class=\"2xx\",model=\"gpt-4o-mini\",provider=\"openai\"}}");
    assert_eq!(series(&text, &ok), Some(10.0), "{text}");
    let refused = format!("{chat},status_class=\"4xx\",model=\"gpt-4o-mini\",provider=\"openai\"}}");
    assert_eq!(series(&text, &refused), Some(1.0), "the 429");
    let unauthenticated = format!("{chat},status_class=\"4xx\",model=\"other\",provider=\"openai\"}}");
    assert_eq!(series(&text, &unauthenticated), Some(1.0), "the 401, before the body is read");
    assert_eq!(
        series(
            &text,
            "tollgate_http_requests_total{route=\"/api/v1/verify\",status_class=\"2xx\",model=\"other\",provider=\"openai\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &text,
            "tollgate_http_requests_total{route=\"/api/v1/usage/events\",status_class=\"2xx\",model=\"other\",provider=\"openai\"}"
        ),
        Some(1.0)
    );
    assert_eq!(series(&text, "tollgate_limit_decisions_total{outcome=\"refused\"}"), Some(1.0));
    assert_eq!(
        series(&text, "tollgate_limit_decisions_total{outcome=\"admitted\"}"),
        Some(12.0),
        "10 + verify + the 503"
    );
    assert_eq!(
        series(&text, "tollgate_limit_refusals_total{limit_metric=\"requests\",limit_window=\"minute\"}"),
        Some(1.0)
    );
    assert_eq!(series(&text, "tollgate_upstream_errors_total{kind=\"status_5xx\"}"), Some(1.0));
    // The mock reports its usage: 10 counted answers (the 503 is refunded).
    let prompt = series(&text, "tollgate_tokens_total{model=\"gpt-4o-mini\",type=\"input\"}").expect("input tokens");
    assert!(prompt >= 10.0, "{prompt}");
    assert!(series(&text, "tollgate_cost_microdollars_total{model=\"gpt-4o-mini\"}").is_some_and(|c| c > 0.0));
    assert_eq!(
        series(
            &text,
            "gen_ai_client_token_usage_count{gen_ai_operation_name=\"chat\",gen_ai_system=\"openai\",gen_ai_token_type=\"input\"}"
        ),
        Some(10.0)
    );
    assert_eq!(
        series(
            &text,
            "gen_ai_server_request_duration_seconds_count{gen_ai_operation_name=\"chat\",gen_ai_system=\"openai\"}"
        ),
        Some(11.0),
        "every call that reached the upstream"
    );
    assert_eq!(
        series(&text, "tollgate_gateway_overhead_seconds_count"),
        Some(15.0),
        "every answer: 13 proxied, 1 verify, 1 usage events call"
    );
    assert!(series(&text, "tollgate_ledger_commit_duration_seconds_count").is_some_and(|n| n >= 1.0));
    assert!(series(&text, "tollgate_ledger_queue_depth").is_some());
    assert!(!text.contains(&key) && !text.contains("acme"), "no key or project in any label");
    promtool_check(&text);
}

/// A real `tollgate serve` with `envs`, its stderr read line by line on a thread.
struct Binary {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    port: u16,
}

impl Binary {
    async fn start(data_dir: &std::path::Path, envs: &[(&str, &str)]) -> Binary {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .arg("serve")
            .env_remove("OPENAI_API_KEY")
            .env("TOLLGATE_LISTEN", format!("localhost:{port}"))
            .env("TOLLGATE_DATA_DIR", data_dir)
            .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start tollgate");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut binary = Binary { child, lines, port };
        binary.wait_for(|l| l.contains("tollgate listening")).await;
        binary
    }

    /// The lines logged until one matches (at most 60 s); panics if none does.
    async fn wait_for(&mut self, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while std::time::Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    let hit = matches(&line);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tokio::task::yield_now().await,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!("no matching log line; saw:\n{}", seen.join("\n"));
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn key(&self, http: &reqwest::Client) -> String {
        for (path, body) in [
            ("/api/v1/projects", json!({ "id": "acme" })),
            ("/api/v1/keys", json!({ "project": "acme", "plan": "pro" })),
        ] {
            let r = http.post(self.url(path)).bearer_auth(ADMIN_TOKEN).json(&body).send().await.expect("admin");
            assert_eq!(r.status(), 201);
            let body: Value = r.json().await.expect("json");
            if let Some(key) = body["key"].as_str() {
                return key.to_owned();
            }
        }
        unreachable!("the key call answers a key")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_json_line_per_request_with_its_fields_and_no_colour() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut tollgate = Binary::start(
        tmp.path(),
        &[("OPENAI_BASE_URL", &mock_url), ("OPENAI_API_KEY", "sk-provider-test"), ("TOLLGATE_LOG_FORMAT", "json")],
    )
    .await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let key = tollgate.key(&http).await;
    let r = http
        .post(tollgate.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] }))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    let seen = tollgate.wait_for(|l| l.contains("\"message\":\"access\"")).await;
    let line = seen.last().expect("the access line");
    let entry: Value = serde_json::from_str(line).expect("a JSON line");
    let fields = &entry["fields"];
    assert_eq!(fields["request_id"], request_id.as_str());
    assert!(fields["key"].as_str().is_some_and(|k| !k.is_empty()), "the key's public id");
    assert!(!line.contains(&key), "never the secret");
    assert_eq!(fields["project"], "acme");
    assert_eq!(fields["model"], "gpt-4o-mini");
    assert_eq!(fields["provider"], "openai");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["usage_source"], "reported");
    assert!(fields["prompt_tokens"].as_u64().is_some_and(|n| n > 0));
    assert!(fields["completion_tokens"].as_u64().is_some_and(|n| n > 0));
    assert!(fields["cost_micros"].as_u64().is_some_and(|n| n > 0));
    for f in ["latency_us", "upstream_us", "gateway_us", "cache", "cached_tokens"] {
        assert!(!fields[f].is_null(), "{f} in {line}");
    }
    assert_eq!(
        fields["latency_us"].as_u64(),
        Some(fields["upstream_us"].as_u64().unwrap_or(0) + fields["gateway_us"].as_u64().unwrap_or(0))
    );

    // A refused key is logged too (before admission: its status and time).
    let r = http.post(tollgate.url("/v1/chat/completions")).bearer_auth("tg_nope").json(&json!({})).send().await;
    assert_eq!(r.expect("sent").status(), 401);
    let seen = tollgate.wait_for(|l| l.contains("\"message\":\"access\"")).await;
    assert!(seen.last().is_some_and(|l| l.contains("\"status\":401")), "{seen:?}");
    assert!(seen.iter().all(|l| !l.contains('\u{1b}')), "no ANSI codes when stderr is a pipe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_provider_key_the_start_warns_and_clients_get_a_502_that_says_so_charged_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    // The mock demands a key, as OpenAI does; tollgate is given none.
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_remove("OPENAI_API_KEY")
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_DATA_DIR", tmp.path())
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OPENAI_BASE_URL", &mock_url)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut tollgate = Binary { child, lines: rx, port };
    let seen = tollgate.wait_for(|l| l.contains("tollgate listening")).await;
    assert!(
        seen.iter().any(|l| l.contains("WARN") && l.contains("no provider key is configured")),
        "a clear warning at start: {seen:?}"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let key = tollgate.key(&http).await;
    let r = http
        .post(tollgate.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] }))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "provider_key_missing");
    assert_eq!(body["error"]["type"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("gateway has no provider API key"), "{message}");
    assert!(!message.contains("You didn't provide an API key"), "not the upstream's message");
    // Charged nothing: the record is there, not counted.
    let usage: Value = http
        .get(tollgate.url("/api/v1/usage"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    let row = &usage["data"][0];
    assert_eq!(row["status"], 502, "{usage}");
    assert_eq!(row["counted"], false);
    assert_eq!(row["cost_micros"], 0);
}

#[tokio::test]
async fn traceparent_and_tracestate_are_passed_upstream() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = app
        .chat_with(
            &key,
            &[
                ("traceparent", traceparent),
                ("tracestate", "vendor=abc"),
                ("x-mock-echo-headers", "traceparent, tracestate"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["mock_echo"]["traceparent"], json!([traceparent]));
    assert_eq!(r.body["mock_echo"]["tracestate"], json!(["vendor=abc"]));
}

#[tokio::test]
async fn the_upstreams_request_id_is_kept_in_the_ledger() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let r = app.chat(&key).await;
    assert_eq!(r.status, 200);
    let usage = app.usage("?project=acme").await;
    let row = &usage["data"][0];
    assert_eq!(row["id"], r.header("x-request-id").expect("tollgate's id"));
    let upstream = row["upstream_request_id"].as_str().expect("the mock's x-request-id");
    assert!(upstream.starts_with("req_mock_"), "{upstream}");
}

/// `/health` no longer says ok while every call to the upstream fails, and recovers
/// with the next answer.
#[tokio::test]
async fn health_says_degraded_while_the_upstream_fails_and_ok_again_after() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let health = || async { reply(app.http.get(app.url("/health"))).await.body };
    assert_eq!(health().await["upstream"]["status"], "ok");
    for _ in 0..3 {
        assert_eq!(app.chat_with(&key, &[("x-mock-status", "503")]).await.status, 503);
    }
    let h = health().await;
    assert_eq!((h["status"].as_str(), h["upstream"]["status"].as_str()), (Some("degraded"), Some("failing")), "{h}");
    assert_eq!(h["upstream"]["consecutive_failures"], 3);
    assert_eq!(app.chat(&key).await.status, 200);
    let h = health().await;
    assert_eq!((h["status"].as_str(), h["upstream"]["status"].as_str()), (Some("ok"), Some("ok")), "{h}");
}
