//! Bring your own key through the real gateway, in front of the real mock (which says
//! which provider key it received as a SHA-256, `mock_key_sha256`): a project's own
//! key before the operator's, the operator's without one, `byok_fallback = "never"`,
//! the API's refusals naming their parameter, the key never in clear in the SQLite
//! file, and the master key's rotation (old and new keys both open; after `tollgate
//! secrets rotate` everything is under the new one; a key no longer configured is a
//! clear error).

use std::path::Path;
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_mock_upstream::MockConfig;
use tollgate_server::config::{Config, RawConfig, Secret};

use crate::helpers::*;

const OPERATOR_KEY: &str = "sk-provider-test";
const KEY_A: &str = "sk-proj-BYOKCANARY-aaaa-1111wxyz";
const KEY_B: &str = "sk-proj-BYOKCANARY-bbbb-2222stuv";
const ANTHROPIC_KEY: &str = "sk-ant-BYOKCANARY-cccc-3333";
const MASTER_OLD: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const MASTER_NEW: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const MASTER_OTHER: &str = "3333333333333333333333333333333333333333333333333333333333333333";

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A test configuration with `master_key` (and older keys), in front of a mock that
/// takes any provider key.
fn byok_raw(data_dir: &Path, mock_url: &str, master_key: &str, old: &[&str]) -> RawConfig {
    let mut raw = raw_config(data_dir, mock_url);
    raw.secrets.master_key = Some(Secret::new(master_key));
    raw.secrets.old_master_keys = old.iter().map(|k| Secret::new(*k)).collect();
    raw.byok.allowed_base_urls = vec![mock_url.to_owned()];
    raw.alerts.allow_private_targets = true;
    raw
}

async fn spawn_byok(master_key: &str) -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(MockConfig::default()).await;
    let config = Config::from_raw(byok_raw(tmp.path(), &mock_url, master_key, &[])).expect("valid");
    let mut app = spawn_app_with(config).await;
    app.keep_dir(tmp);
    app
}

/// Which provider key the mock received for a chat completion with `key`.
async fn chat_key_digest(app: &TestApp, key: &str) -> Reply {
    app.chat_with(key, &[("x-mock-echo-headers", "x-none")]).await
}

async fn used_key(app: &TestApp, key: &str) -> String {
    let r = chat_key_digest(app, key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["mock_key_sha256"].as_str().expect("the mock says which key it got").to_owned()
}

async fn put_key(app: &TestApp, project: &str, provider: &str, body: Value) -> Reply {
    app.admin(Method::PUT, &format!("/api/v1/projects/{project}/provider-keys/{provider}"), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_own_key_is_used_before_the_operators_and_the_operators_without_one() {
    let app = spawn_byok(MASTER_NEW).await;
    let own = app.project_key("own", "pro").await;
    let none = app.project_key("none", "pro").await;
    assert_eq!(used_key(&app, &own).await, sha256(OPERATOR_KEY), "no project key yet: the operator's");

    let r = put_key(&app, "own", "openai", json!({ "api_key": KEY_A, "base_url": null })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["provider"], "openai");
    assert_eq!(r.body["hint"], "sk-…wxyz");
    assert_eq!(r.body["base_url"], Value::Null);
    assert!(r.body["created_at"].is_string() && r.body["updated_at"].is_string(), "{:?}", r.body);
    assert!(!r.body.to_string().contains("BYOKCANARY"), "the key is never returned: {:?}", r.body);
    assert_eq!(used_key(&app, &own).await, sha256(KEY_A), "the project's key, at once");
    assert_eq!(used_key(&app, &none).await, sha256(OPERATOR_KEY), "another project keeps the operator's");

    // Streamed too (the same forwarding path): answered, with the project's key.
    let r = app
        .chat_body(
            &own,
            json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] }),
            &[],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("stream").contains("[DONE]"));

    // Replaced: the new key at once; its base URL (allowed) is used too.
    let body = json!({ "api_key": KEY_B, "base_url": format!("{}/", app.mock_url) });
    let r = put_key(&app, "own", "openai", body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["base_url"], app.mock_url.as_str(), "normalised");
    assert_eq!(used_key(&app, &own).await, sha256(KEY_B));

    // Anthropic's Messages go with the project's Anthropic key, as `x-api-key`.
    let r = put_key(&app, "own", "anthropic", json!({ "api_key": ANTHROPIC_KEY })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["hint"], "sk-…3333");
    let r = reply(
        app.http
            .post(app.url("/v1/messages"))
            .bearer_auth(&own)
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-echo-headers", "x-none")
            .json(&json!({ "model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{ "role": "user", "content": "Hi" }] })),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["mock_key_sha256"], sha256(ANTHROPIC_KEY));
    // Anthropic's free token count goes with it too.
    let r = reply(
        app.http
            .post(app.url("/v1/messages/count_tokens"))
            .bearer_auth(&own)
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-echo-headers", "x-none")
            .json(&json!({ "model": "claude-sonnet-4-5", "messages": [{ "role": "user", "content": "Hi" }] })),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["mock_key_sha256"], sha256(ANTHROPIC_KEY));

    let r = app.admin(Method::GET, "/api/v1/projects/own/provider-keys", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let providers: Vec<&str> =
        r.body["data"].as_array().expect("list").iter().filter_map(|k| k["provider"].as_str()).collect();
    assert_eq!(providers, ["anthropic", "openai"]);
    assert!(!r.body.to_string().contains("BYOKCANARY"), "{:?}", r.body);

    // Deleted: the operator's key again, at once; a second delete is a 404.
    let r = app.admin(Method::DELETE, "/api/v1/projects/own/provider-keys/openai", None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(used_key(&app, &own).await, sha256(OPERATOR_KEY));
    let r = app.admin(Method::DELETE, "/api/v1/projects/own/provider-keys/openai", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // The keys are never in clear in the SQLite files (database, WAL).
    app.settled().await;
    let (data_dir, _, _tmp) = app.stop().await;
    let mut checked = 0;
    for entry in std::fs::read_dir(&data_dir).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            assert!(!bytes.windows(10).any(|w| w == b"BYOKCANARY"), "a provider key in clear in {}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byok_fallback_never_refuses_a_project_without_its_own_key() {
    let app = spawn_byok(MASTER_NEW).await;
    let key = app.project_key("strict", "pro").await;
    let r = app.admin(Method::PATCH, "/api/v1/projects/strict", Some(json!({ "byok_fallback": "never" }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["byok_fallback"], "never");
    let r = app.admin(Method::PATCH, "/api/v1/projects/strict", Some(json!({ "byok_fallback": "sometimes" }))).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("byok_fallback")), "{:?}", r.body);

    let r = app.chat(&key).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "provider_key_required", "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "permission_error");
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("openai") && message.contains("/provider-keys/openai"), "{message}");
    let usage = app.usage("?project=strict").await;
    assert_eq!(usage["data"].as_array().map(Vec::len), Some(0), "refused before admission: nothing recorded {usage}");

    let r = put_key(&app, "strict", "openai", json!({ "api_key": KEY_A })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(used_key(&app, &key).await, sha256(KEY_A));
    // Its Anthropic calls still have no key of their own: refused, in Anthropic's shape.
    let r = reply(
        app.http
            .post(app.url("/v1/messages"))
            .bearer_auth(&key)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({ "model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{ "role": "user", "content": "Hi" }] })),
    )
    .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "provider_key_required", "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_key_api_errors_are_4xx_naming_the_parameter() {
    let app = spawn_byok(MASTER_NEW).await;
    app.create_project("p1").await;
    app.create_project("p2").await;
    let param = |r: &Reply| (r.status, r.body["error"]["param"].as_str().map(str::to_owned));

    let r = put_key(&app, "p1", "mistral", json!({ "api_key": KEY_A })).await;
    assert_eq!(param(&r), (400, Some("provider".into())), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("openai")), "{:?}", r.body);
    for bad in ["https://evil.example.com/v1", "http://169.254.169.254/latest", "not a url"] {
        let r = put_key(&app, "p1", "openai", json!({ "api_key": KEY_A, "base_url": bad })).await;
        assert_eq!(param(&r), (400, Some("base_url".into())), "{bad}: {:?}", r.body);
    }
    // Under an allowed prefix by its text, elsewhere once its dot segments are resolved.
    let escape = format!("{}/../../admin", app.mock_url);
    let r = put_key(&app, "p1", "openai", json!({ "api_key": KEY_A, "base_url": escape })).await;
    assert_eq!(param(&r), (400, Some("base_url".into())), "{:?}", r.body);
    let sibling = format!("{}0", app.mock_url);
    let r = put_key(&app, "p1", "openai", json!({ "api_key": KEY_A, "base_url": sibling })).await;
    assert_eq!(param(&r), (400, Some("base_url".into())), "{:?}", r.body);
    for bad in [json!({ "api_key": "" }), json!({ "api_key": "has space" }), json!({ "api_key": "é-key-0123456789" })]
    {
        let r = put_key(&app, "p1", "openai", bad.clone()).await;
        assert_eq!(param(&r), (400, Some("api_key".into())), "{bad}: {:?}", r.body);
    }
    let r = put_key(&app, "p1", "openai", json!({ "key": KEY_A })).await;
    assert_eq!(r.status, 400, "unknown field: {:?}", r.body);
    assert!(!r.body.to_string().contains("BYOKCANARY"), "a refusal never repeats the key: {:?}", r.body);
    let r = put_key(&app, "nope", "openai", json!({ "api_key": KEY_A })).await;
    assert_eq!(r.status, 404, "{:?}", r.body);

    // A project token manages its own project's keys, and no other's (404: it cannot
    // tell which projects exist); rotation is the operator's.
    let r = app.admin(Method::POST, "/api/v1/projects/p1/tokens", None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let token = r.body["token"].as_str().expect("token").to_owned();
    let put = json!({ "api_key": KEY_A });
    let r = app.admin_as(&token, Method::PUT, "/api/v1/projects/p1/provider-keys/openai", Some(put.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.admin_as(&token, Method::PUT, "/api/v1/projects/p2/provider-keys/openai", Some(put)).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("p2")), "{:?}", r.body);
    let r = app.admin_as(&token, Method::GET, "/api/v1/projects/p2/provider-keys", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = app.admin_as(&token, Method::DELETE, "/api/v1/projects/p2/provider-keys/openai", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = app.admin_as(&token, Method::GET, "/api/v1/projects/p1/provider-keys", None).await;
    assert_eq!((r.status, r.body["data"][0]["hint"].as_str()), (200, Some("sk-…wxyz")), "{:?}", r.body);
    let r = app.admin_as(&token, Method::POST, "/api/v1/secrets/rotate", None).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    // Only the operator changes `byok_fallback` (a project setting).
    let r =
        app.admin_as(&token, Method::PATCH, "/api/v1/projects/p1", Some(json!({ "byok_fallback": "operator" }))).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    app.stop().await;
}

/// Runs the CLI against `app`; (ok, stdout, stderr).
fn cli(app: &TestApp, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(args)
        .env("TOLLGATE_URL", &app.base)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run tollgate");
    if let Some(mut pipe) = child.stdin.take() {
        use std::io::Write;
        if let Some(text) = stdin {
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
    }
    let out = child.wait_with_output().expect("tollgate ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn key_id(master_key: &str) -> String {
    tollgate_alerts::seal::MasterKey::parse(master_key).expect("key").id().to_owned()
}

/// The key ids every stored provider key is sealed under, by (project, provider).
async fn sealed_under(app: &TestApp) -> Vec<(String, String)> {
    let keys = app.state.provider_keys.as_ref().expect("provider keys");
    let page = keys.store().provider_keys_page(None, 100).await.expect("page");
    page.into_iter()
        .map(|r| {
            let id = tollgate_alerts::seal::key_id_of(&r.sealed_key).expect("sealed").to_owned();
            (format!("{}/{}", r.project_id, r.provider), id)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_reseals_every_secret_under_the_new_master_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let mock_url = spawn_mock(MockConfig::default()).await;
    let start = |master: &'static str, old: &'static [&'static str]| {
        let config = Config::from_raw(byok_raw(&data_dir, &mock_url, master, old)).expect("valid");
        spawn_app_with(config)
    };

    // Sealed under the old key: a provider key (through the CLI, from stdin) and a
    // webhook channel's signing secret.
    let app = start(MASTER_OLD, &[]).await;
    let first = app.project_key("first", "pro").await;
    let second = app.project_key("second", "pro").await;
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| {
        cli(&app, &["provider-keys", "set", "--project", "first", "--provider", "openai"], Some(&format!("{KEY_A}\n")))
    });
    assert!(ok, "provider-keys set: {stderr}");
    assert!(!stdout.contains("BYOKCANARY") && stdout.contains("sk-…wxyz"), "{stdout}");
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| cli(&app, &["provider-keys", "list", "--project", "first"], None));
    assert!(ok, "{stderr}");
    let listed: Value = serde_json::from_str(&stdout).expect("JSON off a terminal");
    assert_eq!(listed["data"][0]["provider"], "openai", "{listed}");
    let receiver = crate::alerts::Receiver::start().await;
    let r = app
        .admin(Method::POST, "/api/v1/alerts/channels", Some(json!({ "kind": "webhook", "url": receiver.url })))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let channel = r.body["id"].as_str().expect("id").to_owned();
    let webhook_secret = r.body["secret"].as_str().expect("the signing secret, shown once").to_owned();
    // A test-send signs with the secret the channel opens: the official library checks it.
    let test_send = |app: &TestApp| {
        let path = format!("/api/v1/alerts/channels/{channel}/test");
        let request = app.http.post(app.url(&path)).bearer_auth(ADMIN_TOKEN);
        async move {
            let r = reply(request).await;
            assert_eq!((r.status, r.body["status"].as_str()), (200, Some("delivered")), "{:?}", r.body);
        }
    };
    assert_eq!(sealed_under(&app).await, vec![("first/openai".to_owned(), key_id(MASTER_OLD))]);
    app.stop().await;

    // The new key current, the old one still configured: both open.
    let app = start(MASTER_NEW, &[MASTER_OLD]).await;
    assert_eq!(used_key(&app, &first).await, sha256(KEY_A), "sealed under the old key, still opens");
    let r = put_key(&app, "second", "openai", json!({ "api_key": KEY_B })).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(used_key(&app, &second).await, sha256(KEY_B));
    assert_eq!(
        sealed_under(&app).await,
        vec![("first/openai".to_owned(), key_id(MASTER_OLD)), ("second/openai".to_owned(), key_id(MASTER_NEW))]
    );
    test_send(&app).await;

    let (ok, stdout, stderr) = tokio::task::block_in_place(|| cli(&app, &["secrets", "rotate"], None));
    assert!(ok, "secrets rotate: {stderr}");
    let counts: Value = serde_json::from_str(&stdout).expect("JSON counts");
    assert_eq!(counts, json!({ "resealed": 2, "already_current": 1, "failed": 0 }), "the key and the channel");
    assert_eq!(
        sealed_under(&app).await,
        vec![("first/openai".to_owned(), key_id(MASTER_NEW)), ("second/openai".to_owned(), key_id(MASTER_NEW))]
    );
    let stored = app.state.alerts.store.get_channel(&channel).await.expect("get").expect("channel");
    let sealed = stored.sealed_secret.expect("a sealed secret");
    assert_eq!(tollgate_alerts::seal::key_id_of(&sealed), Some(key_id(MASTER_NEW).as_str()));
    let r = app.admin(Method::POST, "/api/v1/secrets/rotate", None).await;
    assert_eq!(r.body, json!({ "resealed": 0, "already_current": 3, "failed": 0 }), "nothing left to do");
    app.stop().await;

    // The old key removed: everything still opens.
    let app = start(MASTER_NEW, &[]).await;
    assert_eq!(used_key(&app, &first).await, sha256(KEY_A));
    assert_eq!(used_key(&app, &second).await, sha256(KEY_B));
    test_send(&app).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "one test before the rotation, one after");
    let verified =
        tokio::task::block_in_place(|| crate::alerts::verify_with_standardwebhooks(&webhook_secret, &received));
    assert_eq!(verified.len(), 2, "both signed with the channel's own secret");
    app.stop().await;

    // A master key that sealed none of it: a clear error, never the operator's key.
    let app = start(MASTER_OTHER, &[]).await;
    let r = chat_key_digest(&app, &first).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "provider_key_unusable", "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("master key") && message.contains("old_master_keys"), "{message}");
    let r = app.admin(Method::POST, "/api/v1/secrets/rotate", None).await;
    assert_eq!(r.body, json!({ "resealed": 0, "already_current": 0, "failed": 3 }), "{:?}", r.body);
    app.stop().await;
    drop(tmp);
}

#[test]
fn the_secrets_section_and_the_alerts_master_key_must_agree() {
    let dir = Path::new("/nonexistent");
    let mut raw = byok_raw(dir, "http://127.0.0.1:1/v1", MASTER_NEW, &[]);
    raw.alerts.master_key = Some(Secret::new(MASTER_OLD));
    let err = Config::from_raw(raw.clone()).expect_err("two master keys").to_string();
    assert!(err.contains("secrets.master_key") && err.contains("alerts.master_key"), "{err}");
    raw.alerts.master_key = Some(Secret::new(MASTER_NEW));
    assert!(Config::from_raw(raw.clone()).is_ok(), "the same key twice is fine");
    raw.secrets.master_key = None;
    let config = Config::from_raw(raw).expect("alerts.master_key alone");
    assert_eq!(config.secrets.master_key.as_ref().map(Secret::expose), Some(MASTER_NEW), "its older name still works");
}
