//! Tenancy and operation: what a project-scoped admin token may not do (lift its own
//! limits, pick the OpenAI organization billed), project-wide budgets, admin token
//! lifecycle, where a generated operator token goes, and one process per data dir.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

/// A project and a token scoped to it; returns the token.
async fn project_token(app: &TestApp, project: &str) -> String {
    app.create_project(project).await;
    let r = app.admin(Method::POST, &format!("/api/v1/projects/{project}/tokens"), None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn a_project_token_cannot_lift_its_own_limits() {
    let app = spawn_app().await;
    let token = project_token(&app, "acme").await;
    let as_project = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let path = path.to_owned();
        let (app, token) = (&app, &token);
        async move { app.admin_as(token, method, &path, body).await }
    };

    // Any plan but the allowed ones (by default: free) is the operator's call.
    let r = as_project(Method::POST, "/api/v1/keys", Some(json!({ "project": "acme", "plan": "enterprise" }))).await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "forbidden");
    let r = as_project(Method::POST, "/api/v1/keys", Some(json!({ "project": "acme" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_owned();
    let key = r.body["key"].as_str().expect("key").to_owned();
    let path = format!("/api/v1/keys/{id}");
    let r = as_project(Method::PATCH, &path, Some(json!({ "plan": "enterprise" }))).await;
    assert_eq!(r.status, 403, "moving a key to a plan not allowed: {:?}", r.body);

    // Overrides may lower a limit or add one, never raise one above the plan.
    let minute = |n: u64| json!({ "limits": [{ "metric": "requests", "window": "minute", "limit": n }] });
    let r = as_project(Method::PATCH, &path, Some(minute(1_000))).await;
    assert_eq!(r.status, 403, "raising requests_per_minute: {:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("requests_per_minute")), "{:?}", r.body);
    let r = as_project(
        Method::POST,
        "/api/v1/keys",
        Some(
            json!({ "project": "acme", "limits": [{ "metric": "requests", "window": "month", "limit": 10_000_000 }] }),
        ),
    )
    .await;
    assert_eq!(r.status, 403, "raising the monthly quota on create: {:?}", r.body);
    let r = as_project(Method::PATCH, &path, Some(minute(2))).await;
    assert_eq!(r.status, 200, "lowering is fine: {:?}", r.body);
    assert_eq!(app.chat(&key).await.status, 200);
    assert_eq!(app.chat(&key).await.status, 200);
    assert_eq!(app.chat(&key).await.status, 429, "the lowered limit holds");

    // Nor can it change what it is allowed.
    let r = as_project(Method::PATCH, "/api/v1/projects/acme", Some(json!({ "allowed_plans": ["enterprise"] }))).await;
    assert_eq!(r.status, 403, "{:?}", r.body);

    // The operator widens the allowance; the project may then use exactly that.
    let r = app
        .admin(
            Method::PATCH,
            "/api/v1/projects/acme",
            Some(json!({
                "allowed_plans": ["free", "starter"],
                "max_overrides": [{ "metric": "requests", "window": "minute", "limit": 30 }],
            })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["allowed_plans"], json!(["free", "starter"]));
    assert_eq!(as_project(Method::PATCH, &path, Some(json!({ "plan": "starter" }))).await.status, 200);
    assert_eq!(as_project(Method::PATCH, &path, Some(json!({ "plan": "enterprise" }))).await.status, 403);
    let on_free = |n: u64| json!({ "project": "acme", "plan": "free", "limits": [{ "metric": "requests", "window": "minute", "limit": n }] });
    let r = as_project(Method::POST, "/api/v1/keys", Some(on_free(30))).await;
    assert_eq!(r.status, 201, "up to max_overrides: {:?}", r.body);
    assert_eq!(as_project(Method::POST, "/api/v1/keys", Some(on_free(31))).await.status, 403);
    // The operator is not bound by any of it.
    let r = app.admin(Method::POST, "/api/v1/keys", Some(json!({ "project": "acme", "plan": "enterprise" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
}

#[tokio::test]
async fn project_budgets_apply_to_every_key_whatever_its_plan() {
    let app = spawn_app().await;
    let token = project_token(&app, "acme").await;
    // Subject defaults to `project` for a project's limits; another subject is refused.
    let r = app
        .admin(
            Method::PATCH,
            "/api/v1/projects/acme",
            Some(json!({ "limits": [{ "metric": "requests", "window": "month", "limit": 3, "subject": "key" }] })),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["param"], "limits");
    let r = app
        .admin(
            Method::PATCH,
            "/api/v1/projects/acme",
            Some(json!({ "limits": [{ "metric": "requests", "window": "month", "limit": 3 }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["limits"][0]["subject"], "project");
    assert_eq!(r.body["limits"][0]["name"], "requests_per_month_project");

    let (a, _) = app.create_key(json!({ "project": "acme", "plan": "enterprise" })).await;
    let (b, _) = app.create_key(json!({ "project": "acme", "plan": "pro" })).await;
    assert_eq!(app.chat(&a).await.status, 200);
    assert_eq!(app.chat(&b).await.status, 200);
    assert_eq!(app.chat(&a).await.status, 200);
    let r = app.chat(&b).await;
    assert_eq!(r.status, 429, "the project's budget is spent across its keys: {:?}", r.body);
    assert_eq!(r.body["error"]["code"], "quota_exceeded");
    // A new key, whoever makes it and on whatever plan, starts inside the same budget.
    let r = app.admin_as(&token, Method::POST, "/api/v1/keys", Some(json!({ "project": "acme" }))).await;
    let fresh = r.body["key"].as_str().expect("key").to_owned();
    assert_eq!(app.chat(&fresh).await.status, 429);
    let (enterprise, _) = app.create_key(json!({ "project": "acme", "plan": "enterprise" })).await;
    assert_eq!(app.chat(&enterprise).await.status, 429);
    // Another project is not affected.
    let other = app.project_key("other", "free").await;
    assert_eq!(app.chat(&other).await.status, 200);
}

/// A chat call whose answer says which billing headers reached the upstream.
async fn upstream_billing(app: &TestApp, key: &str) -> serde_json::Value {
    let r = app
        .chat_with(
            key,
            &[
                ("x-mock-echo-headers", "openai-organization, openai-project"),
                ("OpenAI-Organization", "org-chosen-by-the-tenant"),
                ("OpenAI-Project", "proj_chosen_by_the_tenant"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["mock_echo"].clone()
}

#[tokio::test]
async fn tenants_never_choose_the_openai_organization_the_operator_pays_for() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    assert_eq!(
        upstream_billing(&app, &key).await,
        json!({ "openai-organization": [], "openai-project": [] }),
        "the client's billing headers are not forwarded by default"
    );

    // The operator sets them per project; the client's are still ignored.
    let r = app
        .admin(
            Method::PATCH,
            "/api/v1/projects/acme",
            Some(json!({ "openai_organization": "org-operator-acme", "openai_project": "proj_acme" })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        upstream_billing(&app, &key).await,
        json!({ "openai-organization": ["org-operator-acme"], "openai-project": ["proj_acme"] })
    );
    let other = app.project_key("other", "free").await;
    assert_eq!(upstream_billing(&app, &other).await, json!({ "openai-organization": [], "openai-project": [] }));

    // Project tokens cannot set them; bad values are a 400, null clears.
    let token = app.admin(Method::POST, "/api/v1/projects/acme/tokens", None).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let r = app
        .admin_as(&token, Method::PATCH, "/api/v1/projects/acme", Some(json!({ "openai_organization": "org-x" })))
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = app.admin(Method::PATCH, "/api/v1/projects/acme", Some(json!({ "openai_project": "bad\nvalue" }))).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["param"], "openai_project");
    let r = app.admin(Method::PATCH, "/api/v1/projects/acme", Some(json!({ "openai_organization": null }))).await;
    assert_eq!(r.body["openai_organization"], json!(null));
    assert_eq!(
        upstream_billing(&app, &key).await,
        json!({ "openai-organization": [], "openai-project": ["proj_acme"] })
    );
}

/// Runs `tollgate serve` on `data_dir` until it exits or logs that it is listening;
/// returns (whether it got to listening, its exit success, everything it wrote to
/// stderr). A child that listens is sent SIGTERM (which may arrive before its
/// handler is installed: its exit status then says nothing).
fn serve_until_listening_or_exit(data_dir: &std::path::Path, upstream: &str) -> (bool, bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_DATA_DIR", data_dir)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OPENAI_BASE_URL", upstream)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut output = String::new();
    let mut listening = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        output.push_str(&line);
        output.push('\n');
        if line.contains("tollgate listening") {
            listening = true;
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
    }
    let status = child.wait().expect("wait");
    (listening, status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_exits_naming_the_lock() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let (dir, upstream) = (app.data_dir.clone(), app.mock_url.clone());
    let (listening, success, output) =
        tokio::task::spawn_blocking(move || serve_until_listening_or_exit(&dir, &upstream)).await.expect("join");
    assert!(!listening, "a second tollgate served the same data dir (doubling every limit):\n{output}");
    assert!(!success, "the second process must exit with an error:\n{output}");
    assert!(output.contains("tollgate.lock"), "the error names the lock file:\n{output}");
    // The first one is untouched.
    assert_eq!(app.chat(&key).await.status, 200);

    // Once the first stops, the directory is free again.
    let (dir, upstream, tmp) = app.stop().await;
    let moved = dir.clone();
    let (listening, _, output) =
        tokio::task::spawn_blocking(move || serve_until_listening_or_exit(&moved, &upstream)).await.expect("join");
    assert!(listening, "the data dir is usable after the first process stopped:\n{output}");
    drop(tmp);
}

/// A child process killed when dropped (a failed assertion must not leave it running).
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the real binary as an admin client with `token`; returns its stdout as JSON.
fn cli_as(base: &str, token: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_URL", base)
        .env("TOLLGATE_ADMIN_TOKEN", token)
        .output()
        .expect("run tollgate");
    assert!(output.status.success(), "tollgate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("CLI prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_operator_token_goes_to_a_private_file_and_tokens_can_be_listed_and_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    // No TOLLGATE_ADMIN_TOKEN, and stdout a pipe (as under systemd or in a container).
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_DATA_DIR", dir.path())
        .env("OPENAI_BASE_URL", &upstream)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .env("TOLLGATE_SHUTDOWN_GRACE_SECS", "5")
        .env("TOLLGATE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let mut stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    // Killed if the test fails half-way: no server outlives its test.
    let mut child = KillOnDrop(Some(child));
    let stdout_reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).expect("read stdout");
        text
    });
    let (line_tx, line_rx) = std::sync::mpsc::channel::<String>();
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.expect("stderr line");
            all.push_str(&line);
            all.push('\n');
            let _ = line_tx.send(line);
        }
        all
    });
    let address = tokio::task::spawn_blocking(move || {
        for line in line_rx.iter() {
            if let Ok(log) = serde_json::from_str::<serde_json::Value>(&line)
                && log["fields"]["message"] == "tollgate listening"
            {
                return log["fields"]["address"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("join")
    .expect("tollgate logged its address");
    let base = format!("http://{address}");

    // The token is in a file only its owner can read.
    let path = dir.path().join("operator-token");
    let token = std::fs::read_to_string(&path).expect("token file").trim().to_owned();
    assert!(token.starts_with("tga_"), "{token:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the token file is readable only by its owner");
    }

    // Listing shows ids and prefixes, never a token.
    let (b, t) = (base.clone(), token.clone());
    let listed = tokio::task::spawn_blocking(move || cli_as(&b, &t, &["tokens", "list"])).await.expect("join");
    let data = listed["data"].as_array().expect("tokens");
    assert_eq!(data.len(), 1, "{listed}");
    assert_eq!(data[0]["project"], serde_json::Value::Null);
    assert_eq!(data[0]["status"], "active");
    assert_eq!(data[0]["prefix"].as_str(), Some(&token[..8]));
    assert!(!listed.to_string().contains(&token[8..]), "a listing never shows a token");

    // A project token with an expiry, made, used and revoked through the CLI.
    let (b, t) = (base.clone(), token.clone());
    let created = tokio::task::spawn_blocking(move || {
        cli_as(&b, &t, &["projects", "create", "acme"]);
        cli_as(
            &b,
            &t,
            &["tokens", "create", "--project", "acme", "--name", "ci", "--expires-at", "2999-01-01T00:00:00Z"],
        )
    })
    .await
    .expect("join");
    let project_token = created["token"].as_str().expect("shown once").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(created["expires_at"], "2999-01-01T00:00:00.000Z");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let keys = |t: String| http.get(format!("{base}/api/v1/keys")).bearer_auth(t).send();
    assert_eq!(keys(project_token.clone()).await.expect("keys").status(), 200);
    let (b, t, i) = (base.clone(), token.clone(), id.clone());
    let revoked = tokio::task::spawn_blocking(move || cli_as(&b, &t, &["tokens", "revoke", &i])).await.expect("join");
    assert_eq!(revoked["status"], "revoked");
    let refused = reply(http.get(format!("{base}/api/v1/keys")).bearer_auth(&project_token)).await;
    assert_eq!(refused.status, 401, "a revoked token stops at once: {:?}", refused.body);
    assert_eq!(refused.body["error"]["code"], "invalid_admin_token");

    let mut child = child.0.take().expect("child");
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
    let printed = stdout_reader.join().expect("stdout reader");
    let logged = stderr_reader.join().expect("stderr reader");
    assert!(!printed.contains(&token) && !logged.contains(&token), "the token is neither printed nor logged");
    assert!(!printed.contains("tga_"), "nothing token-like on a non-terminal stdout: {printed}");
    assert!(logged.contains(&path.display().to_string()), "the log says where the token is:\n{logged}");
}

#[tokio::test]
async fn expired_and_revoked_admin_tokens_are_refused_and_scoped_tokens_see_only_their_own() {
    let app = spawn_app().await;
    app.create_project("alpha").await;
    app.create_project("beta").await;
    let make = |project: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            let r = app.admin(Method::POST, &format!("/api/v1/projects/{project}/tokens"), Some(body)).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            (r.body["token"].as_str().expect("token").to_owned(), r.body["id"].as_str().expect("id").to_owned())
        }
    };
    let (alpha, alpha_id) = make("alpha", json!({ "name": "alpha ci" })).await;
    let (_, beta_id) = make("beta", json!({})).await;
    let r = app
        .admin(Method::POST, "/api/v1/projects/alpha/tokens", Some(json!({ "expires_at": "2001-01-01T00:00:00Z" })))
        .await;
    assert_eq!(r.status, 400, "an expiry in the past: {:?}", r.body);
    assert_eq!(r.body["error"]["param"], "expires_at");

    // An expired token (stored as such: no waiting) is refused.
    let expired = tollgate_core::AdminToken::generate(&[3u8; 96]).expect("token");
    let record = tollgate_store::AdminTokenRecord {
        id: tollgate_store::AdminTokenRecord::id_for(&expired.hash()),
        project_id: Some("alpha".into()),
        name: None,
        prefix: Some(expired.prefix().to_owned()),
        created_at_ms: 1,
        expires_at_ms: Some(2),
        revoked_at_ms: None,
    };
    app.state.catalog.create_admin_token(record, expired.hash()).await.expect("store token");
    let r = app.admin_as(expired.expose(), Method::GET, "/api/v1/keys", None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("expired")), "{:?}", r.body);

    // A project token lists its project's tokens only, and cannot touch another's.
    let listed = app.admin_as(&alpha, Method::GET, "/api/v1/admin-tokens", None).await;
    let ids: Vec<&str> =
        listed.body["data"].as_array().expect("data").iter().filter_map(|t| t["id"].as_str()).collect();
    assert!(ids.contains(&alpha_id.as_str()) && !ids.contains(&beta_id.as_str()), "{ids:?}");
    assert!(!listed.body.to_string().contains(&alpha[8..]), "never the token itself");
    for (method, path) in [
        (Method::GET, format!("/api/v1/admin-tokens/{beta_id}")),
        (Method::POST, format!("/api/v1/admin-tokens/{beta_id}/revoke")),
        (Method::GET, "/api/v1/admin-tokens?project=beta".to_owned()),
    ] {
        assert_eq!(app.admin_as(&alpha, method, &path, None).await.status, 404, "{path}");
    }
    assert_eq!(app.admin_as(&alpha, Method::POST, "/api/v1/admin-tokens", Some(json!({}))).await.status, 403);
    let r = app.admin(Method::GET, "/api/v1/admin-tokens/not-a-token-id", None).await;
    assert_eq!(r.status, 404);
    // It may revoke itself (a leaked token shut off from inside the project).
    let r = app.admin_as(&alpha, Method::DELETE, &format!("/api/v1/admin-tokens/{alpha_id}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.admin_as(&alpha, Method::GET, "/api/v1/keys", None).await.status, 401);
    // The operator sees them all, with status.
    let all = app.admin(Method::GET, "/api/v1/admin-tokens", None).await;
    let statuses: Vec<&str> =
        all.body["data"].as_array().expect("data").iter().filter_map(|t| t["status"].as_str()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "revoked").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "expired").count(), 1, "{statuses:?}");
}
