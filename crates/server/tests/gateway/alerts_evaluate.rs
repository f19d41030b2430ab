//! The periodically evaluated alert rules over real sockets: a forecast rule fires
//! once for a key on a pace to exceed its monthly quota and not for one under pace;
//! an anomaly rule fires once for a spike hour and not for normal hours; a
//! `notify_resolved` threshold rule sends one "resolved" event when the window ends;
//! bad rule kinds and fields are refused naming the field. Evaluation is triggered
//! through `alerts_evaluate::evaluate_once` (the job the server runs every
//! `alerts.evaluate_every_secs`); every wait polls with a deadline.

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, to_rfc3339};
use tollgate_core::{UsageRecord, UsageSource};
use tollgate_gateway::now_ms;
use tollgate_server::alerts_evaluate::evaluate_once;

use crate::alerts::{
    Receiver, alerts_app, quota_key, rule, verify_with_standardwebhooks, wait_for_deliveries, webhook_channel,
};
use crate::helpers::*;

fn record(id: String, ts_ms: i64, project: &str, key: &str, requests: u64) -> UsageRecord {
    UsageRecord {
        id,
        ts_ms,
        project_id: project.to_owned(),
        key_id: key.to_owned(),
        endpoint: "chat.completions".to_owned(),
        provider: "openai".to_owned(),
        model: Some("gpt-4o".to_owned()),
        status: 200,
        counted: true,
        requests,
        prompt_tokens: 10 * requests,
        completion_tokens: requests,
        cost_micros: requests,
        usage_source: UsageSource::Ingested,
        latency_ms: 100,
        ..UsageRecord::default()
    }
}

async fn store(app: &TestApp, records: Vec<UsageRecord>) {
    for chunk in records.chunks(1_000) {
        let fresh = app.state.ledger.append_new(chunk.to_vec()).await.expect("append");
        assert!(fresh.iter().all(|f| *f));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forecast_rule_fires_once_for_a_key_on_pace_to_exceed_its_monthly_quota() {
    let app = alerts_app().await;
    app.create_project("fc").await;
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/fc-monthly",
            Some(json!({ "limits": [{ "metric": "requests", "window": "month", "limit": 10_000 }] })),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    let (_, fast) = app.create_key(json!({ "project": "fc", "plan": "fc-monthly" })).await;
    let (_, slow) = app.create_key(json!({ "project": "fc", "plan": "fc-monthly" })).await;
    let now = now_ms();
    // The last day: 400 requests an hour for one key (9,600: on pace to run out),
    // one an hour for the other (never near 10,000 this month).
    let mut records = Vec::new();
    for h in 1..=24 {
        records.push(record(format!("fc-fast-{h}"), now - h * MS_PER_HOUR, "fc", &fast, 400));
        records.push(record(format!("fc-slow-{h}"), now - h * MS_PER_HOUR, "fc", &slow, 1));
    }
    store(&app, records).await;
    let receiver = Receiver::start().await;
    let (channel, secret) = webhook_channel(&app, "fc", &receiver.url).await;
    let rule_id = rule(
        &app,
        json!({ "project": "fc", "kind": "forecast", "metric": "requests", "window": "month", "channels": [channel] }),
    )
    .await;
    let got = app.admin(Method::GET, &format!("/api/v1/alerts/rules/{rule_id}"), None).await;
    assert_eq!(got.body["kind"], "forecast", "{:?}", got.body);

    let run = evaluate_once(&app.state, now_ms()).await.expect("evaluate");
    assert_eq!(run.forecast_events, 1, "{run:?}");
    // Evaluating again (the next period, another instance) adds nothing.
    let again = evaluate_once(&app.state, now_ms()).await.expect("evaluate");
    assert_eq!(again.forecast_events, 0, "{again:?}");

    let list = wait_for_deliveries(&app, "?project=fc", "delivered", 1).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let payloads = verify_with_standardwebhooks(&secret, &receiver.received());
    assert_eq!(payloads.len(), 1);
    let p = &payloads[0];
    assert_eq!(p["type"], "quota.forecast_exhausted");
    assert_eq!(p["data"]["subject"], format!("key:{fast}"), "the fast key, not the slow one: {p}");
    assert_eq!(p["data"]["window"], "month");
    assert_eq!(p["data"]["limit"], 10_000);
    assert!(p["data"]["projected"].as_u64().expect("projected") >= 10_000, "{p}");
    assert!(p["data"]["exhausts_at"].is_string());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_rule_fires_once_for_a_spike_hour_and_not_for_normal_hours() {
    let app = alerts_app().await;
    app.create_project("an-spiky").await;
    app.create_project("an-steady").await;
    let now = now_ms();
    let hour = now - now.rem_euclid(MS_PER_HOUR);
    let spike = hour - 3 * MS_PER_HOUR;
    // Five weeks of 100 requests an hour in both projects; one hour of 2,000 in one.
    let mut records = Vec::new();
    for h in 0..(5 * 7 * 24) {
        let at = hour - h * MS_PER_HOUR;
        for project in ["an-spiky", "an-steady"] {
            let requests = if project == "an-spiky" && at == spike { 2_000 } else { 100 };
            records.push(record(format!("{project}-{h}"), at, project, "k1", requests));
        }
    }
    store(&app, records).await;
    let receiver = Receiver::start().await;
    let (spiky_channel, secret) = webhook_channel(&app, "an-spiky", &receiver.url).await;
    let (steady_channel, _) = webhook_channel(&app, "an-steady", &receiver.url).await;
    rule(&app, json!({ "project": "an-spiky", "kind": "anomaly", "metric": "requests", "channels": [spiky_channel] }))
        .await;
    rule(
        &app,
        json!({ "project": "an-steady", "kind": "anomaly", "metric": "requests", "channels": [steady_channel] }),
    )
    .await;

    let run = evaluate_once(&app.state, now_ms()).await.expect("evaluate");
    assert_eq!(run.anomaly_events, 1, "the spike hour only: {run:?}");
    let again = evaluate_once(&app.state, now_ms()).await.expect("evaluate");
    assert_eq!(again.anomaly_events, 0, "{again:?}");

    wait_for_deliveries(&app, "?project=an-spiky", "delivered", 1).await;
    assert!(wait_list_empty(&app, "?project=an-steady").await);
    let payloads = verify_with_standardwebhooks(&secret, &receiver.received());
    assert_eq!(payloads.len(), 1);
    let p = &payloads[0];
    assert_eq!(p["type"], "usage.anomaly");
    assert_eq!(p["data"]["subject"], "project:an-spiky");
    assert_eq!(p["data"]["hour"], to_rfc3339(spike));
    assert_eq!(p["data"]["observed"], 2_000);
    assert_eq!(p["data"]["baseline"], 100.0);
    app.stop().await;
}

async fn wait_list_empty(app: &TestApp, query: &str) -> bool {
    let r = app.admin(Method::GET, &format!("/api/v1/alerts/deliveries{query}"), None).await;
    r.body["data"].as_array().is_some_and(Vec::is_empty)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_event_is_sent_once_when_the_window_of_a_crossing_ends() {
    let app = alerts_app().await;
    let key = quota_key(&app, "rs", 3).await;
    let receiver = Receiver::start().await;
    let (channel, secret) = webhook_channel(&app, "rs", &receiver.url).await;
    rule(
        &app,
        json!({ "project": "rs", "metric": "requests", "thresholds": [100], "notify_resolved": true, "channels": [channel] }),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    let list = wait_for_deliveries(&app, "?project=rs", "delivered", 1).await;
    let crossing = list[0]["event_id"].as_str().expect("event").to_owned();
    // The day is not over: nothing is resolved.
    let run = evaluate_once(&app.state, now_ms()).await.expect("evaluate");
    assert_eq!(run.resolved_events, 0);
    // Two days later the crossing's window has ended: one resolved event, once.
    let later = now_ms() + 2 * MS_PER_DAY;
    assert_eq!(evaluate_once(&app.state, later).await.expect("evaluate").resolved_events, 1);
    assert_eq!(evaluate_once(&app.state, later).await.expect("evaluate").resolved_events, 0);
    let list = wait_for_deliveries(&app, "?project=rs", "delivered", 2).await;
    assert_eq!(list.len(), 2, "{list:?}");
    let payloads = verify_with_standardwebhooks(&secret, &receiver.received());
    let resolved: Vec<&Value> = payloads.iter().filter(|p| p["type"] == "alert.resolved").collect();
    assert_eq!(resolved.len(), 1, "{payloads:?}");
    assert_eq!(resolved[0]["data"]["resolves_event_id"], crossing.as_str());
    assert_eq!(resolved[0]["data"]["reason"], "window_ended");
    assert_eq!(resolved[0]["data"]["threshold_percent"], 100);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_event_is_sent_once_when_the_limit_is_raised_above_the_usage() {
    let app = alerts_app().await;
    let key = quota_key(&app, "rl", 3).await;
    let receiver = Receiver::start().await;
    let (channel, secret) = webhook_channel(&app, "rl", &receiver.url).await;
    rule(
        &app,
        json!({ "project": "rl", "metric": "requests", "thresholds": [100], "notify_resolved": true, "channels": [channel] }),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    wait_for_deliveries(&app, "?project=rl", "delivered", 1).await;
    assert_eq!(evaluate_once(&app.state, now_ms()).await.expect("evaluate").resolved_events, 0);
    // The daily quota goes from 3 to 10: 3 used is under 100 % again.
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/daily-rl",
            Some(json!({ "limits": [{ "metric": "requests", "window": "day", "limit": 10 }] })),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    assert_eq!(evaluate_once(&app.state, now_ms()).await.expect("evaluate").resolved_events, 1);
    assert_eq!(evaluate_once(&app.state, now_ms()).await.expect("evaluate").resolved_events, 0);
    wait_for_deliveries(&app, "?project=rl", "delivered", 2).await;
    let payloads = verify_with_standardwebhooks(&secret, &receiver.received());
    let resolved: Vec<&Value> = payloads.iter().filter(|p| p["type"] == "alert.resolved").collect();
    assert_eq!(resolved.len(), 1, "{payloads:?}");
    assert_eq!(resolved[0]["data"]["reason"], "limit_raised");
    assert_eq!(resolved[0]["data"]["new_limit"], 10);
    assert_eq!(resolved[0]["data"]["used_now"], 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rule_kinds_and_fields_are_refused_naming_the_field() {
    let app = alerts_app().await;
    app.create_project("rk").await;
    app.create_project("rk-other").await;
    let receiver = Receiver::start().await;
    let (channel, _) = webhook_channel(&app, "rk", &receiver.url).await;
    let (_, other_key) = app.create_key(json!({ "project": "rk-other", "plan": "free" })).await;
    for (body, param) in [
        (json!({ "project": "rk", "kind": "pager", "channels": [channel] }), "kind"),
        (json!({ "project": "rk", "kind": "forecast", "thresholds": [80], "channels": [channel] }), "thresholds"),
        (json!({ "project": "rk", "kind": "forecast", "window": "minute", "channels": [channel] }), "window"),
        (json!({ "project": "rk", "kind": "forecast", "key": other_key, "channels": [channel] }), "key"),
        (json!({ "kind": "anomaly", "channels": [channel] }), "project"),
        (json!({ "project": "rk", "kind": "anomaly", "window": "day", "channels": [channel] }), "window"),
        (json!({ "project": "rk", "kind": "anomaly", "threshold": -1, "channels": [channel] }), "threshold"),
        (
            json!({ "project": "rk", "kind": "anomaly", "notify_resolved": true, "channels": [channel] }),
            "notify_resolved",
        ),
        (json!({ "project": "rk", "threshold": 3, "channels": [channel] }), "threshold"),
        (json!({ "project": "rk", "key": "k", "channels": [channel] }), "key"),
    ] {
        let r = app.admin(Method::POST, "/api/v1/alerts/rules", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{body}: {:?}", r.body);
        assert!(r.body["error"]["message"].is_string());
    }
    let id = rule(
        &app,
        json!({ "project": "rk", "kind": "anomaly", "metric": "cost_micros", "threshold": 6,
                                "min_volume": 10, "channels": [channel] }),
    )
    .await;
    let r = app.admin(Method::GET, &format!("/api/v1/alerts/rules/{id}"), None).await;
    assert_eq!(r.body["kind"], "anomaly");
    assert_eq!(r.body["threshold"], 6.0);
    assert_eq!(r.body["min_volume"], 10);
    let r = app.admin(Method::PATCH, &format!("/api/v1/alerts/rules/{id}"), Some(json!({ "thresholds": [50] }))).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["error"]["param"], "thresholds");
    app.stop().await;
}
