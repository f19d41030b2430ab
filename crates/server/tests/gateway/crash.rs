//! `kill -9` under load: every request that got a complete 2xx is in the ledger and
//! counted after a restart, and the counters and the hourly rollups equal what the
//! ledger says.

use std::collections::HashSet;
use std::process::Child;

use serde_json::{Value, json};

use crate::helpers::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Starts the real binary and returns once it logs that it is listening (read from
/// its log, not guessed with a sleep).
async fn start(data_dir: &std::path::Path, port: u16, mock_url: &str) -> Child {
    spawn_until_listening(&mut serve_command(data_dir, port, mock_url)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_request() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut child = start(tmp.path(), port, &mock_url).await;
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

    // Eight clients send requests back to back; the gateway is killed while they run.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url, key, tx) = (http.clone(), format!("{base}/v1/chat/completions"), key.clone(), tx.clone());
        clients.spawn(async move {
            let body = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hi" }] });
            loop {
                let Ok(r) = http.post(&url).bearer_auth(&key).json(&body).send().await else { return };
                let id = r.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let ok = r.status().is_success();
                // Acknowledged only once the whole body arrived.
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
    let mut acknowledged = HashSet::new();
    while acknowledged.len() < 150 {
        match rx.recv().await {
            Some(id) => {
                acknowledged.insert(id);
            }
            None => break,
        }
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    while let Some(_done) = clients.join_next().await {}
    while let Ok(id) = rx.try_recv() {
        acknowledged.insert(id);
    }
    assert!(acknowledged.len() >= 150);

    let mut child = start(tmp.path(), port, &mock_url).await;
    let mut in_ledger = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = "/api/v1/usage?limit=1000".to_owned();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = admin(reqwest::Method::GET, &path).send().await.expect("usage").json().await.expect("json");
        for row in page["data"].as_array().expect("rows") {
            assert_eq!(row["counted"], true);
            in_ledger.insert(row["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let missing: Vec<_> = acknowledged.difference(&in_ledger).collect();
    assert!(missing.is_empty(), "{} acknowledged requests missing from the ledger: {missing:?}", missing.len());
    // Counters equal the ledger: the month's quota shows exactly the ledger's count.
    let v: Value = http
        .post(format!("{base}/api/v1/keys/verify"))
        .json(&json!({ "key": key, "dry_run": true }))
        .send()
        .await
        .expect("verify")
        .json()
        .await
        .expect("json");
    let month = v["limits"].as_array().and_then(|l| l.iter().find(|l| l["name"] == "requests_per_month")).cloned();
    let month = month.expect("month limit");
    let used = month["limit"].as_u64().unwrap_or_default() - month["remaining"].as_u64().unwrap_or_default();
    assert_eq!(used, in_ledger.len() as u64, "counters rebuilt from the ledger");
    // The rollups committed with the rows: after kill -9 they still sum to the ledger.
    let summary: Value = admin(reqwest::Method::GET, "/api/v1/analytics/summary?project=acme")
        .send()
        .await
        .expect("summary")
        .json()
        .await
        .expect("json");
    assert_eq!(summary["totals"]["requests"], in_ledger.len() as u64, "rollups equal the ledger: {summary}");
    child.kill().expect("stop");
    let _ = child.wait();
}
