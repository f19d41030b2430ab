//! `spawn_app()` and a method per endpoint.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tollgate_mock_upstream::{self as mock, MockConfig};
use tollgate_server::app::AppState;
use tollgate_server::app::Application;
use tollgate_server::config::{Config, RawConfig, Secret};

pub const ADMIN_TOKEN: &str = "test-operator-token-0123456789";

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub data_dir: PathBuf,
    pub mock_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// A mock upstream on a random port; returns its `/v1` base URL.
pub async fn spawn_mock(config: MockConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(mock::serve(listener, config, std::future::pending()));
    format!("http://127.0.0.1:{port}/v1")
}

pub fn config(data_dir: &Path, mock_url: &str) -> Config {
    Config::from_raw(raw_config(data_dir, mock_url)).expect("valid test config")
}

/// The test configuration before validation, for tests that set more.
pub fn raw_config(data_dir: &Path, mock_url: &str) -> RawConfig {
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        shutdown_grace_secs: 5,
        max_body_bytes: 64 * 1024,
        ..RawConfig::default()
    };
    raw.upstream.base_url = mock_url.to_owned();
    raw.upstream.api_key = Some(Secret::new("sk-provider-test"));
    // The mock speaks Anthropic's Messages API too (`x-api-key`, `anthropic-version`).
    raw.anthropic.base_url = mock_url.to_owned();
    raw.anthropic.api_key = Some(Secret::new("sk-provider-test"));
    // Generous: 500 concurrent requests in a debug build on 2 busy cores must not time
    // out. Fault tests use `spawn_app_with_timeout` for a short one.
    raw.upstream.timeout_secs = 10;
    // A model priced at exactly one micro-dollar per token, for cost tests.
    raw.prices.insert(
        "tollgate-test".into(),
        tollgate_pricing::PriceOverride {
            input_per_mtok_micros: 1_000_000,
            cached_input_per_mtok_micros: None,
            output_per_mtok_micros: 1_000_000,
            long_context: None,
        },
    );
    // Lets tests drive the mock's misbehaviour through the gateway.
    raw.upstream.forward_headers.extend(
        ["x-mock-status", "x-mock-usage", "x-mock-fault", "x-mock-latency-ms", "x-mock-model", "x-mock-echo-headers"]
            .map(String::from),
    );
    raw
}

pub async fn spawn_app() -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url =
        spawn_mock(MockConfig { expected_api_key: Some("sk-provider-test".into()), ..MockConfig::default() }).await;
    let mut app = spawn_app_with(config(tmp.path(), &mock_url)).await;
    app._tmp = Some(tmp);
    app
}

/// An app whose upstream timeout is `secs` (fault tests: a slow or stalled upstream).
pub async fn spawn_app_with_timeout(secs: u64) -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url =
        spawn_mock(MockConfig { expected_api_key: Some("sk-provider-test".into()), ..MockConfig::default() }).await;
    let mut config = config(tmp.path(), &mock_url);
    config.upstream.read_timeout = std::time::Duration::from_secs(secs);
    let mut app = spawn_app_with(config).await;
    app._tmp = Some(tmp);
    app
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data_dir = config.data_dir.clone();
    let mock_url = config.upstream.base_url.clone();
    let app = Application::build(config).await.expect("build app");
    let base = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
    TestApp { base, http, state, data_dir, mock_url, shutdown: Some(tx), server: Some(server), _tmp: None }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_u64(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("header {name} missing"))
            .parse()
            .unwrap_or_else(|_| panic!("header {name} not a number"))
    }
}

pub async fn reply(r: reqwest::RequestBuilder) -> Reply {
    let response = r.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body read");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply { status, headers, body }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        self.admin_as(ADMIN_TOKEN, method, path, body).await
    }

    pub async fn admin_as(&self, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut r = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        reply(r).await
    }

    pub async fn create_project(&self, id: &str) {
        let r = self.admin(reqwest::Method::POST, "/api/v1/projects", Some(json!({ "id": id }))).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }

    /// Creates a key; returns (secret, key id).
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let r = self.admin(reqwest::Method::POST, "/api/v1/keys", Some(body)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (r.body["key"].as_str().expect("key").to_owned(), r.body["id"].as_str().expect("id").to_owned())
    }

    pub async fn project_key(&self, project: &str, plan: &str) -> String {
        self.create_project(project).await;
        self.create_key(json!({ "project": project, "plan": plan })).await.0
    }

    pub async fn chat(&self, key: &str) -> Reply {
        self.chat_with(key, &[]).await
    }

    pub async fn chat_with(&self, key: &str, headers: &[(&str, &str)]) -> Reply {
        let mut r = self.http.post(self.url("/v1/chat/completions")).bearer_auth(key).json(&json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "user", "content": "Hello" }],
        }));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        reply(r).await
    }

    /// A chat call with an explicit body.
    pub async fn chat_body(&self, key: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.http.post(self.url("/v1/chat/completions")).bearer_auth(key).json(&body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("request sent")
    }

    pub async fn verify(&self, body: Value) -> Reply {
        reply(self.http.post(self.url("/api/v1/keys/verify")).json(&body)).await
    }

    /// Waits until every settlement spawned so far has run.
    /// Keeps `dir` (the data directory's temporary parent) alive as long as the app.
    pub fn keep_dir(&mut self, dir: tempfile::TempDir) {
        self._tmp = Some(dir);
    }

    pub async fn settled(&self) {
        self.state.tasks.close();
        self.state.tasks.wait().await;
        self.state.tasks.reopen();
    }

    pub async fn usage(&self, query: &str) -> Value {
        self.settled().await;
        // Refusal rows of the current minute too (they are otherwise written when it ends).
        self.state.ledger.flush_refusals().await.expect("ledger flush");
        let r = self.admin(reqwest::Method::GET, &format!("/api/v1/usage{query}"), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }

    /// Graceful shutdown, as SIGTERM does; returns the data dir for a restart.
    pub async fn stop(mut self) -> (PathBuf, String, Option<tempfile::TempDir>) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("clean shutdown");
        }
        (self.data_dir.clone(), self.mock_url.clone(), self._tmp.take())
    }
}

/// The real binary's `serve` on `port` with its own data dir in front of `mock_url`
/// (the operator token, the provider key the mocks expect, info logs on a pipe), for
/// the tests that kill or restart the process; add variables, then
/// [`spawn_until_listening`].
pub fn serve_command(data_dir: &Path, port: u16, mock_url: &str) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .arg("serve")
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_DATA_DIR", data_dir)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OPENAI_BASE_URL", mock_url)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

/// Starts `command` and returns once the process logs that it is listening (read from
/// its log, not guessed with a sleep); its log is drained for as long as it runs, so
/// it never blocks on a full pipe.
pub async fn spawn_until_listening(command: &mut std::process::Command) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = command.spawn().expect("start tollgate");
    let stderr = child.stderr.take().expect("stderr");
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut ready = Some(ready_tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tollgate listening")
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
        }
    });
    tokio::time::timeout(std::time::Duration::from_secs(60), ready_rx)
        .await
        .expect("tollgate did not start within 60 s")
        .expect("tollgate exited before listening");
    child
}
