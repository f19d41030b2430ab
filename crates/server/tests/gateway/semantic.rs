//! The semantic cache end to end (docs/caching.md): a paraphrase above the project's
//! threshold is a hit (`x-tollgate-cache-kind: semantic` and its similarity), a
//! question below it, another model or another system prompt is a miss; the ledger
//! holds the hit at zero cost with its potential cost and each embedding call as its
//! own row with its cost; a streamed semantic hit is read by the official Python SDK
//! like the live answer; an embedding call that fails is a miss, never an error.
//!
//! Embeddings come from the mock's `mock-semantic-embedding` model (hashed word
//! unigrams and bigrams): "What is the capital of France?" and "what is the capital of
//! France, please?" have a similarity of 0.93; "... of Spain?" 0.85.

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_mock_upstream::MockConfig;
use tollgate_mock_upstream::semantic::SEMANTIC_EMBEDDING_MODEL;

use crate::helpers::*;

const QUESTION: &str = "What is the capital of France?";
const PARAPHRASE: &str = "what is the capital of France, please?";
const OTHER_QUESTION: &str = "What is the capital of Spain?";

/// An app whose semantic cache embeds with the mock's semantic model, priced at one
/// micro-dollar per token; `mock` sets the mock's behaviour, `timeout_ms` the
/// embedding call's bound.
async fn semantic_app(mock: MockConfig, timeout_ms: u64) -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(MockConfig { expected_api_key: Some("sk-provider-test".into()), ..mock }).await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.cache.semantic_embedding_model = SEMANTIC_EMBEDDING_MODEL.to_owned();
    raw.cache.semantic_timeout_ms = timeout_ms;
    raw.prices.insert(
        SEMANTIC_EMBEDDING_MODEL.into(),
        tollgate_pricing::PriceOverride {
            input_per_mtok_micros: 1_000_000,
            cached_input_per_mtok_micros: None,
            output_per_mtok_micros: 0,
            long_context: None,
        },
    );
    let config = tollgate_server::config::Config::from_raw(raw).expect("valid config");
    let mut app = spawn_app_with(config).await;
    app.keep_dir(tmp);
    app
}

/// A project with its cache on and `cache` members merged in; returns a key of it.
async fn project(app: &TestApp, id: &str, cache: Value) -> String {
    let key = app.project_key(id, "pro").await;
    let mut settings = json!({ "enabled": true, "semantic": true });
    if let (Value::Object(s), Value::Object(extra)) = (&mut settings, cache) {
        s.extend(extra);
    }
    let r = app.admin(Method::PATCH, &format!("/api/v1/projects/{id}"), Some(json!({ "cache": settings }))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    key
}

fn chat(model: &str, system: &str, user: &str) -> Value {
    json!({ "model": model, "temperature": 0,
            "messages": [{ "role": "system", "content": system }, { "role": "user", "content": user }] })
}

async fn send(app: &TestApp, key: &str, body: &Value) -> Reply {
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(key).json(body)).await;
    // A miss is stored in a tracked task: wait for it, so the next request sees it.
    app.settled().await;
    r
}

fn outcome(r: &Reply) -> (u16, Option<&str>, Option<&str>) {
    (r.status, r.header("x-tollgate-cache"), r.header("x-tollgate-cache-kind"))
}

#[tokio::test]
async fn semantic_hits_need_the_threshold_the_model_and_the_system_prompt() {
    let app = semantic_app(MockConfig::default(), 10_000).await;
    let key = project(&app, "semantic", json!({ "semantic_threshold": 0.9 })).await;

    let live = send(&app, &key, &chat("tollgate-test", "Be brief.", QUESTION)).await;
    assert_eq!(outcome(&live), (200, Some("miss"), None), "{:?}", live.body);

    let hit = send(&app, &key, &chat("tollgate-test", "Be brief.", PARAPHRASE)).await;
    assert_eq!(outcome(&hit), (200, Some("hit"), Some("semantic")), "{:?}", hit.headers);
    let similarity: f64 = hit.header("x-tollgate-cache-similarity").expect("similarity").parse().expect("a number");
    assert!((0.9..1.0).contains(&similarity), "{similarity}");
    assert_eq!(hit.body["choices"], live.body["choices"]);
    assert_eq!(hit.body["usage"], live.body["usage"]);
    assert!(hit.header("age").is_some() && hit.header("x-ratelimit-limit").is_some(), "{:?}", hit.headers);

    // Close in words, but below the threshold: a different question.
    let r = send(&app, &key, &chat("tollgate-test", "Be brief.", OTHER_QUESTION)).await;
    assert_eq!(outcome(&r), (200, Some("miss"), None));
    // Another model, another system prompt: another partition, never a hit.
    let r = send(&app, &key, &chat("gpt-4o-mini", "Be brief.", PARAPHRASE)).await;
    assert_eq!(outcome(&r), (200, Some("miss"), None), "another model");
    let r = send(&app, &key, &chat("tollgate-test", "Answer at length.", PARAPHRASE)).await;
    assert_eq!(outcome(&r), (200, Some("miss"), None), "another system prompt");
    let mut with_tools = chat("tollgate-test", "Be brief.", PARAPHRASE);
    with_tools["max_tokens"] = json!(50);
    let r = send(&app, &key, &with_tools).await;
    assert_eq!(outcome(&r), (200, Some("miss"), None), "another parameter");

    // `Cache-Control: no-cache` skips the semantic lookup too (and stores the answer).
    let r = reply(
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("cache-control", "no-cache")
            .json(&chat("tollgate-test", "Be brief.", PARAPHRASE)),
    )
    .await;
    app.settled().await;
    assert_eq!(outcome(&r), (200, Some("bypass"), None));

    // The same request again: the exact cache answers first.
    let r = send(&app, &key, &chat("tollgate-test", "Be brief.", QUESTION)).await;
    assert_eq!(outcome(&r), (200, Some("hit"), Some("exact")));
    assert!(r.header("x-tollgate-cache-similarity").is_none());

    // The default threshold (0.95) is stricter: the paraphrase is a miss there; a
    // project without `semantic` gets exact hits only; projects never share entries.
    let strict = project(&app, "strict", json!({})).await;
    let r = app.admin(Method::GET, "/api/v1/projects/strict", None).await;
    assert_eq!(r.body["cache"]["semantic_threshold"], 0.95, "{:?}", r.body);
    assert_eq!(outcome(&send(&app, &strict, &chat("tollgate-test", "Be brief.", QUESTION)).await).1, Some("miss"));
    assert_eq!(outcome(&send(&app, &strict, &chat("tollgate-test", "Be brief.", PARAPHRASE)).await).1, Some("miss"));
    let exact_only = project(&app, "exact-only", json!({ "semantic": false, "semantic_threshold": 0.5 })).await;
    assert_eq!(outcome(&send(&app, &exact_only, &chat("tollgate-test", "Be brief.", QUESTION)).await).1, Some("miss"));
    let r = send(&app, &exact_only, &chat("tollgate-test", "Be brief.", PARAPHRASE)).await;
    assert_eq!(outcome(&r).1, Some("miss"), "semantic off");
    let other = project(&app, "other-tenant", json!({ "semantic_threshold": 0.5 })).await;
    let r = send(&app, &other, &chat("tollgate-test", "Be brief.", PARAPHRASE)).await;
    assert_eq!(outcome(&r).1, Some("miss"), "another project never sees semantic's entries");

    // Bad thresholds are a 400 naming the setting.
    for bad in [json!(0), json!(1.5), json!("high"), json!(-0.2)] {
        let r = app
            .admin(Method::PATCH, "/api/v1/projects/semantic", Some(json!({ "cache": { "semantic_threshold": bad } })))
            .await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{:?}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("cache.semantic_threshold"), "{:?}", r.body);
    }
}

#[tokio::test]
async fn the_ledger_holds_semantic_hits_at_zero_cost_and_each_embedding_call_with_its_cost() {
    let app = semantic_app(MockConfig::default(), 10_000).await;
    let key = project(&app, "ledger", json!({ "semantic_threshold": 0.9 })).await;
    assert_eq!(outcome(&send(&app, &key, &chat("tollgate-test", "Be brief.", QUESTION)).await).1, Some("miss"));
    let hit = send(&app, &key, &chat("tollgate-test", "Be brief.", PARAPHRASE)).await;
    assert_eq!(outcome(&hit).2, Some("semantic"));

    let usage = app.usage("?project=ledger").await;
    let rows = usage["data"].as_array().expect("rows").clone();
    let of = |endpoint: &str| rows.iter().filter(|r| r["endpoint"] == endpoint).cloned().collect::<Vec<Value>>();
    let (chats, embeddings) = (of("chat.completions"), of("embeddings"));
    assert_eq!((chats.len(), embeddings.len(), rows.len()), (2, 2, 4), "{usage}");
    // One embedding per lookup: the question's 7 words and the paraphrase's 8, at one
    // micro-dollar a token, on the project's key, not counted against its limits.
    let mut embedded: Vec<(u64, u64)> = embeddings
        .iter()
        .map(|r| {
            assert_eq!(r["model"], SEMANTIC_EMBEDDING_MODEL, "{r}");
            assert_eq!((r["status"].clone(), r["counted"].clone()), (json!(200), json!(false)), "{r}");
            assert_eq!(r["key_id"], chats[0]["key_id"], "{r}");
            (r["prompt_tokens"].as_u64().expect("tokens"), r["cost_micros"].as_u64().expect("cost"))
        })
        .collect();
    embedded.sort_unstable();
    assert_eq!(embedded, vec![(7, 7), (8, 8)], "{usage}");

    let live = chats.iter().find(|r| r["cache"] == "miss").expect("the live row");
    let cached = chats.iter().find(|r| r["cache"] == "hit").expect("the hit row");
    let live_cost = live["cost_micros"].as_u64().expect("cost");
    assert!(live_cost > 0);
    assert_eq!(cached["usage_source"], "cache", "{cached}");
    assert_eq!(cached["cost_micros"], 0, "{cached}");
    assert_eq!(cached["uncached_cost_micros"].as_u64(), Some(live_cost), "the potential cost: {cached}");

    let r = app.admin(Method::GET, "/api/v1/analytics/summary?project=ledger", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let totals = &r.body["totals"];
    assert_eq!(totals["saved_micros"].as_u64(), Some(live_cost), "{totals}");
    assert_eq!(totals["cost_micros"].as_u64(), Some(live_cost + 7 + 8), "the embeddings are spend: {totals}");
    let scrape = app.http.get(app.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    for line in [
        "tollgate_cache_semantic_lookups_total{outcome=\"hit\"} 1",
        "tollgate_cache_semantic_lookups_total{outcome=\"miss\"} 1",
        "tollgate_cache_semantic_lookups_total{outcome=\"failed\"} 0",
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} not in:\n{scrape}");
    }
}

#[tokio::test]
async fn a_streamed_semantic_hit_read_by_the_official_python_sdk_is_the_live_answer() {
    let app = semantic_app(MockConfig::default(), 10_000).await;
    let key = project(&app, "streams", json!({ "semantic_threshold": 0.9 })).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/semantic_stream.py");
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
        "semantic_stream.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let usage = app.usage("?project=streams").await;
    let chats: Vec<&Value> =
        usage["data"].as_array().expect("rows").iter().filter(|r| r["endpoint"] == "chat.completions").collect();
    assert_eq!(chats.iter().filter(|r| r["usage_source"] == "reported").count(), 1, "{usage}");
    assert!(chats.iter().filter(|r| r["usage_source"] == "cache").count() >= 2, "{usage}");
}

#[tokio::test]
async fn an_embedding_call_that_fails_is_a_miss_never_an_error() {
    // Every mock answer takes 300 ms; the embedding call may take 50: it never answers
    // in time, so every lookup is a miss and the request is answered as usual.
    let app = semantic_app(MockConfig { latency_ms: 300, ..MockConfig::default() }, 50).await;
    let key = project(&app, "slow", json!({ "semantic_threshold": 0.5 })).await;
    for user in [QUESTION, PARAPHRASE] {
        let r = send(&app, &key, &chat("tollgate-test", "Be brief.", user)).await;
        assert_eq!(outcome(&r), (200, Some("miss"), None), "{:?}", r.body);
        assert!(r.body["choices"][0]["message"]["content"].is_string(), "{:?}", r.body);
    }
    // Nothing was stored under an embedding, but the exact cache still works.
    let r = send(&app, &key, &chat("tollgate-test", "Be brief.", QUESTION)).await;
    assert_eq!(outcome(&r), (200, Some("hit"), Some("exact")));
    assert_eq!(app.state.semantic.as_ref().map(|s| s.index.len()), Some(0));
    let scrape = app.http.get(app.url("/metrics")).send().await.expect("scrape").text().await.expect("text");
    assert!(scrape.lines().any(|l| l == "tollgate_cache_semantic_lookups_total{outcome=\"failed\"} 2"), "{scrape}");
    // Each call given up is still on record: a 504 row, uncounted, without usage.
    let usage = app.usage("?project=slow").await;
    let rows = usage["data"].as_array().expect("rows");
    let embeddings: Vec<&Value> = rows.iter().filter(|r| r["endpoint"] == "embeddings").collect();
    assert_eq!(embeddings.len(), 2, "{usage}");
    assert!(embeddings.iter().all(|r| r["status"] == 504 && r["counted"] == false), "{usage}");
}
