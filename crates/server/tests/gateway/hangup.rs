//! A client that hangs up does not make its request vanish: the pipeline lets the
//! upstream call finish in a tracked task, records the request with the upstream's
//! own usage, and settles its reservation (ARCHITECTURE.md, "Every request ends in
//! the ledger").

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_client_that_hangs_up_before_a_slow_upstream_answers_still_leaves_a_record_and_a_settled_reservation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = tollgate_mock_upstream::spawn(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await
    .expect("mock");
    let app = spawn_app_with(config(tmp.path(), &mock.base_url())).await;
    // chat-free has token and cost limits: the reservation is an estimate that the
    // settlement must replace by the upstream's reported usage.
    let key = app.project_key("acme", "chat-free").await;

    let http = reqwest::Client::new();
    let request = http
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-mock-latency-ms", "1500")
        .header("x-mock-usage", "11,7")
        .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hello" }] }));
    let call = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
    // Admission is over once the upstream has the request; then the client leaves.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while mock.requests_served() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the request never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 1, "the reservation is held in flight");
    call.abort();
    assert!(call.await.is_err(), "the client task was cancelled before an answer");
    drop(http);

    // `usage` waits for every tracked task (the upstream call the client left
    // included), then for the ledger commit.
    let usage = app.usage("?project=acme").await;
    let records = usage["data"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{usage}");
    let record = &records[0];
    assert_eq!(record["status"], 200, "{record}");
    assert_eq!(record["usage_source"], "reported", "{record}");
    assert_eq!((record["prompt_tokens"].as_u64(), record["completion_tokens"].as_u64()), (Some(11), Some(7)));
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0, "the reservation was settled");
    // The counters hold the settled usage (7 output tokens), not the 4096 reserved.
    let status = app.admin(reqwest::Method::GET, "/api/v1/usage/status?project=acme", None).await;
    let limits = status.body["keys"][0]["limits"].as_array().expect("limits").clone();
    let tokens_today =
        limits.iter().find(|l| l["metric"] == "total_tokens" && l["window"] == "day").expect("daily token limit");
    assert_eq!(tokens_today["used"], 18, "{status:?}", status = status.body);
}
