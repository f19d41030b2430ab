//! Admission keeps its promises (issue 10, items 1, 2, 3, 4, 6 and 9): no prompt can
//! stall or crash the gateway, everything a request may generate is reserved, a
//! small token limit still admits requests, unknown models cannot escape cost limits,
//! a client leaving after the last content chunk does not lose the usage chunk, and a
//! malformed prompt is refused before it reaches the upstream.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

async fn key_with_limits(app: &TestApp, project: &str, plan: &str, limits: Value) -> String {
    app.create_project(project).await;
    app.create_key(json!({ "project": project, "plan": plan, "limits": limits })).await.0
}

fn records(usage: &Value) -> Vec<Value> {
    usage["data"].as_array().expect("records").clone()
}

/// Item 1. Whitespace prompts from 0.9 to 4 MiB under o200k (1 MB and more used to
/// panic inside tiktoken and drop the connection; 768 KB cost half a second of a
/// worker), against a key with token limits and one without, with and without
/// reported usage: every one is answered, and a small request beside them is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_of_megabytes_of_any_content_are_answered_while_others_are_served() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = tollgate_mock_upstream::spawn(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await
    .expect("mock");
    let mut config = config(tmp.path(), &mock.base_url());
    config.max_body_bytes = 5 * 1024 * 1024;
    let app = spawn_app_with(config).await;
    // chat-free: 100k tokens and $5 a day. "roomy": a billion tokens a day.
    let limited = app.project_key("limited", "chat-free").await;
    let roomy = key_with_limits(
        &app,
        "roomy",
        "pro",
        json!([{ "metric": "total_tokens", "window": "day", "limit": 1_000_000_000u64 }]),
    )
    .await;
    let small = app.project_key("bystander", "pro").await;

    let body = |content: String| json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": content }] });
    let cases: Vec<(&str, String, Value, Option<&str>)> = vec![
        ("4 MiB of spaces, limited", limited.clone(), body(" ".repeat(4 * 1024 * 1024 - 100)), None),
        // Escaped in JSON, each "\n\t" is 4 bytes: a 4 MiB body.
        ("4 MiB of newlines and tabs, limited", limited.clone(), body("\n\t".repeat(1024 * 1024 - 100)), None),
        ("1.1 MB of spaces, limited", limited.clone(), body(" ".repeat(1_100_000)), None),
        ("0.9 MB of spaces, limited", limited.clone(), body(" ".repeat(900_000)), None),
        ("4 MiB of spaces, roomy", roomy.clone(), body(" ".repeat(4 * 1024 * 1024 - 100)), None),
        ("1.1 MB of spaces, roomy, no usage", roomy.clone(), body(" ".repeat(1_100_000)), Some("no-usage")),
        ("0.9 MB of spaces, roomy, no usage", roomy.clone(), body(" ".repeat(900_000)), Some("no-usage")),
    ];
    let mut calls = tokio::task::JoinSet::new();
    for (name, key, body, fault) in cases {
        let mut request = app.http.post(app.url("/v1/chat/completions")).bearer_auth(key).json(&body);
        if let Some(fault) = fault {
            request = request.header("x-mock-fault", fault);
        }
        calls.spawn(async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("{name}: no answer: {e}"));
            let status = response.status().as_u16();
            let text = response.text().await.unwrap_or_else(|e| panic!("{name}: body broke: {e}"));
            (name, status, text)
        });
    }
    // While those are in flight, another client is served.
    let r = app.chat(&small).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(done) = calls.join_next().await {
        let (name, status, text) = done.expect("task");
        assert!((200..500).contains(&status), "{name}: {status} {text:.300}");
        if status >= 400 {
            let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text:.300}"));
            assert!(body["error"]["message"].is_string(), "{name}: {body}");
        }
        statuses.insert(name, status);
    }
    // The roomy key is admitted from the byte bound, without counting anything.
    assert_eq!(statuses["4 MiB of spaces, roomy"], 200);
    // A limited key's 0.9 MB prompt is only some thousand tokens: counted exactly
    // (its byte bound would be refused) and admitted.
    assert_eq!(statuses["0.9 MB of spaces, limited"], 200);
    assert_eq!(statuses["4 MiB of spaces, limited"], 400);
    let usage = app.usage("?project=roomy").await;
    for record in records(&usage) {
        if record["usage_source"] == "counted" {
            let prompt = record["prompt_tokens"].as_u64().expect("prompt tokens");
            assert!(prompt > 0 && prompt <= 1_100_100, "{record}");
        }
    }
    assert_eq!(records(&usage).iter().filter(|r| r["usage_source"] == "counted").count(), 2, "{usage}");
    let r = app.chat(&small).await;
    assert_eq!(r.status, 200, "the gateway still serves: {:?}", r.body);
}

/// Item 2. `n`, `best_of` and prompt arrays multiply what a request may generate.
#[tokio::test]
async fn n_best_of_and_prompt_arrays_are_reserved() {
    let app = spawn_app().await;
    let key =
        key_with_limits(&app, "acme", "pro", json!([{ "metric": "output_tokens", "window": "day", "limit": 1_000 }]))
            .await;
    let chat = |n: u64, max_tokens: u64| json!({ "model": "gpt-4o-mini", "n": n, "max_tokens": max_tokens, "messages": [{ "role": "user", "content": "Hi" }] });
    // 5 choices of up to 300 tokens: 1,500 > 1,000, whatever the window holds.
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&chat(5, 300))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("request_too_large")), "{:?}", r.body);
    // Four prompts of up to 300 tokens each, one completion each: 1,200.
    let four = json!({ "model": "gpt-3.5-turbo-instruct", "max_tokens": 300, "prompt": ["a", "b", "c", "d"] });
    let r = reply(app.http.post(app.url("/v1/completions")).bearer_auth(&key).json(&four)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("request_too_large")), "{:?}", r.body);
    // best_of 4 × 300 = 1,200 too.
    let best = json!({ "model": "gpt-3.5-turbo-instruct", "max_tokens": 300, "best_of": 4, "prompt": "a" });
    let r = reply(app.http.post(app.url("/v1/completions")).bearer_auth(&key).json(&best)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    // 2 × 300 fits, and the reservation is what is held in flight.
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&chat(2, 300))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // More than `limits.max_reserved_output_tokens` (1,000,000) is refused outright.
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&chat(128, 10_000))).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("max_tokens")), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("1280000")), "{:?}", r.body);
    let usage = app.usage("?project=acme").await;
    let counted: Vec<Value> = records(&usage).into_iter().filter(|r| r["counted"] == true).collect();
    assert_eq!(counted.len(), 1, "only the request that fits is forwarded: {usage}");
}

/// Item 3. Without `max_tokens`, the 4,096-token default used to be reserved, so a
/// 2,000-token limit refused every such request forever (with a Retry-After). The
/// default is clamped to what remains, and settled to what was used.
#[tokio::test]
async fn a_request_without_max_tokens_fits_a_small_token_limit() {
    let app = spawn_app().await;
    let key =
        key_with_limits(&app, "acme", "pro", json!([{ "metric": "total_tokens", "window": "day", "limit": 2_000 }]))
            .await;
    for _ in 0..3 {
        let r = app.chat(&key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    app.settled().await;
    let status = app.admin(Method::GET, "/api/v1/usage/status?project=acme", None).await;
    let limits = status.body["keys"][0]["limits"].as_array().expect("limits").clone();
    let tokens = limits.iter().find(|l| l["metric"] == "total_tokens").expect("token limit");
    assert_eq!(tokens["used"], 90, "settled to the mock's 10 + 20 tokens each: {tokens}");
    // An explicit max_tokens above the whole limit can never fit: 400, no Retry-After.
    let body =
        json!({ "model": "gpt-4o-mini", "max_tokens": 5_000, "messages": [{ "role": "user", "content": "Hi" }] });
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&body)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("request_too_large")), "{:?}", r.body);
    assert_eq!(r.header("retry-after"), None);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("2000 total_tokens per day") && !message.contains("uota quota"), "{message}");
}

/// Item 4. A model without a price cannot pass a cost limit as gpt-4o: refused by
/// default, or priced at the configured default and marked estimated; and an answer is
/// priced by the model it names.
#[tokio::test]
async fn unknown_models_are_refused_or_priced_as_configured_and_answers_by_their_model() {
    let app = spawn_app().await;
    // chat-free has cost limits.
    let key = app.project_key("acme", "chat-free").await;
    let body = json!({ "model": "gpt-4.5-preview", "messages": [{ "role": "user", "content": "Hi" }] });
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&body)).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("model")), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("gpt-4.5-preview")), "{:?}", r.body);
    // A requests-only key may use it; the answer names a priced model (1 µ$ a token).
    let plain = app.project_key("plain", "pro").await;
    let body = json!({ "model": "my-alias", "messages": [{ "role": "user", "content": "Hi" }] });
    let r = reply(
        app.http
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&plain)
            .header("x-mock-model", "tollgate-test")
            .json(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let streamed = json!({ "model": "my-alias", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
    let r = app.chat_body(&plain, streamed, &[("x-mock-model", "tollgate-test")]).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await.expect("stream");
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&plain).json(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let usage = app.usage("?project=plain").await;
    let mut priced: Vec<(u64, bool)> = records(&usage)
        .iter()
        .map(|r| (r["cost_micros"].as_u64().expect("cost"), r["price_estimated"].as_bool().expect("flag")))
        .collect();
    priced.sort_unstable();
    // 10 + 20 tokens at 1 µ$ (twice); the unpriced answer at gpt-4o's rates, estimated.
    assert_eq!(priced, vec![(30, false), (30, false), (225, true)], "{usage}");
    let _ = app.stop().await;

    // `unknown_model_policy = "default_price"` admits it at the configured price.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.unknown_model_policy = tollgate_server::config::UnknownModelPolicy::DefaultPrice;
    raw.default_price = Some(tollgate_pricing::PriceOverride {
        input_per_mtok_micros: 1_000_000,
        cached_input_per_mtok_micros: None,
        output_per_mtok_micros: 2_000_000,
        long_context: None,
    });
    let app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    let key = app.project_key("acme", "chat-free").await;
    let body = json!({ "model": "gpt-4.5-preview", "messages": [{ "role": "user", "content": "Hi" }] });
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let usage = app.usage("?project=acme").await;
    let record = &records(&usage)[0];
    assert_eq!(
        (record["cost_micros"].as_u64(), record["price_estimated"].as_bool()),
        (Some(50), Some(true)),
        "{record}"
    );
}

/// Item 6. A client that reads the last content chunk and closes the connection
/// used to lose the usage chunk that follows: the request was counted, not reported.
/// Now the upstream is drained briefly, in a tracked task, and its usage recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_the_last_content_chunk_still_gets_its_usage_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = tollgate_mock_upstream::spawn(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await
    .expect("mock");
    let mut config = config(tmp.path(), &mock.base_url());
    // Generous: the drain must outlast the test's own wait on a busy machine.
    config.drain_after_hangup = Duration::from_secs(60);
    let app = spawn_app_with(config).await;
    let key = app.project_key("acme", "chat-free").await;

    let http = reqwest::Client::new();
    let body = json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
    let response = http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-fault", "hold-usage")
        .header("x-mock-usage", "13,9")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // Read up to the chunk with finish_reason (the last content chunk), then leave.
    let mut response = response;
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"finish_reason\":\"stop\"") {
        let chunk = response.chunk().await.expect("chunk").expect("more chunks");
        seen.extend_from_slice(&chunk);
    }
    drop(response);
    drop(http);
    // The gateway notices the client left: the stream is dropped and drained in a
    // tracked task (before the fix it was settled at once, as counted).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.state.tasks.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never went on reading the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.release_held_usage();
    let usage = app.usage("?project=acme").await;
    let records = records(&usage);
    assert_eq!(records.len(), 1, "{usage}");
    let record = &records[0];
    assert_eq!(record["usage_source"], "reported", "{record}");
    assert_eq!((record["prompt_tokens"].as_u64(), record["completion_tokens"].as_u64()), (Some(13), Some(9)));
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
}

/// Item 9. Malformed prompts (invalid UTF-8 inside `messages`, wrong types) are
/// refused with an OpenAI-shaped 400 before admission: nothing reaches the upstream,
/// nothing is counted.
#[tokio::test]
async fn malformed_prompts_are_refused_before_the_upstream_and_charge_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = tollgate_mock_upstream::spawn(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await
    .expect("mock");
    let app = spawn_app_with(config(tmp.path(), &mock.base_url())).await;
    let key = app.project_key("acme", "chat-free").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "/v1/chat/completions",
            b"{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\xe9 \xff\"}]}".to_vec(),
        ),
        ("/v1/chat/completions", br#"{"model":"gpt-4o-mini","messages":"Hello"}"#.to_vec()),
        ("/v1/chat/completions", br#"{"model":"gpt-4o-mini","messages":[{"role":7,"content":"x"}]}"#.to_vec()),
        ("/v1/chat/completions", br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":{"a":1}}]}"#.to_vec()),
        ("/v1/chat/completions", br#"{"model":"gpt-4o-mini"}"#.to_vec()),
        ("/v1/completions", br#"{"model":"gpt-3.5-turbo-instruct","prompt":{"text":"x"}}"#.to_vec()),
        ("/v1/completions", b"{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"\xc3\x28\"}".to_vec()),
        ("/v1/embeddings", br#"{"model":"text-embedding-3-small","input":[true]}"#.to_vec()),
        ("/v1/embeddings", br#"{"model":"text-embedding-3-small","input":[]}"#.to_vec()),
    ];
    for (path, body) in cases {
        let r = reply(
            app.http
                .post(app.url(path))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
        .await;
        let shown = String::from_utf8_lossy(&body);
        assert_eq!(r.status, 400, "{path} {shown}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{shown}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_request", "{shown}: {:?}", r.body);
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{shown}");
    }
    assert_eq!(mock.requests_served(), 0, "nothing reached the upstream");
    let usage = app.usage("?project=acme").await;
    assert_eq!(records(&usage).len(), 0, "nothing recorded or counted: {usage}");
}
