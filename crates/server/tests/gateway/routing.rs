//! Routing through the real gateway in front of several real mock upstreams, one per
//! provider, each made to misbehave on its own (`RunningMock::force`): model aliases
//! with fallbacks on 500, 429, a timeout and a stream cut before its first byte, each
//! attempt its own ledger row; a weighted split of 1,000 users within a few percent of
//! its weights and sticky; an open breaker skipping its target and closing after the
//! target recovers, as `/health/detailed` shows; Azure OpenAI and Gemini providers.

use serde_json::{Value, json};
use tollgate_mock_upstream::{self as mock, Fault, Forced, MockConfig, RunningMock};
use tollgate_router::RouteSpec;
use tollgate_server::config::{Config, ProviderKindName, RawConfig, RawProvider, Secret};

use crate::helpers::{ADMIN_TOKEN, TestApp, raw_config, reply, spawn_app_with};

struct Routed {
    app: TestApp,
    primary: RunningMock,
    backup: RunningMock,
    key: String,
    _tmp: tempfile::TempDir,
}

fn provider(kind: ProviderKindName, base_url: String) -> RawProvider {
    RawProvider { kind, base_url: Some(base_url), api_key: Some(Secret::new("sk-provider-test")), ..Default::default() }
}

/// Two providers, `primary` and `backup`, each its own mock; `extra` adds to the
/// configuration (routes, more providers). Each mock checks the provider key it is
/// sent (`Authorization: Bearer`, or Azure's `api-key`).
async fn routed(extra: impl FnOnce(&mut RawConfig, &RunningMock, &RunningMock)) -> Routed {
    routed_with(Some("sk-provider-test"), extra).await
}

async fn routed_with(
    expected_key: Option<&str>,
    extra: impl FnOnce(&mut RawConfig, &RunningMock, &RunningMock),
) -> Routed {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mocked = || MockConfig { expected_api_key: expected_key.map(str::to_owned), ..MockConfig::default() };
    let default = mock::spawn(mocked()).await.expect("mock");
    let primary = mock::spawn(mocked()).await.expect("mock");
    let backup = mock::spawn(mocked()).await.expect("mock");
    let mut raw = raw_config(tmp.path(), &default.base_url());
    raw.providers.insert("primary".into(), provider(ProviderKindName::Openai, primary.base_url()));
    raw.providers.insert("backup".into(), provider(ProviderKindName::Openai, backup.base_url()));
    raw.routing
        .routes
        .insert("fast".into(), RouteSpec::Ordered(vec!["primary/gpt-4o-mini".into(), "backup/gpt-4o".into()]));
    raw.routing.attempt_timeout_ms = 2_000;
    raw.routing.probe_every_secs = 0;
    extra(&mut raw, &primary, &backup);
    let config = Config::from_raw(raw).expect("valid config");
    let app = spawn_app_with(config).await;
    let key = app.project_key("acme", "pro").await;
    // The default upstream is not part of any route: it must never be called.
    std::mem::forget(default);
    Routed { app, primary, backup, key, _tmp: tmp }
}

async fn chat(r: &Routed, model: &str, stream: bool, user: Option<&str>) -> reqwest::Response {
    let mut body = json!({ "model": model, "stream": stream, "messages": [{ "role": "user", "content": "Hi" }] });
    if let Some(user) = user {
        body["user"] = json!(user);
    }
    r.app.chat_body(&r.key, body, &[]).await
}

/// The ledger rows of chat completions, newest first.
async fn rows(app: &TestApp) -> Vec<Value> {
    let usage = app.usage("?limit=1000").await;
    let rows = usage["data"].as_array().cloned().unwrap_or_default();
    rows.into_iter().filter(|r| r["endpoint"] == "chat.completions").collect()
}

/// The failed attempts' rows and the answered one of a single request.
fn attempts(rows: &[Value]) -> (Vec<&Value>, &Value) {
    let answered =
        rows.iter().find(|r| !r["id"].as_str().unwrap_or_default().contains('-')).expect("the request's row");
    let id = answered["id"].as_str().unwrap_or_default();
    let failed = rows.iter().filter(|r| r["id"].as_str().unwrap_or_default().starts_with(&format!("{id}-"))).collect();
    (failed, answered)
}

#[tokio::test]
async fn an_alias_goes_to_its_first_target_under_the_targets_model() {
    let r = routed(|_, _, _| {}).await;
    let resp = chat(&r, "fast", false, None).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["model"], "gpt-4o-mini", "the target's model was sent: {body}");
    assert_eq!((r.primary.requests_served(), r.backup.requests_served()), (1, 0));
    let rows = rows(&r.app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0]["provider"].as_str(), rows[0]["model"].as_str()), (Some("primary"), Some("gpt-4o-mini")));
    assert_eq!(rows[0]["counted"], true);
    // A model that is no route goes to the default upstream as it is.
    assert_eq!(chat(&r, "gpt-4o", false, None).await.status(), 200);
    assert_eq!(r.primary.requests_served() + r.backup.requests_served(), 1);
}

#[tokio::test]
async fn a_500_a_429_a_timeout_and_a_stream_cut_before_its_first_byte_fall_back_with_each_attempt_recorded() {
    let cases: [(Forced, bool, u64); 4] = [
        (Forced { status: Some(500), ..Default::default() }, false, 500),
        (Forced { status: Some(429), ..Default::default() }, false, 429),
        // Longer than the attempt timeout (2 s): a hung target falls back in time.
        (Forced { latency_ms: Some(60_000), ..Default::default() }, false, 504),
        (Forced { fault: Some(Fault::Cut), ..Default::default() }, true, 502),
    ];
    for (forced, stream, failed_status) in cases {
        let r = routed(|_, _, _| {}).await;
        r.primary.force(forced.clone());
        let resp = chat(&r, "fast", stream, None).await;
        assert_eq!(resp.status(), 200, "{forced:?}");
        let text = resp.text().await.expect("body");
        if stream {
            assert!(text.trim_end().ends_with("data: [DONE]"), "a whole stream from the backup: {text}");
        }
        assert_eq!(r.backup.requests_served(), 1, "{forced:?}");
        let rows = rows(&r.app).await;
        assert_eq!(rows.len(), 2, "{forced:?}: {rows:?}");
        let (failed, answered) = attempts(&rows);
        assert_eq!(failed.len(), 1, "{forced:?}: {rows:?}");
        let failed = failed[0];
        assert_eq!(failed["status"].as_u64(), Some(failed_status), "{failed}");
        assert_eq!((failed["provider"].as_str(), failed["model"].as_str()), (Some("primary"), Some("gpt-4o-mini")));
        assert_eq!((failed["counted"].as_bool(), failed["cost_micros"].as_u64()), (Some(false), Some(0)), "{failed}");
        assert_eq!((answered["provider"].as_str(), answered["model"].as_str()), (Some("backup"), Some("gpt-4o")));
        assert_eq!((answered["status"].as_u64(), answered["counted"].as_bool()), (Some(200), Some(true)));
        assert!(answered["cost_micros"].as_u64().unwrap_or_default() > 0, "{answered}");
        assert_eq!(r.app.state.limiter.held_reservations().await.expect("held"), 0);
    }
}

#[tokio::test]
async fn a_429_skips_its_target_for_its_retry_after_and_a_4xx_does_not_fall_back() {
    let r = routed(|_, _, _| {}).await;
    r.primary.force(Forced { status: Some(429), ..Default::default() });
    assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    // The mock asks for 7 s: the next request goes straight to the backup.
    assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    assert_eq!((r.primary.requests_served(), r.backup.requests_served()), (1, 2));
    // A 400 is the request's fault: the backup would refuse it too.
    let r2 = routed(|_, _, _| {}).await;
    r2.primary.force(Forced { status: Some(400), ..Default::default() });
    assert_eq!(chat(&r2, "fast", false, None).await.status(), 400);
    assert_eq!(r2.backup.requests_served(), 0);
}

#[tokio::test]
async fn when_every_target_fails_the_last_answer_is_the_clients_and_nothing_is_charged() {
    let r = routed(|_, _, _| {}).await;
    r.primary.force(Forced { status: Some(500), ..Default::default() });
    r.backup.force(Forced { status: Some(503), ..Default::default() });
    let resp = chat(&r, "fast", false, None).await;
    assert_eq!(resp.status(), 503, "the last target's own answer");
    let rows = rows(&r.app).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|row| row["counted"] == false), "{rows:?}");
    assert_eq!(r.app.state.limiter.held_reservations().await.expect("held"), 0);
}

#[tokio::test]
async fn an_open_breaker_skips_its_target_and_closes_after_recovery_as_health_detailed_shows() {
    let r = routed(|raw, _, _| {
        raw.routing.breaker.window = 4;
        raw.routing.breaker.min_calls = 2;
        raw.routing.breaker.cooldown_ms = 0;
    })
    .await;
    r.primary.force(Forced { status: Some(500), ..Default::default() });
    for _ in 0..2 {
        assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    }
    let health = reply(r.app.http.get(r.app.url("/health/detailed")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(health.status, 200);
    let target = |body: &Value, id: &str| {
        body["targets"].as_array().and_then(|t| t.iter().find(|t| t["target"] == id).cloned()).expect("target")
    };
    let primary = target(&health.body, "primary/gpt-4o-mini");
    assert_eq!(primary["state"], "open", "{primary}");
    assert_eq!(primary["error_rate_percent"], 100.0, "{primary}");
    assert_eq!(target(&health.body, "backup/gpt-4o")["state"], "closed");
    // `/ready` is the readiness check: the embedded store is always reachable.
    let ready = reply(r.app.http.get(r.app.url("/ready"))).await;
    assert_eq!((ready.status, ready.body["status"].as_str()), (200, Some("ready")));
    let providers = health.body["providers"].as_array().expect("providers");
    assert!(providers.iter().any(|p| p["name"] == "primary" && p["kind"] == "openai"), "{providers:?}");

    // The target recovers; the breaker's cooldown (0 here) over, one probe goes through
    // live traffic, succeeds and closes it.
    r.primary.force(Forced::default());
    let served = r.primary.requests_served();
    assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    assert_eq!(r.primary.requests_served(), served + 1, "the half-open probe went to the primary");
    let health = reply(r.app.http.get(r.app.url("/health/detailed")).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(target(&health.body, "primary/gpt-4o-mini")["state"], "closed", "{}", health.body);
}

#[tokio::test]
async fn an_open_breaker_with_a_cooldown_is_skipped_without_a_call() {
    let r = routed(|raw, _, _| {
        raw.routing.breaker.window = 4;
        raw.routing.breaker.min_calls = 2;
        raw.routing.breaker.cooldown_ms = 600_000;
    })
    .await;
    r.primary.force(Forced { status: Some(502), ..Default::default() });
    for _ in 0..2 {
        assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    }
    let served = r.primary.requests_served();
    for _ in 0..3 {
        assert_eq!(chat(&r, "fast", false, None).await.status(), 200);
    }
    assert_eq!(r.primary.requests_served(), served, "skipped while open");
    // Only the backup left, and it is open too: a clear 503, charged nothing.
    r.backup.force(Forced { status: Some(500), ..Default::default() });
    for _ in 0..2 {
        let _ = chat(&r, "fast", false, None).await;
    }
    let resp = reply(
        r.app
            .http
            .post(r.app.url("/v1/chat/completions"))
            .bearer_auth(&r.key)
            .json(&json!({ "model": "fast", "messages": [{ "role": "user", "content": "Hi" }] })),
    )
    .await;
    assert_eq!(resp.status, 503, "{}", resp.body);
    assert_eq!(resp.body["error"]["code"], "service_unavailable", "{}", resp.body);
}

#[tokio::test]
async fn a_weighted_split_of_a_thousand_users_is_within_a_few_percent_and_sticky() {
    let r = routed(|raw, _, _| {
        raw.routing.routes.insert(
            "ab".into(),
            RouteSpec::Split {
                targets: vec!["primary/gpt-4o-mini".into(), "backup/gpt-4o".into()],
                weights: Some(vec![70, 30]),
                sticky: Default::default(),
            },
        );
    })
    .await;
    // 1,000 requests and more in a minute: a plan that allows them.
    let r = Routed { key: r.app.project_key("bulk", "enterprise").await, ..r };
    let mut arm_of = std::collections::HashMap::new();
    for user in 0..1_000 {
        let user = format!("user-{user}");
        let body: Value = chat(&r, "ab", false, Some(&user)).await.json().await.expect("json");
        arm_of.insert(user, body["model"].as_str().unwrap_or_default().to_owned());
    }
    let primary = arm_of.values().filter(|m| *m == "gpt-4o-mini").count();
    assert!((640..=760).contains(&primary), "70 % of 1,000 within a few percent: {primary}");
    assert_eq!(r.primary.requests_served() + r.backup.requests_served(), 1_000);
    // Sticky: the same users land in the same arms again, whichever key they come with
    // (another key: the first has used its 1,000 requests of this minute).
    let r = Routed { key: r.app.project_key("bulk2", "enterprise").await, ..r };
    for user in (0..1_000).step_by(37) {
        let user = format!("user-{user}");
        let body: Value = chat(&r, "ab", false, Some(&user)).await.json().await.expect("json");
        assert_eq!(body["model"].as_str(), Some(arm_of[&user].as_str()), "{user}");
    }
    // The arm is in the ledger: each row names the target it went to.
    let rows = rows(&r.app).await;
    let by_model = rows.iter().filter(|row| row["model"] == "gpt-4o-mini" && row["provider"] == "primary").count();
    assert!(by_model >= primary, "{by_model} rows for {primary} users");
}

#[tokio::test]
async fn a_target_whose_provider_limit_is_spent_is_skipped_not_tried() {
    let r = routed(|_, _, _| {}).await;
    let (key, _) = r
        .app
        .create_key(json!({ "project": "acme", "plan": "pro",
            "limits": [{ "metric": "requests", "window": "day", "limit": 1, "provider": "primary" }] }))
        .await;
    let send =
        || r.app.chat_body(&key, json!({ "model": "fast", "messages": [{ "role": "user", "content": "Hi" }] }), &[]);
    assert_eq!(send().await.status(), 200);
    assert_eq!(send().await.status(), 200);
    assert_eq!((r.primary.requests_served(), r.backup.requests_served()), (1, 1), "the spent target skipped");
    let rows = rows(&r.app).await;
    assert_eq!(rows.iter().filter(|row| row["provider"] == "backup").count(), 1, "{rows:?}");
}

#[tokio::test]
async fn azure_and_gemini_providers_are_addressed_their_way_and_recorded() {
    let r = routed(|raw, primary, _| {
        let mut azure = provider(ProviderKindName::Azure, primary.base_url().trim_end_matches("/v1").to_owned());
        azure.api_version = Some("2024-10-21".into());
        azure.deployments.insert("gpt-4o".into(), "prod-4o".into());
        raw.providers.insert("azure".into(), azure);
        let gemini_url = primary.base_url().replace("/v1", "/v1beta/openai");
        raw.providers.insert("gemini".into(), provider(ProviderKindName::Gemini, gemini_url));
        raw.routing.routes.insert("on-azure".into(), RouteSpec::Ordered(vec!["azure/gpt-4o".into()]));
        raw.routing.routes.insert("on-gemini".into(), RouteSpec::Ordered(vec!["gemini/gemini-2.0-flash".into()]));
    })
    .await;
    for stream in [false, true] {
        // The mock refuses an Azure call without `api-version`, with a bearer token, or
        // without the provider key as `api-key`.
        let resp = chat(&r, "on-azure", stream, None).await;
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.expect("body");
        assert!(text.contains("gpt-4o"), "{text}");
        assert_eq!(r.primary.upstream().last_deployment().as_deref(), Some("prod-4o"), "the model's deployment");
        let resp = chat(&r, "on-gemini", stream, None).await;
        assert_eq!(resp.status(), 200);
        let _ = resp.text().await;
    }
    let rows = rows(&r.app).await;
    for provider in ["azure", "gemini"] {
        let of: Vec<&Value> = rows.iter().filter(|row| row["provider"] == provider).collect();
        assert_eq!(of.len(), 2, "{provider}: {rows:?}");
        for row in of {
            assert_eq!((row["status"].as_u64(), row["usage_source"].as_str()), (Some(200), Some("reported")), "{row}");
            assert!(row["prompt_tokens"].as_u64().unwrap_or_default() > 0, "{row}");
            assert!(row["cost_micros"].as_u64().unwrap_or_default() > 0, "priced by its model: {row}");
            assert_eq!(row["price_estimated"], false, "{row}");
        }
    }
}

#[tokio::test]
async fn a_fallback_is_charged_to_its_own_scoped_limits_even_when_the_primary_was_skipped() {
    let r = routed(|raw, _, _| {
        raw.routing.breaker.window = 2;
        raw.routing.breaker.min_calls = 1;
        raw.routing.breaker.cooldown_ms = 600_000;
    })
    .await;
    let (key, _) = r
        .app
        .create_key(json!({ "project": "acme", "plan": "pro",
            "limits": [{ "metric": "requests", "window": "day", "limit": 3, "provider": "backup" }] }))
        .await;
    let send =
        || r.app.chat_body(&key, json!({ "model": "fast", "messages": [{ "role": "user", "content": "Hi" }] }), &[]);
    // One failure opens the primary's breaker; from then on it is skipped without a call.
    r.primary.force(Forced { status: Some(500), ..Default::default() });
    let statuses: Vec<u16> = {
        let mut s = Vec::new();
        for _ in 0..4 {
            s.push(send().await.status().as_u16());
        }
        s
    };
    assert_eq!(r.primary.requests_served(), 1, "open after one failure");
    // The backup's own limit (3 a day) counts every request it answered, including
    // those admitted under the primary's limits and moved to it.
    assert_eq!(statuses, [200, 200, 200, 503], "the fourth finds the backup's limit spent and no target left");
    assert_eq!(r.backup.requests_served(), 3);
    assert_eq!(r.app.state.limiter.held_reservations().await.expect("held"), 0);
}

/// A route to Claude for OpenAI-style chat: an Anthropic provider on the third mock.
async fn routed_to_claude() -> Routed {
    routed(|raw, _, backup| {
        let mut claude = provider(ProviderKindName::Anthropic, backup.base_url());
        claude.anthropic_version = Some("2023-06-01".into());
        raw.providers.insert("claude".into(), claude);
        raw.routing.routes.insert("smart".into(), RouteSpec::Ordered(vec!["claude/claude-sonnet-4-5".into()]));
    })
    .await
}

fn weather_tools() -> Value {
    json!([{ "type": "function", "function": { "name": "get_weather", "description": "The weather in a city",
        "parameters": { "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] } } }])
}

#[tokio::test]
async fn a_chat_request_routed_to_claude_is_translated_both_ways_tools_included() {
    let r = routed_to_claude().await;
    // Plain, with tools: the mock answers a tool_use block, which comes back as tool_calls.
    let body = json!({ "model": "smart", "tools": weather_tools(), "tool_choice": "auto",
        "messages": [{ "role": "system", "content": "Be brief." },
                     { "role": "user", "content": format!("Please {} for Paris", mock::TOOL_TRIGGER) }] });
    let resp = r.app.chat_body(&r.key, body, &[]).await;
    assert_eq!(resp.status(), 200);
    let chat: Value = resp.json().await.expect("json");
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert_eq!(chat["model"], "claude-sonnet-4-5");
    let choice = &chat["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{chat}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather", "{chat}");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or("")).expect("args");
    assert_eq!(arguments["city"], "Paris");
    let prompt = chat["usage"]["prompt_tokens"].as_u64().expect("usage");

    // The tool's result goes back as a `tool` message; a plain text answer follows.
    let body = json!({ "model": "smart", "tools": weather_tools(),
        "messages": [{ "role": "user", "content": "Weather in Paris?" },
                     { "role": "assistant", "content": null, "tool_calls": [call] },
                     { "role": "tool", "tool_call_id": call["id"], "content": "18 C and sunny" }] });
    let chat: Value = r.app.chat_body(&r.key, body, &[]).await.json().await.expect("json");
    assert_eq!(chat["choices"][0]["finish_reason"], "stop", "{chat}");
    assert_eq!(chat["choices"][0]["message"]["content"], "Hello from the tollgate mock upstream.");

    // Streamed, with the usage chunk asked for: OpenAI chunks, the tool call's arguments
    // in pieces, the usage, then [DONE].
    let body = json!({ "model": "smart", "stream": true, "stream_options": { "include_usage": true },
        "tools": weather_tools(), "messages": [{ "role": "user", "content": mock::TOOL_TRIGGER }] });
    let text = r.app.chat_body(&r.key, body, &[]).await.text().await.expect("stream");
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk json"))
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{text}");
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(serde_json::from_str::<Value>(&arguments).expect("args")["city"], "Paris", "{text}");
    let usage = chunks.iter().find_map(|c| c.get("usage").filter(|u| !u.is_null())).expect("usage chunk");
    assert!(usage["completion_tokens"].as_u64().unwrap_or_default() > 0, "{usage}");

    // Every call is in the ledger under the Anthropic provider, with tokens and cost.
    let rows = rows(&r.app).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    for row in &rows {
        assert_eq!((row["provider"].as_str(), row["model"].as_str()), (Some("claude"), Some("claude-sonnet-4-5")));
        assert_eq!((row["status"].as_u64(), row["usage_source"].as_str()), (Some(200), Some("reported")), "{row}");
        assert!(row["cost_micros"].as_u64().unwrap_or_default() > 0, "{row}");
    }
    assert!(rows.iter().any(|row| row["prompt_tokens"].as_u64() == Some(prompt)), "{rows:?}");
    assert_eq!(r.app.state.limiter.held_reservations().await.expect("held"), 0);
}

#[tokio::test]
async fn a_streamed_chat_to_claude_without_the_usage_chunk_hides_it_and_still_counts_it() {
    let r = routed_to_claude().await;
    let body = json!({ "model": "smart", "stream": true, "messages": [{ "role": "user", "content": "Hi" }] });
    let text = r.app.chat_body(&r.key, body, &[("x-mock-usage", "11,7")]).await.text().await.expect("stream");
    assert!(!text.contains("\"usage\":{"), "no usage chunk unless asked: {text}");
    let content: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(content, "Hello from the tollgate mock upstream.");
    let rows = rows(&r.app).await;
    assert_eq!((rows[0]["prompt_tokens"].as_u64(), rows[0]["completion_tokens"].as_u64()), (Some(11), Some(7)));
    // An Anthropic error comes back in OpenAI's shape.
    let body = json!({ "model": "smart", "messages": [{ "role": "user", "content": "Hi" }] });
    let resp = r.app.chat_body(&r.key, body, &[("x-mock-status", "400")]).await;
    assert_eq!(resp.status(), 400);
    let error: Value = resp.json().await.expect("json");
    assert!(error["error"]["message"].is_string(), "{error}");
}

#[tokio::test]
async fn a_fallback_target_uses_the_projects_own_key_for_its_provider() {
    use sha2::Digest;
    let sha256 =
        |text: &str| -> String { sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() };
    // The mocks take any key and say which one they got (`mock_key_sha256`).
    let r = routed_with(None, |_, _, _| {}).await;
    let own = "sk-acme-own-backup-key-0123";
    let put = r
        .app
        .admin(reqwest::Method::PUT, "/api/v1/projects/acme/provider-keys/backup", Some(json!({ "api_key": own })))
        .await;
    assert_eq!(put.status, 200, "{:?}", put.body);
    assert!(!put.body.to_string().contains(own), "the key is never returned: {}", put.body);
    r.primary.force(Forced { status: Some(500), ..Default::default() });
    let body = json!({ "model": "fast", "messages": [{ "role": "user", "content": "Hi" }] });
    let answer: Value =
        r.app.chat_body(&r.key, body, &[("x-mock-echo-headers", "x-none")]).await.json().await.expect("json");
    assert_eq!(answer["model"], "gpt-4o", "answered by the backup: {answer}");
    assert_eq!(answer["mock_key_sha256"].as_str(), Some(sha256(own).as_str()), "the project's key for backup");
    // With the primary back, it answers with the operator's key (the project has none for it).
    r.primary.force(Forced::default());
    let body = json!({ "model": "fast", "messages": [{ "role": "user", "content": "Hi" }] });
    let answer: Value =
        r.app.chat_body(&r.key, body, &[("x-mock-echo-headers", "x-none")]).await.json().await.expect("json");
    assert_eq!(answer["mock_key_sha256"].as_str(), Some(sha256("sk-provider-test").as_str()), "{answer}");
}

#[tokio::test]
async fn idle_targets_providers_get_a_free_models_probe_reported_in_health_detailed() {
    let r = routed(|_, _, _| {}).await;
    r.backup.force(Forced { status: Some(503), ..Default::default() });
    let (primary_before, backup_before) = (r.primary.requests_served(), r.backup.requests_served());
    // What the probe job runs every `routing.probe_every_secs` (off in these tests):
    // every routed target is idle, so each of their providers gets one GET /models.
    r.app.state.gateway.routing.probe_idle(tollgate_gateway::now_ms(), 0).await;
    assert_eq!(r.primary.requests_served(), primary_before + 1, "one probe, never a completion");
    assert_eq!(r.backup.requests_served(), backup_before + 1);
    let health = reply(r.app.http.get(r.app.url("/health/detailed")).bearer_auth(ADMIN_TOKEN)).await;
    let providers = health.body["providers"].as_array().cloned().unwrap_or_default();
    let probe =
        |name: &str| providers.iter().find(|p| p["name"] == name).map(|p| p["probe"].clone()).expect("provider");
    assert_eq!((probe("primary")["ok"].as_bool(), probe("primary")["status"].as_u64()), (Some(true), Some(200)));
    assert_eq!((probe("backup")["ok"].as_bool(), probe("backup")["status"].as_u64()), (Some(false), Some(503)));
    // Nothing is recorded or charged for a probe.
    assert!(rows(&r.app).await.is_empty());
}

#[tokio::test]
async fn the_official_openai_python_sdk_works_through_routes_to_claude_and_fallbacks() {
    let r = routed_to_claude().await;
    r.primary.force(Forced { status: Some(500), ..Default::default() });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/routed_sdk.py");
    let (base, key) = (r.app.url(""), r.key.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .env("TOLLGATE_URL", base)
            .env("TOLLGATE_KEY", key)
            .env("TOOL_TRIGGER", mock::TOOL_TRIGGER)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs (scripts/test.sh installs the openai package)");
    assert!(
        output.status.success(),
        "routed_sdk.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = rows(&r.app).await;
    assert_eq!(rows.iter().filter(|row| row["provider"] == "claude" && row["status"] == 200).count(), 3, "{rows:?}");
    assert_eq!(rows.iter().filter(|row| row["provider"] == "primary" && row["counted"] == false).count(), 1);
}
