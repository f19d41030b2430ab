//! Response caching end to end (docs/caching.md): exact hits, misses and bypasses with
//! their headers; key order does not change the key; projects never share an entry;
//! a streamed hit read by the official `openai` Python SDK is the live answer; the
//! ledger records hits at zero cost with their potential cost, and analytics reports
//! the money saved.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// A project with its cache on (and `cache` members merged in), and a key on it.
async fn cached_project(app: &TestApp, project: &str, cache: Value) -> String {
    let key = app.project_key(project, "pro").await;
    let mut settings = json!({ "enabled": true });
    if let (Value::Object(s), Value::Object(extra)) = (&mut settings, cache) {
        s.extend(extra);
    }
    let r = app.admin(Method::PATCH, &format!("/api/v1/projects/{project}"), Some(json!({ "cache": settings }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["cache"]["enabled"], true, "{:?}", r.body);
    key
}

fn body() -> Value {
    json!({
        "model": "tollgate-test",
        "temperature": 0,
        "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hello" }],
    })
}

async fn send_raw(app: &TestApp, key: &str, raw: &str, headers: &[(&str, &str)]) -> Reply {
    let mut r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(raw.to_owned());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let reply = reply(r).await;
    // A miss is stored in a tracked task: wait for it, so the next request sees it.
    app.settled().await;
    reply
}

async fn send(app: &TestApp, key: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    send_raw(app, key, &body.to_string(), headers).await
}

fn cache_header(r: &Reply) -> Option<&str> {
    r.header("x-tollgate-cache")
}

#[tokio::test]
async fn exact_hits_misses_and_bypasses_say_so_in_their_headers() {
    let app = spawn_app().await;
    let key = cached_project(&app, "cached", json!({})).await;

    let first = send(&app, &key, &body(), &[]).await;
    assert_eq!((first.status, cache_header(&first)), (200, Some("miss")), "{:?}", first.body);
    assert!(first.header("age").is_none());
    let second = send(&app, &key, &body(), &[]).await;
    assert_eq!((second.status, cache_header(&second)), (200, Some("hit")), "{:?}", second.body);
    assert!(second.header("age").is_some_and(|a| a.parse::<u64>().is_ok()), "{:?}", second.headers);
    assert_eq!(second.body["choices"], first.body["choices"]);
    assert_eq!(second.body["usage"], first.body["usage"]);
    assert!(second.header("x-request-id").is_some() && second.header("x-ratelimit-limit").is_some());

    // Key order and whitespace: the same request.
    let reordered = r#"{ "messages": [ {"content": "Be brief.", "role": "system"}, {"role":"user","content":"Hello"} ],
        "temperature": 0.0, "model": "tollgate-test", "user": "someone" }"#;
    let r = send_raw(&app, &key, reordered, &[]).await;
    assert_eq!((r.status, cache_header(&r)), (200, Some("hit")), "{:?}", r.body);

    // no-cache: not looked up, stored; no-store: neither.
    let r = send(&app, &key, &body(), &[("cache-control", "no-cache")]).await;
    assert_eq!((r.status, cache_header(&r)), (200, Some("bypass")));
    let fresh =
        json!({ "model": "tollgate-test", "temperature": 0, "messages": [{ "role": "user", "content": "New" }] });
    let r = send(&app, &key, &fresh, &[("cache-control", "no-store")]).await;
    assert_eq!(cache_header(&r), Some("bypass"));
    let r = send(&app, &key, &fresh, &[]).await;
    assert_eq!(cache_header(&r), Some("miss"), "no-store stored nothing");
    let r = send(&app, &key, &fresh, &[("Cache-Control", "max-age=0, no-cache")]).await;
    assert_eq!(cache_header(&r), Some("bypass"));
    let r = send(&app, &key, &fresh, &[]).await;
    assert_eq!(cache_header(&r), Some("hit"));

    // Not deterministic (no temperature 0, no seed): bypassed by default...
    let sampled = json!({ "model": "tollgate-test", "messages": [{ "role": "user", "content": "Hello" }] });
    for _ in 0..2 {
        let r = send(&app, &key, &sampled, &[]).await;
        assert_eq!((r.status, cache_header(&r)), (200, Some("bypass")));
    }
    // ...but a seed makes it deterministic.
    let seeded = json!({ "model": "tollgate-test", "seed": 7, "temperature": 0.9, "messages": [{ "role": "user", "content": "Hello" }] });
    assert_eq!(cache_header(&send(&app, &key, &seeded, &[]).await), Some("miss"));
    assert_eq!(cache_header(&send(&app, &key, &seeded, &[]).await), Some("hit"));

    // A project with its cache off: no header, every request forwarded.
    let plain = app.project_key("plain", "pro").await;
    for _ in 0..2 {
        let r = send(&app, &plain, &body(), &[]).await;
        assert_eq!((r.status, cache_header(&r)), (200, None));
    }

    // A bad cache setting is a 400 naming it.
    for bad in [json!({ "ttl_secs": 0 }), json!({ "enabled": "yes" }), json!({ "colour": 1 }), json!(5)] {
        let r = app.admin(Method::PATCH, "/api/v1/projects/cached", Some(json!({ "cache": bad }))).await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("cache")), "{:?}", r.body);
    }
}

#[tokio::test]
async fn two_projects_sending_the_same_request_never_share_an_entry() {
    let app = spawn_app().await;
    let a = cached_project(&app, "tenant-a", json!({})).await;
    let b = cached_project(&app, "tenant-b", json!({})).await;
    assert_eq!(cache_header(&send(&app, &a, &body(), &[]).await), Some("miss"));
    assert_eq!(cache_header(&send(&app, &a, &body(), &[]).await), Some("hit"));
    assert_eq!(cache_header(&send(&app, &b, &body(), &[]).await), Some("miss"), "b never sees a's entry");
    assert_eq!(cache_header(&send(&app, &b, &body(), &[]).await), Some("hit"));
    // Another key of the same project shares the project's entries.
    let (a2, _) = app.create_key(json!({ "project": "tenant-a", "plan": "pro" })).await;
    assert_eq!(cache_header(&send(&app, &a2, &body(), &[]).await), Some("hit"));
}

#[tokio::test]
async fn the_ledger_records_hits_at_zero_cost_with_their_potential_cost_and_analytics_the_saving() {
    let app = spawn_app().await;
    let key = cached_project(&app, "saver", json!({})).await;
    let miss = send(&app, &key, &body(), &[]).await;
    assert_eq!(cache_header(&miss), Some("miss"));
    for _ in 0..3 {
        assert_eq!(cache_header(&send(&app, &key, &body(), &[]).await), Some("hit"));
    }
    let usage = app.usage("?project=saver").await;
    let rows = usage["data"].as_array().expect("rows").clone();
    assert_eq!(rows.len(), 4, "{usage}");
    let (hits, misses): (Vec<&Value>, Vec<&Value>) = rows.iter().partition(|r| r["usage_source"] == "cache");
    assert_eq!((hits.len(), misses.len()), (3, 1), "{usage}");
    let live = misses[0];
    // tollgate-test costs one micro-dollar per token.
    let tokens = live["prompt_tokens"].as_u64().expect("tokens") + live["completion_tokens"].as_u64().expect("tokens");
    assert!(tokens > 0);
    assert_eq!(live["cost_micros"].as_u64(), Some(tokens));
    assert_eq!(live["cache"], "miss");
    for hit in &hits {
        assert_eq!(hit["cache"], "hit", "{hit}");
        assert_eq!(hit["cost_micros"], 0, "{hit}");
        assert_eq!(hit["uncached_cost_micros"].as_u64(), Some(tokens), "the potential cost: {hit}");
        assert_eq!(hit["status"], 200);
        // Default: a hit counts as a request, not as tokens or cost.
        assert_eq!((hit["counted"].clone(), hit["requests"].clone()), (json!(true), json!(1)), "{hit}");
        assert_eq!((hit["prompt_tokens"].clone(), hit["completion_tokens"].clone()), (json!(0), json!(0)));
    }
    let r = app.admin(Method::GET, "/api/v1/analytics/summary?project=saver", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let totals = &r.body["totals"];
    assert_eq!(totals["requests"], 4, "{totals}");
    assert_eq!(totals["cost_micros"].as_u64(), Some(tokens), "{totals}");
    assert_eq!(totals["saved_micros"].as_u64(), Some(3 * tokens), "{totals}");
    let scrape = app.http.get(app.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    for line in [
        "tollgate_cache_requests_total{outcome=\"hit\"} 3".to_owned(),
        "tollgate_cache_requests_total{outcome=\"miss\"} 1".to_owned(),
        format!("tollgate_cache_saved_microdollars_total {}", 3 * tokens),
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} not in:\n{scrape}");
    }
}

#[tokio::test]
async fn hits_count_against_token_limits_only_when_the_project_says_so() {
    let app = spawn_app().await;
    // A plan with a daily token quota: only the live answer's tokens count by default.
    let r = app
        .admin(
            Method::POST,
            "/api/v1/plans",
            Some(
                json!({ "name": "tokens", "limits": [{ "metric": "total_tokens", "window": "day", "limit": 100000 }] }),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for (project, counts, hit_tokens) in
        [("by-request", json!({}), false), ("by-tokens", json!({ "tokens": true }), true)]
    {
        app.create_project(project).await;
        let r = app
            .admin(
                Method::PATCH,
                &format!("/api/v1/projects/{project}"),
                Some(json!({ "allowed_plans": ["tokens"], "cache": { "enabled": true, "hits_count": counts } })),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let (key, _) = app.create_key(json!({ "project": project, "plan": "tokens" })).await;
        let live = send(&app, &key, &body(), &[]).await;
        let live_tokens = live.body["usage"]["total_tokens"].as_u64().expect("usage");
        let after_live = live.header_u64("x-ratelimit-remaining-tokens");
        let hit = send(&app, &key, &body(), &[]).await;
        assert_eq!(cache_header(&hit), Some("hit"));
        // The next request's headers show what the hit was settled to.
        let next = send(&app, &key, &body(), &[]).await;
        let reserved_then_settled = next.header_u64("x-ratelimit-remaining-tokens");
        let usage = app.usage(&format!("?project={project}")).await;
        let charged: u64 =
            usage["data"].as_array().expect("rows").iter().map(|r| r["total_tokens"].as_u64().unwrap_or(0)).sum();
        let expected = if hit_tokens { 3 * live_tokens } else { live_tokens };
        assert_eq!(charged, expected, "{project}: {usage}");
        assert!(after_live >= reserved_then_settled, "{project}");
    }
}

#[tokio::test]
async fn a_streamed_hit_read_by_the_official_python_sdk_is_the_live_answer() {
    let app = spawn_app().await;
    let key = cached_project(&app, "streams", json!({})).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/cache_stream.py");
    let base = app.url("/v1");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("TOLLGATE_BASE_URL", base)
            .env("TOLLGATE_KEY", key)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs (the test command installs the openai package)");
    assert!(
        output.status.success(),
        "cache_stream.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let usage = app.usage("?project=streams").await;
    let sources: Vec<&str> =
        usage["data"].as_array().expect("rows").iter().filter_map(|r| r["usage_source"].as_str()).collect();
    assert_eq!(sources.iter().filter(|s| **s == "cache").count(), 3, "{usage}");
    assert_eq!(sources.iter().filter(|s| **s == "reported").count(), 1, "{usage}");
}

#[tokio::test]
async fn a_stream_cut_off_is_not_stored() {
    let app = spawn_app().await;
    let key = cached_project(&app, "cut", json!({})).await;
    let mut streamed = body();
    streamed["stream"] = json!(true);
    let r = send(&app, &key, &streamed, &[("x-mock-fault", "reset")]).await;
    assert_eq!(cache_header(&r), Some("miss"));
    let r = send(&app, &key, &streamed, &[]).await;
    assert_eq!(cache_header(&r), Some("miss"), "the broken stream was not stored");
    let r = send(&app, &key, &streamed, &[]).await;
    assert_eq!(cache_header(&r), Some("hit"), "the complete one was");
    let text = r.body.as_str().expect("an SSE body").to_owned();
    assert!(text.ends_with("data: [DONE]\n\n") && !text.contains("\"usage\""), "no usage asked for: {text}");
}
