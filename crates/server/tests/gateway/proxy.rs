//! Proxying: keys made by the CLI, the ledger, errors in OpenAI's shape, upstream
//! failures, restarts.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Runs the real `tollgate` binary as an admin client against the app.
fn cli(app: &TestApp, args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_URL", &app.base)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run tollgate");
    assert!(output.status.success(), "tollgate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("CLI prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_by_the_cli_proxies_a_chat_completion_into_the_ledger() {
    let app = spawn_app().await;
    let project = tokio::task::block_in_place(|| cli(&app, &["projects", "create", "acme"]));
    assert_eq!(project["id"], "acme");
    let created = tokio::task::block_in_place(|| cli(&app, &["keys", "create", "--project", "acme", "--plan", "free"]));
    let key = created["key"].as_str().expect("secret shown once");
    assert!(key.starts_with("tg_"));

    let r = app.chat(key).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(r.body["usage"]["prompt_tokens"], 10);
    assert_eq!(r.header_u64("x-ratelimit-limit"), 10);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 9);
    assert_eq!(r.header_u64("x-quota-limit"), 50_000);
    assert_eq!(r.header_u64("x-quota-remaining"), 49_999);
    assert!(r.header_u64("x-quota-reset") > r.header_u64("x-ratelimit-reset") - 61);

    let usage = app.usage("?project=acme").await;
    let rows = usage["data"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{usage}");
    assert_eq!(rows[0]["key_id"], created["id"]);
    assert_eq!(rows[0]["endpoint"], "chat.completions");
    assert_eq!(rows[0]["model"], "gpt-4o-mini");
    assert_eq!(rows[0]["status"], 200);
    assert_eq!(rows[0]["prompt_tokens"], 10);
    assert_eq!(rows[0]["completion_tokens"], 20);
    assert_eq!(rows[0]["id"], r.header("x-request-id").expect("request id"));

    let listed = tokio::task::block_in_place(|| cli(&app, &["keys", "list", "--project", "acme"]));
    assert_eq!(listed["data"][0]["id"], created["id"]);
    assert!(listed.to_string().find(key).is_none(), "the secret is never listed");
    tokio::task::block_in_place(|| cli(&app, &["keys", "revoke", created["id"].as_str().unwrap_or_default()]));
    assert_eq!(app.chat(key).await.status, 403);
}

#[tokio::test]
async fn missing_unknown_malformed_and_revoked_keys() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;

    let r = reply(app.http.post(app.url("/v1/chat/completions")).json(&json!({"model": "m"}))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "missing_api_key");

    let r = app.chat("sk-not-a-tollgate-key").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["code"], "invalid_api_key");

    // Right format and checksum, but never issued.
    let forged = tollgate_core::ApiKey::generate(&[7u8; 96]).expect("key").expose().to_owned();
    let r = app.chat(&forged).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"]["code"], "invalid_api_key");

    // A one-character typo fails the checksum.
    let mut typo = key.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let r = app.chat(&String::from_utf8(typo).expect("ascii")).await;
    assert_eq!(r.status, 401);

    let id = &key[3..15];
    let r = app.admin(Method::POST, &format!("/api/v1/keys/{id}/revoke"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "revoked");
    let r = app.chat(&key).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body["error"]["code"], "key_revoked");
}

#[tokio::test]
async fn bad_requests_get_clear_openai_shaped_4xx() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let post = |body: &'static str| {
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
    };
    let r = reply(post("{not json")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    let r = reply(post(r#"{"messages": []}"#)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "model");
    let r = reply(post(r#"{"model": 5}"#)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = reply(post("[1,2]")).await;
    assert_eq!(r.status, 400);

    let big = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(70 * 1024));
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).body(big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["error"]["code"], "payload_too_large");

    let r = reply(app.http.get(app.url("/v1/nope")).bearer_auth(&key)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"]["code"], "unknown_endpoint");

    // None of these reached the upstream or the quota.
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(v.body["limits"][1]["remaining"], 1_000_000);
}

#[tokio::test]
async fn upstream_failures_are_refunded_and_passed_on() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let r = app.chat_with(&key, &[("x-mock-status", "500")]).await;
    assert_eq!(r.status, 500);
    assert!(r.body["error"]["message"].is_string());
    let r = app.chat_with(&key, &[("x-mock-status", "429")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));

    // Neither counted: the next request sees the whole minute left but its own.
    let r = app.chat(&key).await;
    assert_eq!(r.status, 200);
    app.settled().await;
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(v.body["limits"][0]["remaining"], 9, "{:?}", v.body);

    let usage = app.usage("").await;
    let counted: Vec<bool> =
        usage["data"].as_array().expect("rows").iter().map(|r| r["counted"].as_bool().unwrap_or(true)).collect();
    assert_eq!(counted, vec![true, false, false]);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    let tmp = tempfile::tempdir().expect("tmp");
    // Nothing listens on port 9 of loopback.
    let app = spawn_app_with(config(tmp.path(), "http://127.0.0.1:9/v1")).await;
    let key = app.project_key("acme", "free").await;
    let r = app.chat(&key).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "upstream_unavailable");
    assert!(r.header("x-ratelimit-limit").is_some());
}

#[tokio::test]
async fn counters_and_ledger_survive_a_restart() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    let v = app.verify(json!({ "key": key, "cost": 2 })).await;
    assert_eq!(v.body["code"], "VALID");
    let (data_dir, mock_url, tmp) = app.stop().await;

    let app = spawn_app_with(config(&data_dir, &mock_url)).await;
    let usage = app.usage("?project=acme").await;
    assert_eq!(usage["data"].as_array().map(Vec::len), Some(4), "{usage}");
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    assert_eq!(v.body["limits"][0]["name"], "requests_per_minute");
    assert_eq!(v.body["limits"][0]["remaining"], 5, "{:?}", v.body);
    assert_eq!(v.body["limits"][1]["remaining"], 50_000 - 5);
    // The restarted app keeps enforcing from there.
    for _ in 0..5 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    assert_eq!(app.chat(&key).await.status, 429);
    drop(tmp);
}

#[tokio::test]
async fn models_and_embeddings_pass_through() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let r = reply(app.http.get(app.url("/v1/models")).bearer_auth(&key)).await;
    assert_eq!(r.status, 200);
    assert!(r.body["data"].as_array().is_some_and(|d| !d.is_empty()));
    let r = reply(
        app.http
            .post(app.url("/v1/embeddings"))
            .bearer_auth(&key)
            .json(&json!({ "model": "text-embedding-3-small", "input": "hi" })),
    )
    .await;
    assert_eq!(r.status, 200);
    let usage = app.usage("").await;
    let embedding = usage["data"].as_array().and_then(|d| d.iter().find(|r| r["endpoint"] == "embeddings")).cloned();
    assert!(embedding.is_some_and(|r| r["prompt_tokens"].as_u64() > Some(0)));
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_through_tollgate() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/sdk_smoke.py");
    let base = app.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("TOLLGATE_BASE_URL", base)
            .env("TOLLGATE_KEY", key)
            .env("TOLLGATE_STREAMING", "1")
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs (the README's test command installs the openai package)");
    assert!(
        output.status.success(),
        "sdk_smoke.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
