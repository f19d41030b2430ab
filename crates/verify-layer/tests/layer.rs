//! The layer in front of a real axum service, against a real tollgate on port 0:
//! valid keys pass (and are charged), refusals get their status and headers, and an
//! unreachable tollgate fails open or closed as configured.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};
use tollgate_server::app::Application;
use tollgate_server::config::{Config, RawConfig, Secret};
use tollgate_verify_layer::{FailMode, Verified, VerifyConfig, VerifyLayer};

const ADMIN: &str = "layer-test-operator-token-0123";

struct Tollgate {
    base: String,
    _tmp: tempfile::TempDir,
}

async fn tollgate() -> Tollgate {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().expect("tmp");
    let mut raw = RawConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: tmp.path().to_path_buf(),
        admin_token: Some(Secret::new(ADMIN)),
        ..RawConfig::default()
    };
    raw.upstream.base_url = "http://127.0.0.1:9/v1".into();
    raw.upstream.api_key = Some(Secret::new("sk-unused"));
    let app = Application::build(Config::from_raw(raw).expect("config")).await.expect("build");
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    Tollgate { base, _tmp: tmp }
}

async fn admin(base: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(ADMIN).json(&body).send().await;
    r.expect("admin call").json().await.expect("json")
}

/// An API that is not an LLM proxy, behind the layer; returns its base URL.
async fn service(layer: VerifyLayer) -> String {
    let app =
        Router::new()
            .route(
                "/hello",
                get(|axum::Extension(v): axum::Extension<Verified>| async move {
                    format!("hello {} on {}", v.project, v.plan)
                }),
            )
            .route("/open", get(|| async { "served" }))
            .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn keys_and_quotas_of_tollgate_guard_another_api() {
    let tg = tollgate().await;
    admin(&tg.base, reqwest::Method::POST, "/api/v1/projects", json!({ "id": "acme" })).await;
    let key =
        admin(&tg.base, reqwest::Method::POST, "/api/v1/keys", json!({ "project": "acme", "plan": "free" })).await;
    let (secret, id) = (key["key"].as_str().expect("key").to_owned(), key["id"].as_str().expect("id").to_owned());
    let api = service(VerifyLayer::new(VerifyConfig::new(&tg.base))).await;
    let http = reqwest::Client::new();
    let get = |auth: Option<String>| {
        let mut r = http.get(format!("{api}/hello"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };

    let ok = get(Some(format!("Bearer {secret}"))).await.expect("sent");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-ratelimit-limit"], "10", "the free plan's 10 a minute");
    assert_eq!(ok.headers()["x-ratelimit-remaining"], "9", "this call was charged");
    assert_eq!(ok.text().await.expect("body"), "hello acme on free");
    for _ in 0..9 {
        assert_eq!(get(Some(format!("Bearer {secret}"))).await.expect("sent").status(), 200);
    }
    let limited = get(Some(format!("Bearer {secret}"))).await.expect("sent");
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=61).contains(&retry_after), "{retry_after}");
    let body: Value = limited.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");

    let missing = get(None).await.expect("sent");
    assert_eq!(missing.status(), 401);
    let unknown = get(Some("Bearer tg_nope".into())).await.expect("sent");
    assert_eq!(unknown.status(), 401);
    let body: Value = unknown.json().await.expect("json");
    assert_eq!(body["error"]["code"], "invalid_api_key");

    admin(&tg.base, reqwest::Method::POST, &format!("/api/v1/keys/{id}/revoke"), json!({})).await;
    let revoked = get(Some(format!("Bearer {secret}"))).await.expect("sent");
    assert_eq!(revoked.status(), 403, "revoked: 403, not 401");
}

#[tokio::test]
async fn an_unreachable_tollgate_fails_open_or_closed_as_configured() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://127.0.0.1:{}", l.local_addr().expect("addr").port())
    };
    let config = VerifyConfig::new(&dead).timeout(Duration::from_millis(500));
    let open = service(VerifyLayer::new(config.clone().fail_mode(FailMode::Open))).await;
    let closed = service(VerifyLayer::new(config.fail_mode(FailMode::Closed))).await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{open}/open")).bearer_auth("tg_any").send().await.expect("sent");
    assert_eq!(r.status(), 200, "fail open serves");
    assert_eq!(r.headers()["x-tollgate-verify"], "unavailable", "and says it was not checked");
    let r = http.get(format!("{closed}/open")).bearer_auth("tg_any").send().await.expect("sent");
    assert_eq!(r.status(), 503, "fail closed refuses");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "verify_unavailable");
}
