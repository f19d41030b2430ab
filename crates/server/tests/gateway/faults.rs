//! Upstream faults, driven by the mock: slow, 5xx, 429, malformed JSON, a reset or a
//! stall mid-stream. The client gets a clear OpenAI-shaped error, the reservation is
//! refunded (or settled to what was delivered), and everyone else keeps being served.

use serde_json::{Value, json};

use crate::helpers::*;

async fn minute_remaining(app: &TestApp, key: &str) -> u64 {
    app.settled().await;
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    v.body["limits"][0]["remaining"].as_u64().expect("remaining")
}

#[tokio::test]
async fn non_streaming_faults_are_clear_errors_and_refunded() {
    let app = spawn_app_with_timeout(1).await;
    let key = app.project_key("acme", "free").await;
    // Slower than the upstream timeout (1 s here): 504.
    let r = app.chat_with(&key, &[("x-mock-latency-ms", "2000")]).await;
    assert_eq!(r.status, 504, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "upstream_timeout");
    // 2xx with a body that is not JSON: 502, not a pass-through of garbage.
    let r = app.chat_with(&key, &[("x-mock-fault", "malformed")]).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "upstream_invalid_response");
    // The connection drops halfway through the JSON: 502.
    let r = app.chat_with(&key, &[("x-mock-fault", "reset")]).await;
    assert_eq!(r.status, 502, "{:?}", r.body);
    assert_eq!(r.body["error"]["type"], "upstream_error");
    // A stall mid-body is a timeout.
    let r = app.chat_with(&key, &[("x-mock-fault", "stall")]).await;
    assert!([502, 504].contains(&r.status), "{:?}", r.body);
    let r = app.chat_with(&key, &[("x-mock-status", "503")]).await;
    assert_eq!(r.status, 503);
    assert_eq!(minute_remaining(&app, &key).await, 10, "every failure was refunded");

    // No usage reported: counted with the tokenizer, charged.
    let r = app.chat_with(&key, &[("x-mock-fault", "no-usage")]).await;
    assert_eq!(r.status, 200);
    let usage = app.usage("").await;
    assert_eq!(usage["data"][0]["usage_source"], "counted");
    assert!(usage["data"][0]["completion_tokens"].as_u64().is_some_and(|t| t > 0));
    let statuses: Vec<u64> =
        usage["data"].as_array().expect("rows").iter().filter_map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses.len(), 6, "every request is in the ledger: {statuses:?}");
    // Everyone else is still served.
    assert_eq!(app.chat(&key).await.status, 200);
}

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<Value> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).filter_map(|d| serde_json::from_str(d).ok()).collect()
}

#[tokio::test]
async fn a_broken_or_stalled_stream_ends_with_an_error_event_and_is_charged_for_what_was_delivered() {
    let app = spawn_app_with_timeout(1).await;
    let key = app.project_key("acme", "pro").await;
    for (fault, code) in [("reset", "upstream_stream_broken"), ("stall", "upstream_timeout")] {
        let body = json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
        let r = app.chat_body(&key, body, &[("x-mock-fault", fault)]).await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.expect("the stream ends cleanly");
        let events = events(&text);
        let last = events.last().expect("events");
        assert_eq!(last["error"]["code"], code, "{fault}: {text}");
        assert!(events.iter().any(|e| e["choices"].is_array()), "{fault}: content came before the break");
    }
    let usage = app.usage("").await;
    for row in usage["data"].as_array().expect("rows") {
        assert_eq!(row["usage_source"], "counted", "{row}");
        assert_eq!(row["counted"], true);
    }
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0);
    assert_eq!(app.chat(&key).await.status, 200);
}
