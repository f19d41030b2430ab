//! The dashboard in a real browser: Debian's Chromium, headless, driven by
//! playwright-core (tests/browser, installed by scripts/test.sh with `npm ci`; never a
//! browser download) against the real server in front of the mock upstream. The
//! script signs in as the operator and as a project, creates a key and copies its
//! secret, makes proxied requests with it, finds them in the overview chart and the
//! usage explorer, exports CSV and checks it against the API, revokes the key and sees
//! it refused, checks another project's pages and ids are 404 and a form without its
//! CSRF token is refused, and takes a screenshot of each page (into a temporary folder,
//! or `TOLLGATE_SCREENSHOTS_DIR`: `docs/dashboard` refreshes the docs' pictures).

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/browser")
}

/// Usage of the last day for the screenshots: several models and endpoints, a
/// daily profile, and two keys near and at a daily quota.
async fn seed(app: &TestApp) -> String {
    app.create_project("acme").await;
    app.create_project("globex").await;
    let r = app
        .admin(
            Method::POST,
            "/api/v1/plans",
            Some(json!({ "name": "trial", "description": "Evaluation: 100 requests a day",
                "limits": [{ "metric": "requests", "window": "day", "limit": 100 },
                           { "metric": "cost_micros", "window": "month", "limit": 5_000_000 }] })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let (web_secret, web) = app.create_key(json!({ "project": "acme", "name": "web-app", "plan": "free" })).await;
    let (_, batch) = app.create_key(json!({ "project": "acme", "name": "batch-jobs", "plan": "trial" })).await;
    let (_, legacy) = app.create_key(json!({ "project": "acme", "name": "legacy-import", "plan": "trial" })).await;
    let (globex_secret, globex) = app.create_key(json!({ "project": "globex", "name": "globex-bot" })).await;
    assert_eq!(app.chat(&globex_secret).await.status, 200);
    // Live traffic of the last minutes: slow answers, upstream errors, refusals.
    for _ in 0..3 {
        assert_eq!(app.chat_with(&web_secret, &[("x-mock-latency-ms", "180")]).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(app.chat_with(&web_secret, &[("x-mock-status", "500")]).await.status / 100, 5);
    }
    let mut refused = 0;
    for _ in 0..12 {
        refused += usize::from(app.chat(&globex_secret).await.status == 429);
    }
    assert!(refused >= 2, "the free plan's 10 a minute refuses the rest");

    let now = tollgate_gateway::now_ms() / 1000;
    let mut events = Vec::new();
    let models = [
        ("gpt-4o-mini", "chat.completions", 900, 250),
        ("gpt-4o", "chat.completions", 1200, 400),
        ("text-embedding-3-small", "embeddings", 2000, 0),
    ];
    for hour in 1..24i64 {
        // Busier in the (UTC) working day, as real traffic is.
        let busy = 2 + (12 - (hour - 12).abs()).max(0) as u64;
        for (m, (model, endpoint, prompt, completion)) in models.iter().enumerate() {
            events.push(json!({
                "id": format!("seed-{hour}-{m}"), "key_id": web, "timestamp": now - hour * 3600 - 600,
                "endpoint": endpoint, "provider": "openai", "model": model, "requests": busy + m as u64,
                "prompt_tokens": prompt * busy, "completion_tokens": completion * busy,
            }));
        }
    }
    for i in 0..17 {
        events.push(json!({ "id": format!("batch-{i}"), "key_id": batch, "timestamp": now - 120,
            "endpoint": "chat.completions", "provider": "openai", "model": "gpt-4o-mini", "requests": 5, "prompt_tokens": 4000, "completion_tokens": 800 }));
    }
    for i in 0..2 {
        events.push(json!({ "id": format!("legacy-{i}"), "key_id": legacy, "timestamp": now - 120,
            "endpoint": "chat.completions", "provider": "openai", "model": "gpt-4o", "requests": 50, "prompt_tokens": 9000, "completion_tokens": 3000 }));
    }
    let r = app.admin(Method::POST, "/api/v1/usage/events", Some(json!({ "events": events }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["rejected"], 0, "{:?}", r.body);
    app.settled().await;
    app.state.ledger.flush_refusals().await.expect("refusal rows");
    app.state.ledger.flush().await.expect("ledger flush");
    globex
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_chromium_signs_in_creates_a_key_sees_its_usage_exports_and_revokes_it() {
    let dir = browser_dir();
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run `npm ci` there (scripts/test.sh does)",
        dir.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Debian's chromium is not installed at {chromium} (scripts/test.sh installs it: apt-get install chromium)"
    );
    let app = crate::dashboard::alerts_dashboard_app().await;
    let other_key = seed(&app).await;
    let receiver = crate::alerts::Receiver::start().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let r = app
        .admin(
            Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "globex", "kind": "webhook", "url": receiver.url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let other_channel = r.body["id"].as_str().expect("channel").to_owned();
    let r = app.admin(Method::POST, "/api/v1/projects/acme/tokens", Some(json!({ "name": "dashboard test" }))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let project_token = r.body["token"].as_str().expect("token").to_owned();

    let tmp = tempfile::tempdir().expect("tempdir");
    let shots = match std::env::var("TOLLGATE_SCREENSHOTS_DIR") {
        Ok(d) if !d.is_empty() => {
            let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(d);
            std::fs::create_dir_all(&d).expect("screenshot folder");
            d
        }
        _ => tmp.path().to_path_buf(),
    };
    let mut command = Command::new("node");
    command
        .arg("dashboard.mjs")
        .current_dir(&dir)
        .env("TOLLGATE_URL", &app.base)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("TOLLGATE_PROJECT_TOKEN", &project_token)
        .env("TOLLGATE_OTHER_KEY", &other_key)
        .env("TOLLGATE_WEBHOOK_URL", &receiver.url)
        .env("TOLLGATE_DEAD_URL", format!("http://127.0.0.1:{port}/hook"))
        .env("TOLLGATE_OTHER_CHANNEL", &other_channel)
        .env("CHROMIUM", &chromium)
        .env("SCREENSHOTS", &shots);
    let out = tokio::task::block_in_place(|| command.output()).expect("node runs (scripts/test.sh installs nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "sign-in",
        "overview",
        "overview-phone",
        "overview-project",
        "keys",
        "key-created",
        "key",
        "plans",
        "usage",
        "alerts",
        "alerts-validation",
        "alert-channel-created",
        "alert-events",
    ] {
        assert!(shots.join(format!("{name}.png")).is_file(), "screenshot {name}.png");
    }

    // What the browser did is what the API sees: the key exists, is revoked, and its
    // answered requests are in the ledger; no key came from the forged form.
    let keys = app.admin(Method::GET, "/api/v1/keys?project=acme", None).await;
    let list = keys.body["data"].as_array().expect("keys");
    let made: Vec<&Value> = list.iter().filter(|k| k["name"] == "checkout-service").collect();
    assert_eq!(made.len(), 1, "{list:?}");
    assert_eq!(made[0]["status"], "revoked");
    assert!(!list.iter().any(|k| k["name"] == "forged"));
    let id = made[0]["id"].as_str().expect("id");
    let usage = app.usage(&format!("?key={id}")).await;
    let answered = usage["data"].as_array().expect("rows").iter().filter(|r| r["status"] == 200).count();
    assert_eq!(answered, 4, "{usage}");

    // The browser's test send reached the receiver, signed; the rule is the API's.
    let received: Vec<_> = receiver.received().into_iter().filter(|m| m.body.contains("alert.test")).collect();
    assert_eq!(received.len(), 1, "one test send from the browser, none from the other project's session");
    assert!(received[0].headers.contains_key("webhook-signature"));
    let rules = app.admin(Method::GET, "/api/v1/alerts/rules?project=acme", None).await;
    let rules = rules.body["data"].as_array().expect("rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0]["thresholds"], json!([80, 90, 100]));
}
