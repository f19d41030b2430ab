//! Security and hostile input: no secret in the logs or on disk after a full session
//! of the real binary, constant-time token comparison, CORS off by default, and bad
//! input on every endpoint answered with a 4xx in OpenAI's error shape (never a 5xx,
//! never a crash), after which the gateway keeps serving.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_mock_upstream::{self as mock, MockConfig};

use crate::helpers::*;

// ---------------------------------------------------------------------------
// Secrets never reach the logs or the disk
// ---------------------------------------------------------------------------

const PROVIDER_KEY: &str = "sk-proj-LEAKCANARY-provider-7f3a9c1e";
const OPERATOR_TOKEN: &str = "operator-LEAKCANARY-5b21e0d4c3a9";
const WRONG_ADMIN_TOKEN: &str = "wrong-admin-LEAKCANARY-91ab77";
const GARBAGE_KEY: &str = "sk-LEAKCANARY-not-a-tollgate-key";
const BYOK_KEY: &str = "sk-proj-LEAKCANARY-byok-project-4d2e";

/// The `tollgate serve` child process with its stdout and stderr captured.
struct Served {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    base: String,
}

/// Starts the real binary, configured only by environment variables, and waits until
/// it answers `GET /health` (polled against a deadline).
async fn serve_binary(data_dir: &Path, upstream: &str) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_DATA_DIR", data_dir)
        .env("TOLLGATE_ADMIN_TOKEN", OPERATOR_TOKEN)
        .env("TOLLGATE_SHUTDOWN_GRACE_SECS", "5")
        .env("OPENAI_BASE_URL", upstream)
        .env("OPENAI_API_KEY", PROVIDER_KEY)
        .env("RUST_LOG", "debug")
        .env("TOLLGATE_LOG_FORMAT", "json")
        // The alert channels of the session post to local receivers.
        .env("TOLLGATE_ALERTS__ALLOW_PRIVATE_TARGETS", "true")
        .env("TOLLGATE_ALERTS__RETRY_SCHEDULE_MS", "[20]")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let output = Arc::new(Mutex::new(Vec::new()));
    // The address is in the "tollgate listening" line (port 0: no race for a port).
    let (address_tx, address_rx) = std::sync::mpsc::channel::<String>();
    let mut readers = vec![];
    let pipes: Vec<Box<dyn Read + Send>> =
        vec![Box::new(child.stdout.take().expect("stdout")), Box::new(child.stderr.take().expect("stderr"))];
    for mut pipe in pipes {
        let output = output.clone();
        let address_tx = address_tx.clone();
        readers.push(std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output.lock().expect("output lock").extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Ok(log) = serde_json::from_slice::<Value>(&line)
                        && log["fields"]["message"] == "tollgate listening"
                        && let Some(address) = log["fields"]["address"].as_str()
                    {
                        let _ = address_tx.send(address.to_owned());
                    }
                }
            }
        }));
    }
    let address = tokio::task::spawn_blocking(move || address_rx.recv_timeout(Duration::from_secs(60)))
        .await
        .expect("join")
        .unwrap_or_else(|_| {
            panic!("tollgate never logged its address:\n{}", String::from_utf8_lossy(&output.lock().expect("lock")))
        });
    let base = format!("http://{address}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && r.status().is_success()
        {
            break;
        }
        assert!(Instant::now() < deadline, "tollgate did not answer /health in time");
        tokio::task::yield_now().await;
    }
    Served { child, output, readers, base }
}

impl Served {
    /// SIGTERM (as an operator would send), then everything it printed.
    async fn stop(mut self) -> String {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let mut child = self.child;
        let exit = tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(move || child.wait()))
            .await
            .expect("tollgate exits after SIGTERM")
            .expect("join")
            .expect("wait");
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        let output = String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned();
        assert!(exit.success(), "tollgate exited with {exit:?}:\n{output}");
        output
    }
}

fn every_file(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read data dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            every_file(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_leaves_no_secret_in_the_logs_or_on_disk() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = mock::spawn(MockConfig { expected_api_key: Some(PROVIDER_KEY.into()), ..MockConfig::default() })
        .await
        .expect("mock upstream");
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let served = serve_binary(&data_dir, &upstream.base_url()).await;
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", served.base);
    let admin = |method: Method, path: &str, body: Option<Value>| {
        let mut r = http.request(method, url(path)).bearer_auth(OPERATOR_TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        reply(r)
    };
    let chat = |key: &str, stream: bool| {
        reply(http.post(url("/v1/chat/completions")).bearer_auth(key).json(&json!({
            "model": "gpt-4o-mini",
            "messages": [{ "role": "user", "content": "Hello" }],
            "stream": stream,
        })))
    };

    let r = admin(Method::POST, "/api/v1/projects", Some(json!({ "id": "acme" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = admin(Method::POST, "/api/v1/keys", Some(json!({ "project": "acme", "plan": "pro" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let first_key = r.body["key"].as_str().expect("key").to_owned();
    let key_id = r.body["id"].as_str().expect("id").to_owned();

    let r = chat(&first_key, false).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = chat(&first_key, true).await;
    assert_eq!(r.status, 200);
    assert!(r.body.as_str().is_some_and(|s| s.contains("[DONE]")), "{:?}", r.body);

    // Failed attempts: a forged key of the right shape, garbage, a wrong admin token.
    let forged = tollgate_core::ApiKey::generate(&[9u8; 96]).expect("key").expose().to_owned();
    assert_eq!(chat(&forged, false).await.status, 401);
    assert_eq!(chat(GARBAGE_KEY, false).await.status, 401);
    let r = reply(http.get(url("/api/v1/keys")).bearer_auth(WRONG_ADMIN_TOKEN)).await;
    assert_eq!(r.status, 401);

    let r = admin(Method::POST, &format!("/api/v1/keys/{key_id}/regenerate"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second_key = r.body["key"].as_str().expect("new key").to_owned();
    assert_eq!(chat(&first_key, false).await.status, 401, "the old secret stopped");
    assert_eq!(chat(&second_key, true).await.status, 200);

    // The project's own provider key (bring your own key): sealed with the generated
    // master key, sent upstream instead of the operator's (the mock knows only the
    // operator's, so its 401 comes back), shown only as a hint.
    let r =
        admin(Method::PUT, "/api/v1/projects/acme/provider-keys/openai", Some(json!({ "api_key": BYOK_KEY }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["hint"], "sk-…4d2e");
    assert_eq!(chat(&second_key, false).await.status, 401, "the project's key went upstream");
    assert_eq!(chat(&second_key, true).await.status, 401);

    let r = admin(Method::POST, "/api/v1/projects/acme/tokens", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let project_token = r.body["token"].as_str().expect("token").to_owned();
    let r = reply(http.get(url("/api/v1/keys?project=acme")).bearer_auth(&project_token)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let r = reply(http.post(url("/api/v1/keys/verify")).json(&json!({ "key": second_key }))).await;
    assert_eq!(r.body["valid"], true, "{:?}", r.body);
    let r = reply(http.get(url("/api/v1/usage/status")).bearer_auth(&second_key)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = admin(Method::POST, &format!("/api/v1/keys/{key_id}/revoke"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(chat(&second_key, false).await.status, 403);
    let r = reply(http.post(url("/api/v1/keys/verify")).json(&json!({ "key": second_key }))).await;
    assert_eq!(r.body["valid"], false);
    let r = admin(Method::GET, "/api/v1/usage?project=acme", None).await;
    assert_eq!(r.status, 200);
    assert!(r.body["data"].as_array().is_some_and(|rows| rows.len() >= 3), "{:?}", r.body);

    // Alert channels: a webhook's signing secret, a Slack URL (one answering, one
    // refusing, so its failure is logged), an SMTP password; each channel test-sent.
    let receiver = crate::alerts::Receiver::start().await;
    let r = admin(
        Method::POST,
        "/api/v1/alerts/channels",
        Some(json!({ "project": "acme", "kind": "webhook", "url": receiver.url })),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let webhook_secret = r.body["secret"].as_str().expect("whsec").to_owned();
    let mut alert_channels = vec![r.body["id"].as_str().expect("id").to_owned()];
    let slack_url = format!("{}?token=LEAKCANARY-slack", receiver.url);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let dead_slack_url = format!("http://127.0.0.1:{closed}/services/LEAKCANARY-dead-slack");
    let smtp_password = "LEAKCANARY-smtp-password";
    for body in [
        json!({ "project": "acme", "kind": "slack", "url": slack_url }),
        json!({ "project": "acme", "kind": "slack", "url": dead_slack_url }),
        json!({ "project": "acme", "kind": "email", "smtp_host": "127.0.0.1", "smtp_port": closed, "smtp_tls": "none",
                "smtp_username": "u", "smtp_password": smtp_password, "from": "a@example.com", "to": ["b@example.com"] }),
    ] {
        let r = admin(Method::POST, "/api/v1/alerts/channels", Some(body)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        alert_channels.push(r.body["id"].as_str().expect("id").to_owned());
    }
    for id in &alert_channels {
        let r = admin(Method::POST, &format!("/api/v1/alerts/channels/{id}/test"), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(r.body["attempts"].as_u64().is_some_and(|n| n >= 1), "{:?}", r.body);
    }
    assert_eq!(receiver.received().len(), 2, "the webhook and the answering Slack URL");
    let r = admin(Method::GET, "/api/v1/alerts/deliveries", None).await;
    let shown = r.body.to_string();
    assert!(!shown.contains("LEAKCANARY"), "a delivery's error names no secret: {shown}");

    let logs = served.stop().await;
    upstream.shutdown().await.expect("mock shutdown");

    // The logs were captured (debug level, JSON), and name the key by its public id.
    assert!(logs.contains("tollgate listening") && logs.contains("shutdown complete"), "{logs}");
    let secrets = [
        ("the first key", first_key.as_str()),
        ("the regenerated key", second_key.as_str()),
        ("the first key's secret part", &first_key[16..]),
        ("the regenerated key's secret part", &second_key[16..]),
        ("a forged key", forged.as_str()),
        ("a garbage key", GARBAGE_KEY),
        ("the operator token", OPERATOR_TOKEN),
        ("a wrong admin token", WRONG_ADMIN_TOKEN),
        ("the project token", project_token.as_str()),
        ("the provider key", PROVIDER_KEY),
        ("a project's own provider key", BYOK_KEY),
        ("a webhook signing secret", webhook_secret.as_str()),
        ("a webhook signing secret's key", webhook_secret.trim_start_matches("whsec_")),
        ("a Slack URL", slack_url.as_str()),
        ("a failing Slack URL", dead_slack_url.as_str()),
        ("an SMTP password", smtp_password),
    ];
    for (what, secret) in secrets {
        assert!(!logs.contains(secret), "{what} appears in the logs:\n{logs}");
    }
    assert!(!logs.contains("LEAKCANARY"), "part of a secret appears in the logs:\n{logs}");

    let mut files = vec![];
    every_file(&data_dir, &mut files);
    assert!(files.iter().any(|f| f.ends_with("tollgate.db")), "{files:?}");
    for file in &files {
        let bytes = std::fs::read(file).expect("read store file");
        for (what, secret) in secrets {
            assert!(!contains(&bytes, secret), "{what} is stored in clear in {}", file.display());
        }
        assert!(!contains(&bytes, "LEAKCANARY"), "part of a secret is stored in {}", file.display());
    }
}

// ---------------------------------------------------------------------------
// Constant-time comparison
// ---------------------------------------------------------------------------

/// The configured operator token is compared in constant time (`subtle`), on hashes
/// of equal length. Stored admin tokens and keys are found by the SHA-256 of what was
/// presented, never compared byte by byte with a secret: the lookup's timing depends
/// on the hash, which an attacker cannot steer towards a stored one.
#[test]
fn admin_token_comparison_is_constant_time() {
    let auth = include_str!("../../src/auth.rs");
    assert!(auth.contains("use subtle::ConstantTimeEq;"), "auth.rs no longer uses subtle");
    let compare = auth.find("configured.0.ct_eq(&hash.0)").expect("the configured token is compared with ct_eq");
    let lookup = auth.find("lookup_admin_token(&hash)").expect("stored tokens are looked up by hash");
    assert!(compare < lookup);
    // No secret is compared with `==` anywhere in auth.rs.
    for (n, line) in auth.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        assert!(
            !(code.contains("==") && (code.contains("token") || code.contains("secret") || code.contains("hash"))),
            "auth.rs:{}: a secret compared with ==: {line}",
            n + 1
        );
    }
}

#[tokio::test]
async fn only_the_exact_operator_token_is_accepted() {
    let app = spawn_app().await;
    let mut near = ADMIN_TOKEN.to_owned();
    near.pop();
    for token in [near.clone(), format!("{ADMIN_TOKEN}x"), ADMIN_TOKEN.to_uppercase(), format!(" {near}")] {
        let r = app.admin_as(&token, Method::GET, "/api/v1/projects", None).await;
        assert_eq!(r.status, 401, "{token:?}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_admin_token");
    }
    assert_eq!(app.admin(Method::GET, "/api/v1/projects", None).await.status, 200);
}

// ---------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cors_is_off_unless_configured() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for path in ["/v1/chat/completions", "/api/v1/keys", "/api/v1/keys/verify", "/health"] {
        let r = app
            .http
            .request(Method::OPTIONS, app.url(path))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
            .await
            .expect("preflight");
        assert!(r.headers().get("access-control-allow-origin").is_none(), "{path}: {:?}", r.headers());
        assert!(r.headers().get("access-control-allow-credentials").is_none(), "{path}");
        assert!(r.status().is_client_error(), "{path}: a preflight is not answered: {}", r.status());
    }
    let r = app.http.get(app.url("/v1/models")).bearer_auth(&key).header("origin", "https://evil.example").send().await;
    let r = r.expect("cross-origin GET");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());
    let r = app.http.get(app.url("/api/v1/projects")).bearer_auth(ADMIN_TOKEN).header("origin", "null").send().await;
    assert!(r.expect("cross-origin admin GET").headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url =
        spawn_mock(MockConfig { expected_api_key: Some("sk-provider-test".into()), ..MockConfig::default() }).await;
    let mut config = config(tmp.path(), &mock_url);
    config.cors_allowed_origins = vec![reqwest::header::HeaderValue::from_static("https://app.example")];
    let app = spawn_app_with(config).await;
    let key = app.project_key("acme", "free").await;
    let preflight = |origin: &'static str| {
        app.http
            .request(Method::OPTIONS, app.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let r = preflight("https://app.example").await.expect("preflight");
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let allowed_headers = r.headers()["access-control-allow-headers"].to_str().expect("ascii").to_ascii_lowercase();
    assert!(allowed_headers.contains("authorization"), "{allowed_headers}");
    assert!(r.headers().get("access-control-allow-credentials").is_none());
    let r = preflight("https://evil.example").await.expect("preflight");
    assert!(r.headers().get("access-control-allow-origin").is_none(), "{:?}", r.headers());

    let r = app.chat_with(&key, &[("origin", "https://app.example")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example"));
    let exposed = r.header("access-control-expose-headers").unwrap_or_default().to_ascii_lowercase();
    assert!(exposed.contains("x-ratelimit-remaining") && exposed.contains("retry-after"), "{exposed}");
    let r = app.chat_with(&key, &[("origin", "https://evil.example")]).await;
    assert_eq!(r.status, 200, "CORS is the browser's check: the server still answers");
    assert!(r.header("access-control-allow-origin").is_none());

    // Origins are checked at startup.
    for bad in [vec!["https://app.example/"], vec!["app.example"], vec!["*", "https://app.example"], vec!["https://"]] {
        let raw = tollgate_server::config::RawConfig {
            cors_allowed_origins: bad.iter().map(|o| o.to_string()).collect(),
            ..tollgate_server::config::RawConfig::default()
        };
        let error = tollgate_server::config::Config::from_raw(raw).expect_err("refused");
        assert!(error.to_string().contains("cors_allowed_origins"), "{error}");
    }
}

// ---------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------

/// A 4xx with OpenAI's error body: `{"error": {"message", "type", "code"}}`.
#[track_caller]
fn assert_openai_4xx(what: &str, r: &Reply) {
    assert!((400..500).contains(&r.status), "{what}: status {} {:?}", r.status, r.body);
    let error = &r.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty())
            && error["type"].as_str().is_some_and(|t| !t.is_empty())
            && error["code"].as_str().is_some_and(|c| !c.is_empty()),
        "{what}: not OpenAI's error shape: {} {:?}",
        r.status,
        r.body
    );
}

/// Sends raw bytes on a fresh connection; the first response's status line, head and
/// body, or `None` when the server closed (or reset) the connection without one.
async fn raw(app: &TestApp, request: Vec<u8>) -> Option<(u16, String)> {
    let address = app.base.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    // Written concurrently: the server may answer (and close) before reading it all.
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let mut response = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all).await.expect("the server answers or closes");
    drop(writer.await);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
    Some((status, text))
}

/// The JSON body of a raw response (after the head), if any.
fn raw_body(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_on_every_endpoint_get_an_openai_shaped_4xx() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let (_, key_id) = app.create_key(json!({ "project": "acme", "plan": "pro" })).await;
    let proxy = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];
    let admin_posts = [
        (Method::POST, "/api/v1/projects".to_owned()),
        (Method::POST, "/api/v1/plans".to_owned()),
        (Method::PUT, "/api/v1/plans/free".to_owned()),
        (Method::POST, "/api/v1/keys".to_owned()),
        (Method::PATCH, format!("/api/v1/keys/{key_id}")),
        (Method::POST, format!("/api/v1/keys/{key_id}/regenerate")),
        (Method::POST, "/api/v1/usage/events".to_owned()),
        (Method::POST, "/api/v1/anonymous/attach".to_owned()),
    ];
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", b"{\"model\":\"\xff\xfe\",\"id\":\"\xc3\x28\"}".to_vec()),
        ("invalid UTF-8 only", b"\xff\xfe\xfd".to_vec()),
        ("a JSON array", b"[1,2,3]".to_vec()),
        ("a JSON string", b"\"gpt-4o-mini\"".to_vec()),
        ("a JSON number", b"42".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("truncated JSON", b"{\"model\":\"gpt-4o-mini\",\"messages\":[".to_vec()),
        ("trailing garbage", b"{\"model\":\"gpt-4o-mini\"} x".to_vec()),
        ("deep nesting", format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes()),
        ("a NUL byte", b"{\"model\":\"gpt\x004o\"}".to_vec()),
        ("whitespace", b"  \n ".to_vec()),
    ];
    for (what, body) in &bodies {
        for path in proxy {
            let r = reply(
                app.http
                    .post(app.url(path))
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            assert_openai_4xx(&format!("{what} to {path}"), &r);
        }
        for (method, path) in &admin_posts {
            let r = reply(
                app.http
                    .request(method.clone(), app.url(path))
                    .bearer_auth(ADMIN_TOKEN)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            if *what == "whitespace" && path.ends_with("/regenerate") {
                assert_eq!(r.status, 200, "no body means no grace period");
                continue;
            }
            assert_openai_4xx(&format!("{what} to {method} {path}"), &r);
        }
        let r = reply(
            app.http.post(app.url("/api/v1/keys/verify")).header("content-type", "application/json").body(body.clone()),
        )
        .await;
        assert_openai_4xx(&format!("{what} to verify"), &r);
    }

    // An empty body, with and without a content type.
    for path in proxy {
        let r = reply(app.http.post(app.url(path)).bearer_auth(&key)).await;
        assert_openai_4xx(&format!("empty body to {path}"), &r);
    }
    for (method, path) in &admin_posts {
        let r = reply(app.http.request(method.clone(), app.url(path)).bearer_auth(ADMIN_TOKEN)).await;
        if path.ends_with("/regenerate") {
            continue;
        }
        assert_openai_4xx(&format!("empty body to {method} {path}"), &r);
    }

    // Wrong types and values for the fields the proxy reads.
    let wrong = [
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": -1 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": 0 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": 1_000_000_000_000u64 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": u64::MAX }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": 1e300 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": 1.5 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": "100" }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_tokens": [100] }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_completion_tokens": -5 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "max_completion_tokens": true }),
        json!({ "model": "gpt-4o-mini", "messages": [], "stream": "yes" }),
        json!({ "model": "gpt-4o-mini", "messages": [], "stream": 1 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "stream_options": 5 }),
        json!({ "model": "gpt-4o-mini", "messages": [], "stream_options": { "include_usage": "yes" } }),
        json!({ "model": ["gpt-4o-mini"], "messages": [] }),
        json!({ "model": "", "messages": [] }),
        json!({ "model": "   ", "messages": [] }),
        json!({ "model": "m".repeat(10_000), "messages": [] }),
        json!({ "model": null, "messages": [] }),
    ];
    for body in &wrong {
        for path in proxy {
            let r = reply(app.http.post(app.url(path)).bearer_auth(&key).json(body)).await;
            assert_openai_4xx(&format!("{body} to {path}"), &r);
            assert_eq!(r.status, 400, "{body} to {path}: {:?}", r.body);
        }
    }
    // Wrong types for messages are the upstream's to judge: its 4xx comes back as is.
    let (upstream_judged, _) = app.create_key(json!({ "project": "acme", "plan": "pro" })).await;
    for messages in [json!("Hello"), json!({ "role": "user" }), json!(42), json!([1, 2])] {
        let body = json!({ "model": "gpt-4o-mini", "messages": messages });
        let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&upstream_judged).json(&body)).await;
        // OpenAI's own 400s often have `"code": null`.
        assert_eq!(r.status, 400, "messages {messages}: {:?}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("messages")), "{:?}", r.body);
    }
    // `stream` where it cannot be honoured.
    let r = reply(
        app.http
            .post(app.url("/v1/embeddings"))
            .bearer_auth(&key)
            .json(&json!({ "model": "m", "input": "x", "stream": true })),
    )
    .await;
    assert_openai_4xx("stream on embeddings", &r);

    // The barrage charged nothing and the gateway serves on.
    assert_eq!(app.chat(&key).await.status, 200);
    app.settled().await;
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(v.body["limits"][0]["name"], "requests_per_minute");
    assert_eq!(v.body["limits"][0]["remaining"], 199, "{:?}", v.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_queries_and_methods_get_an_openai_shaped_4xx() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    // 10 KB: within what HTTP clients send (a URI is at most 64 KB).
    let long = "a".repeat(10 * 1024);
    let admin_gets = [
        "/api/v1/keys?limit=abc".to_owned(),
        "/api/v1/keys?limit=-1".to_owned(),
        "/api/v1/keys?limit=99999999999999999999999".to_owned(),
        "/api/v1/keys?colour=red".to_owned(),
        "/api/v1/usage?since=yesterday".to_owned(),
        "/api/v1/usage?until=2026-13-45T99:99:99Z".to_owned(),
        format!("/api/v1/usage?{long}=1"),
        "/api/v1/usage/status?key=nope&project=acme".to_owned(),
        "/api/v1/usage/status?key=%00".to_owned(),
        "/api/v1/keys/%FF%FE".to_owned(),
        "/api/v1/keys/%00".to_owned(),
        "/api/v1/keys/..%2F..%2Fetc%2Fpasswd".to_owned(),
        format!("/api/v1/keys/{long}"),
        "/api/v1/projects/%FF".to_owned(),
        format!("/api/v1/projects/{long}"),
        "/api/v1/plans/%C3%28".to_owned(),
        format!("/{long}"),
        format!("/v1/{long}"),
        format!("/v1/chat/completions/{long}"),
    ];
    for path in &admin_gets {
        let r = app.admin(Method::GET, path, None).await;
        assert_openai_4xx(&format!("GET {}", &path[..path.len().min(80)]), &r);
    }
    // 100 KB paths and queries: past what a URI may be, hyper answers itself (414);
    // never a 5xx, and the gateway serves on.
    let huge = "a".repeat(100 * 1024);
    for target in [format!("/v1/{huge}"), format!("/api/v1/usage?project={huge}"), format!("/v1/models?{huge}")] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\n\r\n");
        let answer = raw(&app, request.into_bytes()).await;
        assert!(
            answer.as_ref().is_none_or(|(s, _)| (400..500).contains(s)),
            "{}: {:?}",
            &target[..20],
            answer.map(|a| a.0)
        );
    }
    // A long query on the proxy is ignored, not fatal.
    let r = reply(app.http.get(app.url(&format!("/v1/models?{long}"))).bearer_auth(&key)).await;
    assert_eq!(r.status, 200);

    // Methods a route does not have.
    for (method, path) in [
        (Method::GET, "/v1/chat/completions"),
        (Method::DELETE, "/v1/chat/completions"),
        (Method::PUT, "/v1/embeddings"),
        (Method::POST, "/v1/models"),
        (Method::DELETE, "/api/v1/projects"),
        (Method::PATCH, "/api/v1/keys"),
        (Method::GET, "/api/v1/keys/verify"),
        (Method::GET, "/api/v1/usage/events"),
    ] {
        let r = reply(app.http.request(method.clone(), app.url(path)).bearer_auth(&key)).await;
        assert_openai_4xx(&format!("{method} {path}"), &r);
    }

    assert_eq!(app.chat(&key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_odd_authorization_headers_are_refused() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let other = app.project_key("beta", "pro").await;
    let body = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hi" }] });
    let chat = |values: &[&str]| {
        let mut r = app.http.post(app.url("/v1/chat/completions")).json(&body);
        for v in values {
            r = r.header("authorization", *v);
        }
        reply(r)
    };
    // Two different keys: which one pays would be a guess. Refused, not the first taken.
    for pair in [
        [format!("Bearer {key}"), format!("Bearer {other}")],
        [format!("Bearer {key}"), "Bearer sk-not-a-key".to_owned()],
        ["Bearer sk-not-a-key".to_owned(), format!("Bearer {key}")],
        [format!("Bearer {key}"), format!("Bearer {key}")],
    ] {
        let r = chat(&[&pair[0], &pair[1]]).await;
        assert_openai_4xx("two Authorization headers", &r);
        assert!(r.status == 400 || r.status == 401, "{:?}", r.body);
    }
    let r = reply(
        app.http
            .get(app.url("/api/v1/projects"))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .header("authorization", "Bearer wrong-token-wrong-token"),
    )
    .await;
    assert_openai_4xx("two admin Authorization headers", &r);
    assert!(r.status == 400 || r.status == 401);

    // Odd schemes and spacing.
    for value in
        ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer", &format!("Token {key}"), &format!("Bearer  {key} x")]
    {
        let r = chat(&[value]).await;
        assert_openai_4xx(&format!("Authorization: {value}"), &r);
        assert_eq!(r.status, 401, "{value}: {:?}", r.body);
    }
    // The scheme is case-insensitive and surrounding spaces are fine.
    assert_eq!(chat(&[&format!("bearer {key}")]).await.status, 200);
    assert_eq!(chat(&[&format!("Bearer   {key}  ")]).await.status, 200);

    // A key with non-ASCII bytes reaches the gateway (HTTP allows obs-text): 401.
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer ",
        body.to_string().len()
    )
    .into_bytes();
    request.extend_from_slice(&key.as_bytes()[..20]);
    request.extend_from_slice("é🦀".as_bytes());
    request.extend_from_slice(b"\r\n\r\n");
    request.extend_from_slice(body.to_string().as_bytes());
    let (status, response) = raw(&app, request).await.expect("an answer");
    assert_eq!(status, 401, "{response}");
    assert!(raw_body(&response)["error"]["code"].is_string(), "{response}");

    // Control characters in a header value: hyper refuses the request itself.
    for control in [&b"\x01"[..], b"\x7f", b"\x00", b"\x1b[31m"] {
        let mut request =
            b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer tg_".to_vec();
        request.extend_from_slice(control);
        request.extend_from_slice(b"abc\r\n\r\n");
        let answer = raw(&app, request).await;
        assert!(answer.as_ref().is_none_or(|(s, _)| *s == 400), "{control:?}: {answer:?}");
    }
    assert_eq!(app.chat(&key).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_lying_requests_never_crash_the_gateway() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let head = |extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\n{extra}\r\n"
        )
    };
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hi"}]}"#;

    // Too many headers: 431 from hyper.
    let mut many = head(&format!("Content-Length: {}\r\n", body.len()));
    many.truncate(many.len() - 2);
    for i in 0..200 {
        many.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    many.push_str("\r\n");
    many.push_str(body);
    let (status, _) = raw(&app, many.into_bytes()).await.expect("an answer");
    assert_eq!(status, 431);

    // One huge header (1 MiB): hyper refuses it (431) or drops the connection.
    let huge = head(&format!("Content-Length: {}\r\nX-Huge: {}\r\n", body.len(), "h".repeat(1 << 20))) + body;
    let answer = raw(&app, huge.into_bytes()).await;
    assert!(answer.as_ref().is_none_or(|(s, _)| *s == 431 || *s == 400), "{:?}", answer.map(|a| a.0));

    // A 60 KB path (just under the 64 KB a URI may have): 404 in OpenAI's shape, with
    // the path cut short in the message.
    let long_path = format!("GET /v1/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "p".repeat(60 * 1024));
    let (status, response) = raw(&app, long_path.into_bytes()).await.expect("an answer");
    assert_eq!(status, 404);
    let error = &raw_body(&response)["error"];
    assert_eq!(error["code"], "unknown_endpoint");
    assert!(error["message"].as_str().is_some_and(|m| m.len() < 500), "{error}");

    // A long path with raw UTF-8 where the message cuts it: no panic, a clean 404.
    let path = format!("/v1/{}{}", "p".repeat(195), "é🦀".repeat(20));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = raw(&app, request.into_bytes()).await.expect("an answer");
    assert!(answer.0 == 404 || answer.0 == 400, "{answer:?}");
    for method in ["DELETE", "PUT"] {
        let request = format!("{method} {path}x/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let answer = raw(&app, request.into_bytes()).await.expect("an answer");
        assert!(answer.0 == 404 || answer.0 == 400, "{answer:?}");
    }

    // Content-Length shorter than the body: the body is cut, so it is not JSON: 400.
    let short = head(&format!("Content-Length: {}\r\n", 10)) + body;
    let (status, response) = raw(&app, short.into_bytes()).await.expect("an answer");
    assert_eq!(status, 400, "{response}");
    assert!(raw_body(&response)["error"]["message"].is_string(), "{response}");

    // Content-Length longer than the body, then the client hangs up: no 5xx.
    let address = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.expect("connect");
    let long = head(&format!("Content-Length: {}\r\n", body.len() + 1000)) + body;
    stream.write_all(long.as_bytes()).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await.expect("closed");
    let text = String::from_utf8_lossy(&response);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 4"), "{text}");

    // Content-Length over the configured maximum: 413 before reading the body.
    let over = head(&format!("Content-Length: {}\r\n", 10 * 1024 * 1024)) + body;
    let (status, response) = raw(&app, over.into_bytes()).await.expect("an answer");
    assert_eq!(status, 413, "{response}");
    assert_eq!(raw_body(&response)["error"]["code"], "payload_too_large");

    // Framing conflicts and nonsense lengths: hyper's own 400.
    for extra in [
        format!("Content-Length: {}\r\nContent-Length: {}\r\n", body.len(), body.len() + 1),
        "Content-Length: -1\r\n".to_owned(),
        "Content-Length: abc\r\n".to_owned(),
        "Content-Length: 99999999999999999999999\r\n".to_owned(),
    ] {
        let request = head(&extra) + body;
        let answer = raw(&app, request.into_bytes()).await;
        assert!(answer.as_ref().is_none_or(|(s, _)| *s == 400), "{extra:?}: {answer:?}");
    }

    // Still serving.
    assert_eq!(app.chat(&key).await.status, 200);
    let r = reply(app.http.get(app.url("/health"))).await;
    assert_eq!(r.status, 200);
}

/// Issue 10, item 12: well-formed forged keys (anyone can compute the checksum) are
/// braked per client address: past `limits.invalid_keys_per_minute` unknown keys the
/// address gets 429 `too_many_invalid_keys` with a `Retry-After`, before any store
/// lookup, on the proxy and the verify endpoint alike.
#[tokio::test]
async fn guessing_keys_is_braked_per_client_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url =
        spawn_mock(MockConfig { expected_api_key: Some("sk-provider-test".into()), ..MockConfig::default() }).await;
    let mut config = config(tmp.path(), &mock_url);
    config.invalid_keys_per_minute = 5;
    let app = spawn_app_with(config).await;
    let forged: Vec<String> = (0..7u8)
        .map(|n| {
            tollgate_core::ApiKey::generate(&[n; tollgate_core::key::RANDOM_BYTES]).expect("key").expose().to_owned()
        })
        .collect();
    let mut statuses = Vec::new();
    for key in &forged[..6] {
        statuses.push(app.chat(key).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "five guesses, then the brake");
    let r = app.chat(&forged[6]).await;
    assert_eq!(r.body["error"]["code"], "too_many_invalid_keys", "{:?}", r.body);
    assert!(r.header("retry-after").is_some_and(|s| s.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n))));
    let v = app.verify(json!({ "key": forged[0] })).await;
    assert_eq!(v.status, 429, "{:?}", v.body);
    assert_eq!(v.body["error"]["code"], "too_many_invalid_keys");
}
