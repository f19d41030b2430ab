//! Rate limits and quotas as clients see them: the seeds' 429 bodies and headers,
//! and exact admission under concurrency.

use std::collections::BTreeSet;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn the_eleventh_request_in_a_minute_on_free_gets_the_seeds_429() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for i in 0..10 {
        let r = app.chat(&key).await;
        assert_eq!(r.status, 200, "request {i}: {:?}", r.body);
        assert_eq!(r.header_u64("x-ratelimit-remaining"), 9 - i);
    }
    let r = app.chat(&key).await;
    assert_eq!(r.status, 429);
    let error = &r.body["error"];
    assert_eq!(error["message"], "Rate limit exceeded. You can make 10 requests per minute on the free plan.");
    assert_eq!(error["type"], "rate_limit_error");
    assert_eq!(error["code"], "rate_limit_exceeded");
    let details = error["details"].as_object().expect("details");
    let fields: BTreeSet<&str> = details.keys().map(String::as_str).collect();
    assert_eq!(fields, BTreeSet::from(["limit", "remaining", "resetAt", "retryAfter"]));
    assert_eq!(details["limit"], 10);
    assert_eq!(details["remaining"], 0);
    let retry_after = details["retryAfter"].as_u64().expect("retryAfter");
    assert!((1..=61).contains(&retry_after), "{retry_after}");
    assert_eq!(r.header("retry-after"), Some(retry_after.to_string().as_str()));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let reset_at = details["resetAt"].as_u64().expect("resetAt");
    assert!(reset_at > now && reset_at <= now + 62, "resetAt {reset_at} now {now}");
    assert_eq!(r.header_u64("x-ratelimit-limit"), 10);
    assert_eq!(r.header_u64("x-ratelimit-remaining"), 0);
    assert_eq!(r.header_u64("x-quota-remaining"), 50_000 - 10);

    // The refused request is in the ledger, not counted.
    let usage = app.usage("").await;
    assert_eq!(usage["data"][0]["status"], 429);
    assert_eq!(usage["data"][0]["counted"], false);
}

#[tokio::test]
async fn monthly_quota_refusal_has_the_seeds_quota_body() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let (key, _) = app
        .create_key(json!({
            "project": "acme", "plan": "free",
            "limits": [{ "metric": "requests", "window": "month", "limit": 2 }]
        }))
        .await;
    assert_eq!(app.chat(&key).await.status, 200);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header_u64("x-quota-limit"), 2);
    assert_eq!(r.header_u64("x-quota-remaining"), 0);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 429);
    let error = &r.body["error"];
    assert_eq!(error["type"], "quota_exceeded_error");
    assert_eq!(error["code"], "quota_exceeded");
    assert_eq!(error["message"], "Monthly quota exceeded. Upgrade your plan or wait until quota resets.");
    let d = &error["details"];
    assert_eq!((d["used"].as_u64(), d["limit"].as_u64(), d["remaining"].as_u64()), (Some(2), Some(2), Some(0)));
    // Resets at the start of next month, UTC.
    let reset_at = d["resetAt"].as_i64().expect("resetAt") * 1000;
    let now = tollgate_gateway::now_ms();
    assert_eq!(reset_at, tollgate_core::calendar::next_month_start(now));
    assert!(r.header("retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_against_fifty_left_admit_exactly_fifty() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let (key, _) = app
        .create_key(json!({
            "project": "acme", "plan": "pro",
            "limits": [
                { "metric": "requests", "window": "minute", "limit": 10_000 },
                { "metric": "requests", "window": "month", "limit": 60 }
            ]
        }))
        .await;
    for _ in 0..10 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tasks.spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .json(&json!({ "model": "gpt-4o-mini", "messages": [{ "role": "user", "content": "Hi" }] }))
                .send()
                .await
                .expect("sent");
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        });
    }
    let mut ok = 0;
    let mut refused = 0;
    while let Some(status) = tasks.join_next().await {
        match status.expect("task") {
            200 => ok += 1,
            429 => refused += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, refused), (50, 150));
}

/// Issue 10, item 13: a new `X-Anonymous-Id` per request is not a fresh quota each
/// time: with an id, the anonymous limits also count per client address, at
/// `ANONYMOUS_PER_ADDRESS_FACTOR` times the per-visitor limit.
#[tokio::test]
async fn rotating_anonymous_ids_still_meet_a_per_address_limit() {
    let app = spawn_app().await;
    let r = app
        .admin(
            reqwest::Method::PUT,
            "/api/v1/plans/anonymous",
            Some(serde_json::json!({ "limits": [
                { "metric": "requests", "window": "day", "limit": 1, "subject": "anonymous" }] })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let key = app.project_key("acme", "pro").await;
    let per_address = tollgate_core::ANONYMOUS_PER_ADDRESS_FACTOR as usize;
    for n in 0..per_address {
        let id = format!("visitor-{n}");
        assert_eq!(app.chat_with(&key, &[("x-anonymous-id", &id)]).await.status, 200, "visitor {n}");
    }
    let r = app.chat_with(&key, &[("x-anonymous-id", "visitor-new")]).await;
    assert_eq!(r.status, 429, "a fresh id from the same address: {:?}", r.body);
}

/// The end of the day window containing now in `zone`, read on both sides of the
/// request so a test running across the window edge still knows both answers.
fn day_ends(zone: &str) -> [i64; 2] {
    let zone = tollgate_core::Zone::parse(zone).expect("zone");
    let end = |now| zone.bounds(tollgate_core::Window::Day, now).1;
    [end(tollgate_gateway::now_ms()), end(tollgate_gateway::now_ms() + 5_000)]
}

#[tokio::test]
async fn a_day_quota_in_a_time_zone_resets_at_local_midnight() {
    let app = spawn_app().await;
    let day = json!([{ "metric": "requests", "window": "day", "limit": 1 }]);
    let r = app
        .admin(reqwest::Method::PUT, "/api/v1/plans/kolkata", Some(json!({ "limits": day, "time_zone": "Mars/Base" })))
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.body["error"]["param"], "time_zone");
    let r = app
        .admin(
            reqwest::Method::PUT,
            "/api/v1/plans/kolkata",
            Some(json!({ "limits": day, "time_zone": "Asia/Kolkata" })),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    assert_eq!(r.body["time_zone"], "Asia/Kolkata");

    let key = app.project_key("acme", "kolkata").await;
    assert_eq!(app.chat(&key).await.status, 200);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let reset_ms = r.body["error"]["details"]["resetAt"].as_i64().expect("resetAt") * 1000;
    assert!(day_ends("Asia/Kolkata").contains(&reset_ms), "resets at Kolkata's midnight (18:30 UTC), not {reset_ms}");
    // PATCH changes the zone alone, checks it, and null clears it.
    let patch = |body| app.admin(reqwest::Method::PATCH, "/api/v1/plans/kolkata", Some(body));
    let r = patch(json!({ "time_zone": "Nowhere/Atlantis" })).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("time_zone")), "{:?}", r.body);
    let r = patch(json!({ "time_zone": "Asia/Tokyo" })).await;
    assert_eq!((r.status, r.body["time_zone"].as_str()), (200, Some("Asia/Tokyo")), "{:?}", r.body);
    assert_eq!(r.body["limits"].as_array().map(Vec::len), Some(1), "the limits stay");
    let r = patch(json!({ "time_zone": null })).await;
    assert_eq!((r.status, r.body["time_zone"].is_null()), (200, true), "{:?}", r.body);

    // A plan naming no zone follows its project's; the project's zone is operator-set.
    let r = app.admin(reqwest::Method::PUT, "/api/v1/plans/daily", Some(json!({ "limits": day }))).await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    app.create_project("nyc").await;
    let r =
        app.admin(reqwest::Method::PATCH, "/api/v1/projects/nyc", Some(json!({ "time_zone": "Pluto/Nowhere" }))).await;
    assert_eq!((r.status, r.body["error"]["param"].as_str()), (400, Some("time_zone")), "{:?}", r.body);
    let r = app
        .admin(reqwest::Method::PATCH, "/api/v1/projects/nyc", Some(json!({ "time_zone": "America/New_York" })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["time_zone"], "America/New_York");
    let (key, _) = app.create_key(json!({ "project": "nyc", "plan": "daily" })).await;
    assert_eq!(app.chat(&key).await.status, 200);
    let r = app.chat(&key).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let reset_ms = r.body["error"]["details"]["resetAt"].as_i64().expect("resetAt") * 1000;
    assert!(day_ends("America/New_York").contains(&reset_ms), "resets at New York's midnight, not {reset_ms}");
}

/// The 429's five reset fields (`X-RateLimit-Reset`, `details.resetAt`,
/// `Retry-After`, `details.retryAfter`, OpenAI's duration, the IETF `t=`) tell one
/// instant: whole seconds, `resetAt` = now + `retryAfter`.
#[tokio::test]
async fn every_reset_field_of_a_429_is_derived_from_one_instant() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    for _ in 0..10 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let r = app.chat(&key).await;
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    assert_eq!(r.status, 429);
    let d = &r.body["error"]["details"];
    let reset_at = d["resetAt"].as_u64().expect("resetAt");
    let retry_after = d["retryAfter"].as_u64().expect("retryAfter");
    assert_eq!(r.header_u64("retry-after"), retry_after);
    assert_eq!(r.header_u64("x-ratelimit-reset"), reset_at, "header and body agree");
    assert!((before..=after).any(|now| now + retry_after == reset_at), "resetAt = now + retryAfter");
    assert_eq!(r.header("x-ratelimit-reset-requests"), Some(headers_duration(retry_after).as_str()));
    let ietf = r.header("ratelimit").expect("RateLimit");
    assert!(ietf.contains(&format!("\"requests_per_minute\";r=0;t={retry_after}")), "{ietf}");
}

fn headers_duration(secs: u64) -> String {
    match (secs / 3600, (secs % 3600) / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}
