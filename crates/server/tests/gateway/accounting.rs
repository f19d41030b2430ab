//! Exact accounting: streams, counted usage, token and cost quotas under
//! concurrency, IP and anonymous limits, usage events, status.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// The `data:` payloads of an SSE body.
fn events(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_owned).collect()
}

async fn key_with_limits(app: &TestApp, project: &str, limits: Value) -> (String, String) {
    app.create_project(project).await;
    app.create_key(json!({ "project": project, "plan": "pro", "limits": limits })).await
}

#[tokio::test]
async fn a_stream_is_accounted_from_the_upstream_usage_and_the_client_sees_no_extra_chunk() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let body = json!({ "model": "gpt-4o-mini", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
    let r = app.chat_body(&key, body, &[("x-mock-usage", "17,23")]).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/event-stream"));
    let text = r.text().await.expect("stream");
    let data = events(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for chunk in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(chunk).expect("chunk is JSON");
        assert!(v.get("usage").is_none_or(Value::is_null), "client did not ask for usage: {chunk}");
        assert!(v["choices"].as_array().is_some_and(|c| !c.is_empty()), "no usage-only chunk: {chunk}");
    }
    let usage = app.usage("").await;
    let row = &usage["data"][0];
    assert_eq!((row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()), (Some(17), Some(23)));
    assert_eq!(row["usage_source"], "reported");
    assert!(row["cost_micros"].as_u64().is_some_and(|c| c > 0), "{row}");
    assert!(row["price_version"].is_string());

    // A client that asks for usage gets its usage chunk, untouched.
    let body = json!({ "model": "gpt-4o-mini", "stream": true, "stream_options": { "include_usage": true },
        "messages": [{ "role": "user", "content": "Hi" }] });
    let text = app.chat_body(&key, body, &[("x-mock-usage", "5,6")]).await.text().await.expect("stream");
    let data = events(&text);
    let last: Value = serde_json::from_str(&data[data.len() - 2]).expect("usage chunk");
    assert_eq!(last["usage"]["completion_tokens"], 6);
    assert_eq!(last["choices"], json!([]));
}

#[tokio::test]
async fn a_stream_cut_in_the_middle_is_counted_and_settled() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "pro").await;
    let body = json!({ "model": "gpt-4o-mini", "stream": true, "max_tokens": 500,
        "messages": [{ "role": "user", "content": "Tell me a story" }] });
    let r = app.chat_body(&key, body, &[("x-mock-fault", "reset")]).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await; // the body breaks off: an error or a short body
    let usage = app.usage("").await;
    let row = &usage["data"][0];
    assert_eq!(row["usage_source"], "counted", "{row}");
    assert!(row["prompt_tokens"].as_u64().is_some_and(|t| t > 0));
    assert!(row["completion_tokens"].as_u64().is_some_and(|t| t > 0), "delivered text is charged: {row}");
    assert_eq!(app.state.limiter.held_reservations().await.expect("held"), 0, "reservation settled");
}

#[tokio::test]
async fn a_daily_cost_quota_stops_a_key_within_one_request_of_the_limit() {
    let app = spawn_app().await;
    // $0.09 a day; each call really costs 20,000 micros ($0.02) but reserves far less
    // (a short prompt and max_tokens 100): the documented overrun bound is one
    // in-flight request's actual-minus-reserved.
    let (key, id) =
        key_with_limits(&app, "acme", json!([{ "metric": "cost_micros", "window": "day", "limit": 90_000 }])).await;
    let body =
        json!({ "model": "tollgate-test", "max_tokens": 100, "messages": [{ "role": "user", "content": "Hi" }] });
    let mut admitted = 0;
    for _ in 0..10 {
        let r = app.chat_body(&key, body.clone(), &[("x-mock-usage", "10000,10000")]).await;
        let status = r.status().as_u16();
        let reply: Value = r.json().await.expect("json");
        if status == 429 {
            assert_eq!(reply["error"]["code"], "quota_exceeded");
            assert_eq!(
                reply["error"]["message"],
                "Daily quota exceeded. Upgrade your plan or wait until quota resets."
            );
            break;
        }
        assert_eq!(status, 200);
        admitted += 1;
        app.settled().await;
    }
    assert_eq!(admitted, 5, "4 calls leave 10,000 under the limit, the 5th is admitted and overruns by 10,000");
    let usage = app.usage(&format!("?key={id}")).await;
    let spent: u64 = usage["data"].as_array().expect("rows").iter().filter_map(|r| r["cost_micros"].as_u64()).sum();
    assert_eq!(spent, 100_000);
    assert!(spent <= 90_000 + 20_000, "within one request of the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_requests_never_exceed_a_token_quota() {
    let app = spawn_app().await;
    let (key, id) = key_with_limits(
        &app,
        "acme",
        json!([
            { "metric": "requests", "window": "minute", "limit": 100_000 },
            { "metric": "total_tokens", "window": "day", "limit": 3_000 }
        ]),
    )
    .await;
    // Each call reports 1 prompt and 20 completion tokens and reserves its counted
    // prompt plus max_tokens 20, so actual <= reserved: no overrun is possible.
    let body = json!({ "model": "gpt-4o-mini", "max_tokens": 20, "messages": [{ "role": "user", "content": "Hi" }] });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..500 {
        let (http, url, key, body) = (app.http.clone(), app.url("/v1/chat/completions"), key.clone(), body.clone());
        tasks.spawn(async move {
            let r = http.post(url).bearer_auth(key).header("x-mock-usage", "1,20").json(&body).send().await;
            let r = r.expect("sent");
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        });
    }
    let (mut ok, mut refused) = (0u64, 0u64);
    while let Some(status) = tasks.join_next().await {
        match status.expect("task") {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!(ok + refused, 500);
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
    let usage = app.usage(&format!("?key={id}&limit=1000")).await;
    let tokens: u64 = usage["data"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["counted"] == true)
        .filter_map(|r| r["total_tokens"].as_u64())
        .sum();
    assert_eq!(tokens, ok * 21);
    assert!(tokens <= 3_000, "{tokens} tokens admitted against 3,000");
}

#[tokio::test]
async fn ip_and_anonymous_limits_hold() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let ip_limit = json!([{ "metric": "requests", "window": "minute", "limit": 3, "subject": "ip" }]);
    let (a, _) = app.create_key(json!({ "project": "acme", "plan": "pro", "limits": ip_limit })).await;
    let (b, _) = app.create_key(json!({ "project": "acme", "plan": "pro", "limits": ip_limit })).await;
    // Two keys, one address: the IP layer counts them together.
    for key in [&a, &b, &a] {
        assert_eq!(app.chat(key).await.status, 200);
    }
    let r = app.chat(&b).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["error"]["message"], "Rate limit exceeded. You can make 3 requests per minute on the pro plan.");

    // Anonymous visitors: the anonymous plan (50/day by default; 2 here).
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/anonymous",
            Some(json!({ "limits": [
            { "metric": "requests", "window": "day", "limit": 2, "subject": "anonymous" }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key = app.create_key(json!({ "project": "acme", "plan": "pro" })).await.0;
    for _ in 0..2 {
        assert_eq!(app.chat_with(&key, &[("x-anonymous-id", "visitor-1")]).await.status, 200);
    }
    let r = app.chat_with(&key, &[("x-anonymous-id", "visitor-1")]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.body["error"]["code"], "quota_exceeded");
    assert_eq!(app.chat_with(&key, &[("x-anonymous-id", "visitor-2")]).await.status, 200);
    assert_eq!(app.chat(&key).await.status, 200, "signed-in traffic is not anonymous");
    let r = app.chat_with(&key, &[("x-anonymous-id", "bad id with spaces")]).await;
    assert_eq!(r.status, 400);

    // visitor-1 signs up: their two requests today carry over to their new key.
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/starter",
            Some(json!({ "limits": [
        { "metric": "requests", "window": "day", "limit": 3 }] })),
        )
        .await;
    assert_eq!(r.status, 200);
    let (user_key, user_id) = app.create_key(json!({ "project": "acme", "plan": "starter" })).await;
    let body = json!({ "anonymous_id": "visitor-1", "key_id": user_id });
    let r = app.admin(Method::POST, "/api/v1/anonymous/attach", Some(body.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["records_attached"], 2);
    let again = app.admin(Method::POST, "/api/v1/anonymous/attach", Some(body)).await;
    assert_eq!(again.body["records_attached"], 0, "attaching twice charges once");
    assert_eq!(app.chat(&user_key).await.status, 200);
    assert_eq!(app.chat(&user_key).await.status, 429, "2 carried over + 1 = the day's 3");
}

#[tokio::test]
async fn replayed_usage_events_are_not_double_counted() {
    let app = spawn_app().await;
    let (_key, id) =
        key_with_limits(&app, "acme", json!([{ "metric": "total_tokens", "window": "month", "limit": 1_000 }])).await;
    let events = json!({ "events": [
        { "id": "evt-1", "key_id": id, "model": "tollgate-test", "prompt_tokens": 100, "completion_tokens": 50 },
        { "id": "evt-2", "key_id": id, "prompt_tokens": 10, "completion_tokens": 5, "cost_micros": 7 },
        { "id": "evt-3", "key_id": id, "prompt_tokens": -4 },
        { "id": "evt-4", "key_id": "nosuchkey000" },
    ]});
    let r = app.admin(Method::POST, "/api/v1/usage/events", Some(events.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.body["accepted"].as_u64(), r.body["rejected"].as_u64()), (Some(2), Some(2)));
    assert_eq!(r.body["results"][2]["status"], "rejected");
    assert_eq!(r.body["results"][3]["error"]["param"], "key_id");
    let replay = app.admin(Method::POST, "/api/v1/usage/events", Some(events)).await;
    assert_eq!((replay.body["accepted"].as_u64(), replay.body["duplicates"].as_u64()), (Some(0), Some(2)));

    let status = app.admin(Method::GET, &format!("/api/v1/usage/status?key={id}"), None).await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    let tokens = status.body["limits"]
        .as_array()
        .expect("limits")
        .iter()
        .find(|l| l["name"] == "total_tokens_per_month")
        .cloned()
        .expect("token limit");
    assert_eq!(tokens["used"], 165, "counted once: {tokens}");
    assert_eq!(status.body["state"], "ok");
    let usage = app.usage(&format!("?key={id}")).await;
    let evt1 = usage["data"].as_array().and_then(|d| d.iter().find(|r| r["id"] == "evt-1")).cloned().expect("evt-1");
    assert_eq!(evt1["cost_micros"], 150, "priced from the table: 1 micro a token");

    let too_many: Vec<Value> = (0..1001).map(|i| json!({ "id": format!("e{i}"), "key_id": id })).collect();
    let r = app.admin(Method::POST, "/api/v1/usage/events", Some(json!({ "events": too_many }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "events");
}

#[tokio::test]
async fn status_reports_states_and_every_header_family_is_sent() {
    let app = spawn_app().await;
    let (key, _) = key_with_limits(
        &app,
        "acme",
        json!([
            { "metric": "requests", "window": "day", "limit": 10 },
            { "metric": "total_tokens", "window": "minute", "limit": 1_000 }
        ]),
    )
    .await;
    // A request that asks for more output than the 1,000 tokens a minute allowed can
    // never fit: a 400 that says so, with no Retry-After to make SDKs wait and retry.
    let huge =
        json!({ "model": "gpt-4o-mini", "max_tokens": 2_000, "messages": [{ "role": "user", "content": "Hi" }] });
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&huge)).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "request_too_large", "{:?}", r.body);
    assert_eq!(r.header("retry-after"), None);
    let body = json!({ "model": "gpt-4o-mini", "max_tokens": 10, "messages": [{ "role": "user", "content": "Hi" }] });
    for _ in 0..8 {
        assert_eq!(app.chat_body(&key, body.clone(), &[]).await.status(), 200);
    }
    let r = reply(app.http.post(app.url("/v1/chat/completions")).bearer_auth(&key).json(&body)).await;
    // The tightest requests limit is the day (1 left), not the minute (191 left).
    assert_eq!(r.header("x-ratelimit-limit-requests"), Some("10"), "{:?}", r.headers);
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("1000"));
    assert!(r.header("x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
    assert!(
        r.header("ratelimit-policy").is_some_and(|v| v.contains("\"requests_per_day\";q=10;w=")),
        "{:?}",
        r.headers
    );
    assert!(r.header("ratelimit").is_some_and(|v| v.contains("\"requests_per_day\";r=1;t=")));
    app.settled().await;
    // The key asks about itself with its own bearer.
    let status = reply(app.http.get(app.url("/api/v1/usage/status")).bearer_auth(&key)).await;
    assert_eq!(status.status, 200, "{:?}", status.body);
    assert_eq!(status.body["state"], "critical", "9 of 10 requests today");
    assert_eq!(app.chat_body(&key, body.clone(), &[]).await.status(), 200);
    app.settled().await;
    let status = reply(app.http.get(app.url("/api/v1/usage/status")).bearer_auth(&key)).await;
    assert_eq!(status.body["state"], "exceeded");
    let project = app.admin(Method::GET, "/api/v1/usage/status?project=acme", None).await;
    assert_eq!(project.body["state"], "exceeded");
}

/// Issue 10, item 8: attaching a visitor's usage to their new key charges the key's
/// own limits only. Project (and IP) counters already hold that usage from the
/// visitor's requests, so charging them again would count it twice; the copies are
/// marked as transfers, and a restart replays them the same way.
#[tokio::test]
async fn attaching_a_visitor_charges_only_the_keys_own_limits() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/starter",
            Some(json!({ "limits": [
                { "metric": "requests", "window": "day", "limit": 10 },
                { "metric": "requests", "window": "day", "limit": 5, "subject": "project" }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let site_key = app.create_key(json!({ "project": "acme", "plan": "starter" })).await.0;
    for _ in 0..2 {
        assert_eq!(app.chat_with(&site_key, &[("x-anonymous-id", "visitor-1")]).await.status, 200);
    }
    let (user_key, user_id) = app.create_key(json!({ "project": "acme", "plan": "starter" })).await;
    let body = json!({ "anonymous_id": "visitor-1", "key_id": user_id });
    let r = app.admin(Method::POST, "/api/v1/anonymous/attach", Some(body)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["records_attached"], 2);
    let usage = app.usage(&format!("?key={user_id}")).await;
    let sources: Vec<&str> =
        usage["data"].as_array().expect("records").iter().filter_map(|r| r["usage_source"].as_str()).collect();
    assert_eq!(sources, ["transferred", "transferred"], "{usage}");
    // The project has used 2 of its 5: three more fit (charging the transfer again
    // would leave one).
    for n in 0..3 {
        assert_eq!(app.chat(&user_key).await.status, 200, "request {n} within the project's day");
    }
    let r = app.chat(&user_key).await;
    assert_eq!(r.status, 429, "{:?}", r.body);

    // After a restart the replayed counters agree: project 5 of 5, the key 5 of 10.
    let (data_dir, mock_url, tmp) = app.stop().await;
    let app = spawn_app_with(config(&data_dir, &mock_url)).await;
    let v = app.verify(json!({ "key": user_key, "dry_run": true })).await;
    let remaining: Vec<u64> =
        v.body["limits"].as_array().expect("limits").iter().filter_map(|l| l["remaining"].as_u64()).collect();
    assert_eq!(remaining, [5, 0], "{:?}", v.body);
    drop(tmp);
}

/// Issue 10, item 7: a usage event dated minutes ahead (accepted as clock skew) or
/// weeks back is charged now, and only to the windows it falls in: it never clears a
/// live sliding window or moves a day counter.
#[tokio::test]
async fn late_and_future_dated_events_never_move_live_counters() {
    let app = spawn_app().await;
    let (key, id) = key_with_limits(
        &app,
        "acme",
        json!([
            { "metric": "requests", "window": "minute", "limit": 10 },
            { "metric": "requests", "window": "month", "limit": 100 }
        ]),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    let now_s = tollgate_gateway::now_ms() / 1000;
    let events = json!({ "events": [
        { "id": "ahead", "key_id": id, "timestamp": now_s + 240 },
        { "id": "weeks-back", "key_id": id, "timestamp": now_s - 34 * 86_400 },
    ] });
    let r = app.admin(Method::POST, "/api/v1/usage/events", Some(events)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["accepted"], 2, "{:?}", r.body);
    let v = app.verify(json!({ "key": key, "dry_run": true })).await;
    let remaining: Vec<u64> =
        v.body["limits"].as_array().expect("limits").iter().filter_map(|l| l["remaining"].as_u64()).collect();
    // Minute: the 3 requests and the skewed event (the old one is long out of the
    // minute). Month: the same 4, since an event 34 days back is in an earlier month.
    assert_eq!(remaining, [6, 96], "{:?}", v.body);
    let usage = app.usage("?project=acme").await;
    let ahead = usage["data"].as_array().expect("records").iter().find(|r| r["id"] == "ahead").cloned();
    let ahead = ahead.expect("the skewed event is recorded");
    let recorded = ahead["timestamp"].as_str().and_then(tollgate_core::calendar::parse_timestamp);
    assert!(recorded.is_some_and(|ts| ts <= tollgate_gateway::now_ms()), "recorded at the server's time: {ahead}");
}

/// A rejected usage event names the field at fault in `param`, whatever was wrong
/// with it: a wrong type, a missing field, an unknown field, a bad value.
#[tokio::test]
async fn rejected_usage_events_name_the_field_in_param() {
    let app = spawn_app().await;
    let (_key, id) =
        key_with_limits(&app, "acme", json!([{ "metric": "total_tokens", "window": "month", "limit": 1_000 }])).await;
    let events = json!({ "events": [
        { "id": "e1", "key_id": id, "prompt_tokens": -4 },
        { "id": "e2", "key_id": id, "completion_tokens": "many" },
        { "id": "e3" },
        { "id": "e4", "key_id": id, "promt_tokens": 3 },
        { "id": "e5", "key_id": id, "client_ip": "not-an-ip" },
        { "id": "e6", "key_id": id, "timestamp": "yesterday" },
    ]});
    let r = app.admin(Method::POST, "/api/v1/usage/events", Some(events)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let params: Vec<&str> = r.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|e| e["error"]["param"].as_str().unwrap_or("(none)"))
        .collect();
    assert_eq!(params, ["prompt_tokens", "completion_tokens", "key_id", "promt_tokens", "client_ip", "timestamp"]);
}
