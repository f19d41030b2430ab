//! More of the wire surface through the real gateway, in front of the real mock:
//! Anthropic's `/v1/messages` (plain, streamed, refused, broken) to the Anthropic
//! upstream, OpenAI's `/v1/responses`, `/v1/models/{id}` and the 404 of what is not
//! proxied; and the official `anthropic` and `openai` Python SDKs against them.

use serde_json::{Value, json};

use crate::helpers::{TestApp, reply, spawn_app};

fn messages_body(stream: bool) -> Value {
    json!({ "model": "claude-sonnet-4-5", "max_tokens": 100, "stream": stream,
        "messages": [{ "role": "user", "content": "Hello" }] })
}

async fn messages(app: &TestApp, key: &str, body: Value, headers: &[(&str, &str)]) -> reqwest::Response {
    // As Anthropic's SDKs send it: the key as `x-api-key`, with `anthropic-version`.
    let mut r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("request sent")
}

/// The ledger rows of `endpoint`.
async fn ledger_rows(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let usage = app.usage("").await;
    let rows = usage["data"].as_array().cloned().unwrap_or_default();
    rows.into_iter().filter(|r| r["endpoint"] == endpoint).collect()
}

/// The `data` of every SSE event, and the name of every `event:` line.
fn sse(text: &str) -> (Vec<Value>, Vec<String>) {
    let data = text.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok());
    let names = text.lines().filter_map(|l| l.strip_prefix("event: ")).map(str::to_owned);
    (data.collect(), names.collect())
}

#[tokio::test]
async fn messages_plain_and_streamed_are_recorded_with_their_tokens_and_cost() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let r = messages(&app, &key, messages_body(false), &[("x-mock-usage", "17,23")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-ratelimit-limit").is_some(), "rate-limit headers on /v1/messages");
    let body: Value = r.json().await.expect("json");
    assert_eq!((body["type"].as_str(), body["usage"]["input_tokens"].as_u64()), (Some("message"), Some(17)));

    // Streamed, with the key as a bearer token this time (the SDK's `auth_token`).
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-usage", "5,6")
        .json(&messages_body(true))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/event-stream"));
    let (data, names) = sse(&r.text().await.expect("stream"));
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"), "the clean end reaches the client");
    let text: String = data.iter().filter_map(|d| d["delta"]["text"].as_str()).collect();
    assert_eq!(text, "Hello from the tollgate mock upstream.");

    // Anthropic's free token count is passed through, not limited and not recorded.
    let r = reply(
        app.http
            .post(app.url("/v1/messages/count_tokens"))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-usage", "42,0")
            .json(&json!({ "model": "claude-sonnet-4-5", "messages": [{ "role": "user", "content": "Hello" }] })),
    )
    .await;
    assert_eq!((r.status, r.body["input_tokens"].as_u64()), (200, Some(42)), "{}", r.body);
    let r = reply(app.http.post(app.url("/v1/messages/count_tokens")).header("x-api-key", &key).json(&json!({}))).await;
    assert_eq!((r.status, r.body["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{}", r.body);

    let rows = ledger_rows(&app, "messages").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    // claude-sonnet-4-5: $3 per million input tokens, $15 per million output tokens.
    for (input, output, cost) in [(17, 23, 17 * 3 + 23 * 15), (5, 6, 5 * 3 + 6 * 15)] {
        let row = rows.iter().find(|r| r["completion_tokens"] == output).expect("row");
        assert_eq!(row["prompt_tokens"], input, "{row}");
        assert_eq!(row["cost_micros"], cost, "{row}");
        assert_eq!((row["provider"].as_str(), row["status"].as_u64()), (Some("anthropic"), Some(200)), "{row}");
        assert_eq!(row["usage_source"], "reported", "{row}");
    }
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
}

#[tokio::test]
async fn a_quota_refusal_on_messages_keeps_the_seeds_body_in_anthropics_error_shape() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let (key, _) = app
        .create_key(json!({ "project": "acme", "plan": "free",
            "limits": [{ "metric": "requests", "window": "month", "limit": 1 }] }))
        .await;
    assert_eq!(messages(&app, &key, messages_body(false), &[]).await.status(), 200);
    let r = reply(
        app.http
            .post(app.url("/v1/messages"))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&messages_body(false)),
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.header_u64("x-quota-remaining"), 0);
    assert_eq!(r.body["type"], "error", "{}", r.body);
    let error = &r.body["error"];
    assert_eq!(error["type"], "rate_limit_error", "the anthropic SDK's RateLimitError");
    assert_eq!(error["code"], "quota_exceeded");
    assert_eq!(error["message"], "Monthly quota exceeded. Upgrade your plan or wait until quota resets.");
    let d = &error["details"];
    assert_eq!((d["used"].as_u64(), d["limit"].as_u64(), d["remaining"].as_u64()), (Some(1), Some(1), Some(0)));

    // A bad body and a missing key are 4xx in the same shape, not forwarded.
    let r = reply(app.http.post(app.url("/v1/messages")).header("x-api-key", &key).body("{\"model\":")).await;
    assert_eq!((r.status, r.body["error"]["type"].as_str()), (400, Some("invalid_request_error")), "{}", r.body);
    let r = reply(app.http.post(app.url("/v1/messages")).json(&messages_body(false))).await;
    assert_eq!((r.status, r.body["error"]["type"].as_str()), (401, Some("authentication_error")), "{}", r.body);

    let refused = ledger_rows(&app, "messages").await;
    assert!(refused.iter().any(|r| r["status"] == 429 && r["counted"] == false), "{refused:?}");
}

#[tokio::test]
async fn a_broken_anthropic_stream_ends_with_an_error_event_and_is_recorded() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let r = messages(&app, &key, messages_body(true), &[("x-mock-fault", "reset")]).await;
    assert_eq!(r.status(), 200);
    let (data, names) = sse(&r.text().await.expect("stream"));
    assert_eq!(names.last().map(String::as_str), Some("error"), "{names:?}");
    let last = data.last().expect("an error event");
    assert_eq!((last["type"].as_str(), last["error"]["type"].as_str()), (Some("error"), Some("api_error")));
    assert_eq!(last["error"]["code"], "upstream_stream_broken");
    let rows = ledger_rows(&app, "messages").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    // Cut before `message_delta`: no final usage, so the prompt and the delivered
    // text are counted.
    assert_eq!(rows[0]["usage_source"], "counted", "{}", rows[0]);
    assert!(rows[0]["prompt_tokens"].as_u64().is_some_and(|t| t > 0), "{}", rows[0]);
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0, "reservation settled");

    // A plain answer without usage is counted: the prompt and the message's text.
    let r = messages(&app, &key, messages_body(false), &[("x-mock-fault", "no-usage")]).await;
    assert_eq!(r.status(), 200);
    let all = ledger_rows(&app, "messages").await;
    let counted: Vec<_> = all.iter().filter(|r| r["usage_source"] == "counted").collect();
    assert_eq!(counted.len(), 2, "{all:?}");
    // The cut stream delivered no text; the whole answer did.
    assert!(counted.iter().any(|r| r["completion_tokens"].as_u64().is_some_and(|t| t > 0)), "{all:?}");

    // An upstream error status passes through in Anthropic's own shape, refunded.
    let r = reply(
        app.http
            .post(app.url("/v1/messages"))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("x-mock-status", "529")
            .json(&messages_body(false)),
    )
    .await;
    assert_eq!((r.status, r.body["error"]["type"].as_str()), (529, Some("overloaded_error")), "{}", r.body);
}

#[tokio::test]
async fn responses_plain_and_streamed_are_recorded_from_their_usage() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let body = json!({ "model": "gpt-4o-mini", "input": "Hello", "max_output_tokens": 50 });
    let r = reply(app.http.post(app.url("/v1/responses")).bearer_auth(&key).header("x-mock-usage", "11,4").json(&body))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["usage"]["output_tokens"], 4);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let r = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(&key)
        .header("x-mock-usage", "13,8")
        .json(&streamed)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let (data, names) = sse(&r.text().await.expect("stream"));
    assert_eq!(names.last().map(String::as_str), Some("response.completed"));
    assert_eq!(data.last().map(|d| d["response"]["usage"]["input_tokens"].clone()), Some(json!(13)));

    let rows = ledger_rows(&app, "responses").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (input, output) in [(11, 4), (13, 8)] {
        let row = rows.iter().find(|r| r["completion_tokens"] == output).expect("row");
        assert_eq!((row["prompt_tokens"].as_u64(), row["provider"].as_str()), (Some(input), Some("openai")), "{row}");
        assert_eq!(row["usage_source"], "reported", "{row}");
        assert!(row["cost_micros"].as_u64().is_some_and(|c| c > 0), "{row}");
    }

    // A broken stream ends with a Responses `error` event carrying OpenAI's error
    // object, and is recorded.
    let r = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(&key)
        .header("x-mock-fault", "reset")
        .json(&streamed)
        .send()
        .await
        .expect("sent");
    let (data, names) = sse(&r.text().await.expect("stream"));
    assert_eq!(names.last().map(String::as_str), Some("error"), "{names:?}");
    let last = data.last().expect("error event");
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("upstream_stream_broken")));
    assert_eq!(last["error"]["type"], "upstream_error");
    assert_eq!(ledger_rows(&app, "responses").await.len(), 3);

    // A malformed input is a 400 before the upstream.
    let bad = json!({ "model": "gpt-4o-mini", "input": 5 });
    let r = reply(app.http.post(app.url("/v1/responses")).bearer_auth(&key).json(&bad)).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("input")), "{}", r.body);
}

#[tokio::test]
async fn a_model_is_retrieved_and_what_is_not_proxied_is_a_404_in_openais_shape() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let r = reply(app.http.get(app.url("/v1/models/gpt-4o-mini")).bearer_auth(&key)).await;
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some("gpt-4o-mini")), "{}", r.body);
    let r = reply(app.http.get(app.url("/v1/models/no-such-model")).bearer_auth(&key)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("model_not_found")), "{}", r.body);
    let r = reply(app.http.get(app.url("/v1/models/gpt-4o-mini")).bearer_auth("tg_nope")).await;
    assert_eq!(r.status, 401);
    for path in ["/v1/models/..%2Fchat%2Fcompletions", "/v1/models/a%20b", "/v1/models/%FF%FE"] {
        let r = reply(app.http.get(app.url(path)).bearer_auth(&key)).await;
        assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("model")), "{path}: {}", r.body);
    }
    for (method, path) in [(reqwest::Method::POST, "/v1/audio/speech"), (reqwest::Method::GET, "/v1/files")] {
        let r = reply(app.http.request(method, app.url(path)).bearer_auth(&key)).await;
        assert_eq!(r.status, 404, "{path}");
        let error = &r.body["error"];
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("invalid_request_error"), Some("unknown_endpoint"))
        );
        assert!(error["message"].as_str().is_some_and(|m| m.contains(path)), "{}", r.body);
    }
}

#[tokio::test]
async fn the_official_anthropic_and_openai_python_sdks_work_through_tollgate() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let (limited, _) = app
        .create_key(json!({ "project": "acme", "plan": "pro",
            "limits": [{ "metric": "requests", "window": "month", "limit": 1 }] }))
        .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/native_sdks.py");
    let base = app.url("");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("TOLLGATE_URL", base)
            .env("TOLLGATE_KEY", key)
            .env("TOLLGATE_LIMITED_KEY", limited)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs (scripts/test.sh installs the openai and anthropic packages)");
    assert!(
        output.status.success(),
        "native_sdks.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = ledger_rows(&app, "messages").await;
    assert!(rows.iter().filter(|r| r["status"] == 200).count() >= 3, "{rows:?}");
}

#[tokio::test]
async fn a_client_that_leaves_an_anthropic_stream_before_message_delta_still_gets_its_usage_recorded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = tollgate_mock_upstream::spawn(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await
    .expect("mock");
    let mut config = crate::helpers::config(tmp.path(), &mock.base_url());
    // Generous: the drain must outlast the test's own wait on a busy machine.
    config.drain_after_hangup = std::time::Duration::from_secs(60);
    let app = crate::helpers::spawn_app_with(config).await;
    let key = app.project_key("acme", "pro").await;
    let http = reqwest::Client::new();
    let mut response = http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .header("anthropic-version", "2023-06-01")
        .header("x-mock-fault", "hold-usage")
        .header("x-mock-usage", "13,9")
        .json(&messages_body(true))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    // Read up to the last content block's end, then leave: `message_delta` (the output
    // tokens) is still held by the mock.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("event: content_block_stop") {
        let chunk = response.chunk().await.expect("chunk").expect("more chunks");
        seen.extend_from_slice(&chunk);
    }
    drop(response);
    drop(http);
    // The gateway notices the client left and goes on reading in a tracked task.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.state.tasks.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the gateway never went on reading the upstream");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    mock.release_held_usage();
    let rows = ledger_rows(&app, "messages").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["usage_source"], "reported", "{}", rows[0]);
    assert_eq!((rows[0]["prompt_tokens"].as_u64(), rows[0]["completion_tokens"].as_u64()), (Some(13), Some(9)));
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
}
