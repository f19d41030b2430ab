//! The analytics API and the exports over real HTTP: summaries and time series from
//! the rollups, forecasts of quotas, anomalies, scoping by admin token, 400s naming
//! the bad parameter, streaming exports, and retention keeping rollups.

use reqwest::Method;
use serde_json::{Value, json};
use tollgate_core::calendar::{MS_PER_DAY, MS_PER_HOUR, to_rfc3339};
use tollgate_core::{UsageRecord, UsageSource};
use tollgate_gateway::now_ms;

use crate::helpers::*;

fn record(id: String, ts_ms: i64, project: &str, key: &str, model: &str, requests: u64, cost: u64) -> UsageRecord {
    UsageRecord {
        id,
        ts_ms,
        project_id: project.to_owned(),
        key_id: key.to_owned(),
        endpoint: "chat.completions".to_owned(),
        provider: "openai".to_owned(),
        model: Some(model.to_owned()),
        status: 200,
        counted: true,
        requests,
        prompt_tokens: 100 * requests,
        completion_tokens: 10 * requests,
        cost_micros: cost,
        uncached_cost_micros: cost + cost / 4,
        cached_tokens: 10,
        usage_source: UsageSource::Ingested,
        latency_ms: 120,
        ..UsageRecord::default()
    }
}

async fn store(app: &TestApp, records: Vec<UsageRecord>) {
    for chunk in records.chunks(1_000) {
        let fresh = app.state.ledger.append_new(chunk.to_vec()).await.expect("append");
        assert!(fresh.iter().all(|f| *f));
    }
}

async fn project_token(app: &TestApp, project: &str) -> String {
    let r = app.admin(Method::POST, &format!("/api/v1/projects/{project}/tokens"), Some(json!({}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

async fn get(app: &TestApp, path: &str) -> Value {
    let r = app.admin(Method::GET, path, None).await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_and_timeseries_read_the_rollups_scoped_by_token() {
    let app = spawn_app().await;
    let key = app.project_key("an-alpha", "free").await;
    app.create_project("an-beta").await;
    // Three requests through the proxy, and recorded usage of two models.
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    app.settled().await;
    app.state.ledger.flush().await.expect("flush");
    let now = now_ms();
    let key_id = app.usage("?project=an-alpha").await["data"][0]["key_id"].as_str().expect("key id").to_owned();
    let mut records = Vec::new();
    for i in 0..40 {
        let model = if i % 4 == 0 { "claude-sonnet" } else { "gpt-4o" };
        records.push(record(format!("an-s-{i}"), now - (i as i64) * MS_PER_HOUR, "an-alpha", &key_id, model, 2, 1_000));
    }
    records.push(record("an-s-beta".into(), now, "an-beta", "betakey", "gpt-4o", 7, 5_000));
    store(&app, records).await;

    let s = get(&app, "/api/v1/analytics/summary?project=an-alpha").await;
    assert_eq!(s["totals"]["requests"], 3 + 80, "{s}");
    assert!(s["totals"]["cost_micros"].as_u64().expect("cost") >= 40_000, "{s}");
    assert!(s["totals"]["saved_micros"].as_u64().expect("saved") >= 40 * 250, "{s}");
    let models = s["top"]["model"].as_array().expect("models");
    assert_eq!(models[0]["value"], "gpt-4o", "{s}");
    assert_eq!(models[0]["requests"], 60);
    assert_eq!(s["top"]["key"][0]["value"], key_id.as_str());
    assert!(s["totals"]["latency_ms"]["p99"].as_u64().is_some());
    // top=1 folds the rest into "other".
    let s1 = get(&app, "/api/v1/analytics/summary?project=an-alpha&top=1").await;
    let models = s1["top"]["model"].as_array().expect("models");
    assert_eq!(models.len(), 2);
    assert_eq!(models[1]["other"], true);

    // Operator-wide totals include the other project.
    let all = get(&app, "/api/v1/analytics/summary").await;
    assert_eq!(all["totals"]["requests"], 3 + 80 + 7);

    // A project token sees its own project only.
    let token = project_token(&app, "an-alpha").await;
    let own = app.admin_as(&token, Method::GET, "/api/v1/analytics/summary", None).await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    assert_eq!(own.body["totals"]["requests"], 3 + 80);
    let other = app.admin_as(&token, Method::GET, "/api/v1/analytics/summary?project=an-beta", None).await;
    assert_eq!(other.status, 404, "{:?}", other.body);

    // Hourly requests of the last two days, per model, and daily cost in Paris.
    let t = get(&app, "/api/v1/analytics/timeseries?project=an-alpha&metric=requests&group_by=model").await;
    let series = t["series"].as_array().expect("series");
    let total: f64 = series
        .iter()
        .flat_map(|s| s["points"].as_array().expect("points").iter().filter_map(|p| p["value"].as_f64()))
        .sum();
    // The default range is the last 24 hours: the 25 most recent hours of records at most.
    assert!((3.0 + 2.0 * 24.0..=83.0).contains(&total), "{total}: {t}");
    assert!(series.iter().any(|s| s["name"] == "claude-sonnet"));
    let from = to_rfc3339(now - 3 * MS_PER_DAY);
    let d = get(
        &app,
        &format!("/api/v1/analytics/timeseries?project=an-alpha&metric=cost_micros&granularity=day&tz=Europe/Paris&from={from}"),
    )
    .await;
    let points = d["series"][0]["points"].as_array().expect("points");
    assert!(points.len() >= 3 && points.len() <= 5, "{d}");
    assert!(points[0]["t"].as_str().expect("t").ends_with(":00"), "local midnight with its offset: {d}");
    let sum: f64 = points.iter().filter_map(|p| p["value"].as_f64()).sum();
    assert!(sum >= 40_000.0, "{d}");
    let e = get(&app, "/api/v1/analytics/timeseries?project=an-alpha&metric=error_rate").await;
    assert_eq!(
        e["series"][0]["points"].as_array().expect("points").iter().filter_map(|p| p["value"].as_f64()).sum::<f64>(),
        0.0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_a_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (path, param) in [
        ("/api/v1/analytics/timeseries?group_by=colour", "group_by"),
        ("/api/v1/analytics/timeseries?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("/api/v1/analytics/summary?from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
        // Hourly series and anomalies: 31 days at most, whatever the maximum.
        ("/api/v1/analytics/timeseries?from=2026-01-01T00:00:00Z&to=2026-02-15T00:00:00Z", "to"),
        ("/api/v1/analytics/anomalies?from=2026-01-01T00:00:00Z&to=2026-02-15T00:00:00Z", "to"),
        ("/api/v1/analytics/timeseries?tz=Mars/Olympus", "tz"),
        ("/api/v1/analytics/timeseries?metric=happiness", "metric"),
        ("/api/v1/analytics/timeseries?granularity=week", "granularity"),
        ("/api/v1/analytics/summary?top=0", "top"),
        ("/api/v1/analytics/summary?from=yesterday", "from"),
        ("/api/v1/analytics/summary?metric=requests", "metric"),
        ("/api/v1/analytics/anomalies?by=model", "by"),
        ("/api/v1/analytics/anomalies?weeks=99", "weeks"),
        ("/api/v1/analytics/anomalies?threshold=-1", "threshold"),
        ("/api/v1/analytics/forecast", "key"),
        ("/api/v1/usage/export?format=xml", "format"),
        ("/api/v1/analytics/export?format=csv&from=2020-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "to"),
    ] {
        let r = app.admin(Method::GET, path, None).await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{path}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error", "{path}: {:?}", r.body);
    }
    let r = app.admin(Method::GET, "/api/v1/analytics/summary?colour=red", None).await;
    assert_eq!(r.status, 400, "an unknown parameter: {:?}", r.body);
    let r = app.admin(Method::GET, "/api/v1/analytics/forecast?key=nope", None).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = reply(app.http.get(app.url("/api/v1/analytics/summary"))).await;
    assert_eq!(r.status, 401, "no token: {:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forecast_projects_each_quota_of_a_key() {
    let app = spawn_app().await;
    app.create_project("an-fc").await;
    let r = app
        .admin(
            Method::PUT,
            "/api/v1/plans/an-fc-plan",
            Some(json!({ "limits": [
                { "metric": "requests", "window": "day", "limit": 1_000_000 },
                { "metric": "cost_micros", "window": "month", "limit": 5 },
                { "metric": "requests", "window": "minute", "limit": 1_000 },
            ]})),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{:?}", r.body);
    let (_, key_id) = app.create_key(json!({ "project": "an-fc", "plan": "an-fc-plan" })).await;
    let now = now_ms();
    // Ten requests an hour over the last three days (as far as this month and day go).
    let records: Vec<UsageRecord> = (1..=72)
        .map(|h| record(format!("an-fc-{h}"), now - h * MS_PER_HOUR, "an-fc", &key_id, "gpt-4o", 10, 1))
        .collect();
    store(&app, records.clone()).await;
    let f = get(&app, &format!("/api/v1/analytics/forecast?key={key_id}")).await;
    let quotas = f["quotas"].as_array().expect("quotas");
    assert_eq!(quotas.len(), 2, "day and month quotas, not the rate limit: {f}");
    let day = quotas.iter().find(|q| q["window"] == "day").expect("day quota");
    let day_start = tollgate_core::calendar::day_start(now);
    let used_today: u64 = records.iter().filter(|r| r.ts_ms >= day_start).map(|r| r.requests).sum();
    assert_eq!(day["used"], used_today, "{f}");
    assert!(day["projected"].as_u64().expect("projected") >= used_today);
    assert_eq!(day["exhausts_at"], Value::Null);
    let month = quotas.iter().find(|q| q["window"] == "month").expect("month quota");
    let month_start = tollgate_core::calendar::month_start(now);
    let cost_this_month: u64 = records.iter().filter(|r| r.ts_ms >= month_start).map(|r| r.cost_micros).sum();
    assert_eq!(month["used"], cost_this_month);
    if cost_this_month >= 5 {
        assert_eq!(month["exhausts_at"], f["now"], "already over: exhausted now");
    } else {
        assert!(month["exhausts_at"].is_string(), "{f}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_flag_a_spike_against_recent_weeks() {
    let app = spawn_app().await;
    app.create_project("an-spike").await;
    app.create_project("an-calm").await;
    let now = now_ms();
    let hour = now - now.rem_euclid(MS_PER_HOUR);
    let spike = hour - 3 * MS_PER_HOUR;
    let mut records = Vec::new();
    // Five weeks of 100 requests an hour for both projects; one hour of 2,000 in one.
    for h in 0..(5 * 7 * 24) {
        let at = hour - h * MS_PER_HOUR;
        for project in ["an-spike", "an-calm"] {
            let requests = if project == "an-spike" && at == spike { 2_000 } else { 100 };
            records.push(record(format!("{project}-{h}"), at, project, "k", "gpt-4o", requests, 10));
        }
    }
    store(&app, records).await;
    let a = get(&app, "/api/v1/analytics/anomalies?metric=requests&by=project").await;
    let found = a["anomalies"].as_array().expect("anomalies");
    assert_eq!(found.len(), 1, "{a}");
    assert_eq!(found[0]["project"], "an-spike");
    assert_eq!(found[0]["hour"], to_rfc3339(spike));
    assert_eq!(found[0]["observed"], 2_000);
    assert_eq!(found[0]["baseline"], 100.0);
    // A minimum volume above the spike: no alarm.
    let quiet = get(&app, "/api/v1/analytics/anomalies?metric=requests&min_volume=5000").await;
    assert!(quiet["anomalies"].as_array().expect("anomalies").is_empty(), "{quiet}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_stream_every_row_as_csv_and_ndjson() {
    let app = spawn_app().await;
    app.create_project("an-exp").await;
    app.create_project("an-exp-other").await;
    let now = now_ms();
    let records: Vec<UsageRecord> = (0..2_500)
        .map(|i| {
            let mut r = record(format!("an-exp-{i}"), now - i * 60_000, "an-exp", "k1", "gpt-4o", 1, 3);
            if i == 7 {
                r.model = Some("needs, \"quoting\"".to_owned());
            }
            r
        })
        .collect();
    store(&app, records).await;
    store(&app, vec![record("an-exp-x".into(), now, "an-exp-other", "k2", "gpt-4o", 1, 3)]).await;
    let csv = app
        .http
        .get(app.url("/api/v1/usage/export?format=csv&project=an-exp"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("export");
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.expect("body");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2_501, "a header and every row");
    assert!(lines[0].starts_with("id,timestamp,project,"));
    assert!(text.contains("\"needs, \"\"quoting\"\"\""), "RFC 4180 quoting");
    assert!(!text.contains("an-exp-other"));
    // NDJSON, through a project token, within a time range.
    let token = project_token(&app, "an-exp").await;
    let from = to_rfc3339(now - 100 * 60_000 + 1);
    let nd = app
        .http
        .get(app.url(&format!("/api/v1/usage/export?format=ndjson&from={from}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export");
    assert_eq!(nd.status(), 200);
    let text = nd.text().await.expect("body");
    let rows: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(rows.len(), 100, "the last 100 minutes");
    assert!(rows.iter().all(|r| r["project"] == "an-exp"));
    // Rollups: their requests add up to the rows'.
    let r = app
        .http
        .get(app.url("/api/v1/analytics/export?format=ndjson&project=an-exp"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("rollup export");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("body");
    let requests: u64 =
        text.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON")["requests"].as_u64().expect("n")).sum();
    assert_eq!(requests, 2_500);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rows_and_summaries_still_count_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.analytics.max_range_days = 200;
    let app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    app.create_project("an-ret").await;
    let now = now_ms();
    let old: Vec<UsageRecord> = (0..30)
        .map(|i| record(format!("an-ret-old-{i}"), now - 120 * MS_PER_DAY - i * 1000, "an-ret", "k", "m", 1, 1))
        .collect();
    let recent: Vec<UsageRecord> =
        (0..5).map(|i| record(format!("an-ret-new-{i}"), now - i * 1000, "an-ret", "k", "m", 1, 1)).collect();
    store(&app, old).await;
    store(&app, recent).await;
    let run = tollgate_server::retention::retention_once(&app.state, now).await.expect("retention");
    assert_eq!(run.ledger_rows, 30, "rows older than the default 90 days");
    let rows = app.usage("?project=an-ret&limit=1000").await;
    assert_eq!(rows["data"].as_array().expect("data").len(), 5);
    let from = to_rfc3339(now - 125 * MS_PER_DAY);
    let s = get(&app, &format!("/api/v1/analytics/summary?project=an-ret&from={from}")).await;
    assert_eq!(s["totals"]["requests"], 35, "the rollups keep the deleted rows' usage: {s}");
    app.stop().await;
    drop(tmp);
}

/// Runs the real `tollgate` binary against the app; stdout and stderr are pipes.
fn cli(base: &str, args: &[&str]) -> (String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env("TOLLGATE_URL", base)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run tollgate");
    assert!(output.status.success(), "tollgate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_exports_to_a_file_and_prints_tables() {
    let app = spawn_app().await;
    app.create_project("an-cli").await;
    let now = now_ms();
    let records: Vec<UsageRecord> = (0..1_500)
        .map(|i| {
            let model = if i % 3 == 0 { "claude-sonnet" } else { "gpt-4o" };
            record(format!("an-cli-{i}"), now - i * 1_000, "an-cli", "k", model, 1, 2)
        })
        .collect();
    store(&app, records).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("usage.csv");
    let base = app.base.clone();
    let path = file.display().to_string();
    let (out, err) = tokio::task::spawn_blocking(move || {
        cli(&base, &["usage", "export", "--project", "an-cli", "--format", "csv", "-o", &path])
    })
    .await
    .expect("join");
    assert!(out.is_empty() && err.is_empty(), "nothing on a pipe: {out:?} {err:?}");
    let written = std::fs::read_to_string(&file).expect("the file");
    assert_eq!(written.lines().count(), 1_501);
    assert!(!dir.path().join("usage.csv.partial").exists());

    let base = app.base.clone();
    let (top, _) =
        tokio::task::spawn_blocking(move || cli(&base, &["usage", "top", "--by", "model", "--project", "an-cli"]))
            .await
            .expect("join");
    let lines: Vec<&str> = top.lines().collect();
    assert!(lines[0].starts_with("model"), "{top}");
    assert!(lines[1].starts_with("gpt-4o") && lines[1].contains("1000"), "{top}");
    assert!(lines[2].starts_with("claude-sonnet") && lines[2].contains("500"), "{top}");
    let base = app.base.clone();
    let (summary, _) = tokio::task::spawn_blocking(move || cli(&base, &["usage", "summary", "--project", "an-cli"]))
        .await
        .expect("join");
    assert!(summary.lines().any(|l| l.starts_with("requests") && l.ends_with("1500")), "{summary}");
    // The listing is unchanged.
    let base = app.base.clone();
    let (listed, _) =
        tokio::task::spawn_blocking(move || cli(&base, &["usage", "--project", "an-cli", "--limit", "2"]))
            .await
            .expect("join");
    let listed: Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(listed["data"].as_array().expect("data").len(), 2);
    app.stop().await;
}
