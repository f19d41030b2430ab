//! Long requests (issue 10, item 5): a reservation lives as long as its request, and
//! every request has a total deadline (`upstream.total_timeout_secs`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_mock_upstream::{MockConfig, RunningMock};
use tollgate_store::clock::now_ms;

use crate::helpers::*;

fn records(usage: &Value) -> Vec<Value> {
    usage["data"].as_array().expect("records").clone()
}

fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
}

async fn mock() -> RunningMock {
    let config = MockConfig { expected_api_key: Some("sk-provider-test".into()), ..Default::default() };
    tollgate_mock_upstream::spawn(config).await.expect("mock")
}

/// What the key's monthly token limit has counted, from the status endpoint.
async fn tokens_used(app: &TestApp, key_id: &str) -> u64 {
    let status = app.admin(Method::GET, &format!("/api/v1/usage/status?key={key_id}"), None).await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    let limits = status.body["limits"].as_array().expect("limits");
    let tokens = limits.iter().find(|l| l["name"] == "total_tokens_per_month").expect("token limit");
    tokens["used"].as_u64().expect("used")
}

/// A stream still running when the old fixed ten-minute reservation TTL had passed
/// lost its settlement: `prune` forgot the reservation, and the estimate stayed
/// charged instead of the usage. Time is driven through `prune(now)`: the
/// reservation is held for the request's deadline, so the late settlement lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_running_past_ten_minutes_keeps_its_reservation_and_is_settled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = mock().await;
    let app = spawn_app_with(config(tmp.path(), &mock.base_url())).await;
    app.create_project("acme").await;
    let limits = json!([{ "metric": "total_tokens", "window": "month", "limit": 1_000_000 }]);
    let (key, key_id) = app.create_key(json!({ "project": "acme", "plan": "pro", "limits": limits })).await;

    let body = json!({
        "model": "gpt-4o-mini", "stream": true, "max_tokens": 2_000,
        "messages": [{ "role": "user", "content": "Hi" }],
    });
    let mut response = app
        .http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-fault", "hold-usage")
        .header("x-mock-usage", "13,9")
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"finish_reason\":\"stop\"") {
        seen.extend_from_slice(&response.chunk().await.expect("chunk").expect("more chunks"));
    }
    // The stream is still open, its usage held back. Eleven minutes pass for the
    // limiter: the reservation must still be there.
    assert!(tokens_used(&app, &key_id).await >= 2_000, "the estimate is charged while the stream runs");
    app.state.limiter.prune(now_ms() + 11 * 60 * 1_000).await.expect("prune");
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 1, "the reservation outlived 10 minutes");

    mock.release_held_usage();
    while let Some(chunk) = response.chunk().await.expect("chunk") {
        seen.extend_from_slice(&chunk);
    }
    app.settled().await;
    assert_eq!(tokens_used(&app, &key_id).await, 22, "settled to the reported usage, not left at the estimate");
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
}

/// A stream that keeps its connection open past the total deadline (here: one chunk,
/// then silence shorter than the per-chunk timeout) ends with an OpenAI-shaped error
/// event and is charged for what it delivered; an answer whose head has not come by
/// the deadline is a 504. Before, only the per-chunk timeout ended either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_total_deadline_ends_with_a_clear_error_and_is_settled() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = mock().await;
    let mut config = config(tmp.path(), &mock.base_url());
    config.upstream.read_timeout = Duration::from_secs(120);
    // Long enough for the head to come on a busy machine, far below the chunk timeout.
    config.total_timeout = Duration::from_secs(3);
    let app = spawn_app_with(config).await;
    let key = app.project_key("acme", "pro").await;

    let body = json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
    let response = app.chat_body(&key, body, &[("x-mock-fault", "stall")]).await;
    assert_eq!(response.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(60), response.text())
        .await
        .expect("the stream ends at the total deadline, not at the per-chunk timeout")
        .expect("body");
    let data = events(&text);
    let last: Value = serde_json::from_str(data.last().expect("an event")).expect("the last event is JSON");
    assert_eq!(last["error"]["code"], "request_timeout", "{text}");
    assert_eq!(last["error"]["type"], "upstream_error", "{text}");

    let plain = json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hi" }] });
    let late = app.chat_body(&key, plain, &[("x-mock-latency-ms", "30000")]).await;
    assert_eq!(late.status(), 504, "no head by the deadline");

    let usage = app.usage("?project=acme").await;
    let records = records(&usage);
    let streamed = records.iter().find(|r| r["status"] == 200).expect("the stream's record");
    assert_eq!(streamed["counted"], true, "{streamed}");
    assert_eq!(streamed["usage_source"], "counted", "charged for what was delivered: {streamed}");
    assert!(streamed["prompt_tokens"].as_u64() > Some(0), "{streamed}");
    let timed_out = records.iter().find(|r| r["status"] == 504).expect("the 504's record");
    assert_eq!(timed_out["counted"], false, "a 504 is refunded: {timed_out}");
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
}
