//! The dashboard over plain HTTP: the session cookie's flags, sign-in and sign-out,
//! CSRF refusals, a project token's scope (another project's pages and ids are 404),
//! `/` sending browsers to the dashboard. The browser test (headless Chromium driven
//! by playwright-core) is `dashboard_browser.rs`.

use reqwest::Method;
use reqwest::header::{ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestApp, config, spawn_app, spawn_app_with, spawn_mock};

/// A browser without a cookie jar: cookies carried by hand, redirects not followed.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    pub cookies: Vec<(String, String)>,
}

pub struct Page {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Page {
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers.get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok().map(str::to_owned)).collect()
    }

    /// The value of the first `name="…" value="…"` hidden input called `name`.
    pub fn hidden(&self, name: &str) -> String {
        let marker = format!("name=\"{name}\" value=\"");
        let start =
            self.body.find(&marker).unwrap_or_else(|| panic!("no hidden {name} in {}", self.body)) + marker.len();
        self.body[start..].split('"').next().unwrap_or_default().to_owned()
    }
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Self { http, base: app.base.clone(), cookies: Vec::new() }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    async fn send(&mut self, r: reqwest::RequestBuilder) -> Page {
        let r = if self.cookies.is_empty() { r } else { r.header(COOKIE, self.cookie_header()) };
        let response = r.send().await.expect("request sent");
        let page = Page {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.expect("body"),
        };
        for c in page.set_cookies() {
            let first = c.split(';').next().unwrap_or_default();
            if let Some((k, v)) = first.split_once('=') {
                self.cookies.retain(|(name, _)| name != k);
                if !v.is_empty() && !c.contains("Max-Age=0") {
                    self.cookies.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        page
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let r = self.http.get(format!("{}{path}", self.base)).header(ACCEPT, "text/html");
        self.send(r).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let r = with_form(self.http.post(format!("{}{path}", self.base)), form);
        self.send(r).await
    }

    /// Signs in with `token`; returns the answer to the sign-in post.
    pub async fn sign_in(&mut self, token: &str) -> Page {
        let login = self.get("/dashboard/login").await;
        assert_eq!(login.status, 200, "{}", login.body);
        let csrf = login.hidden("csrf");
        self.post("/dashboard/login", &[("csrf", &csrf), ("token", token)]).await
    }

    /// The CSRF token of the signed-in session (from any page's sign-out form).
    pub async fn csrf(&mut self) -> String {
        let page = self.get("/dashboard/keys").await;
        assert_eq!(page.status, 200, "{}", page.body);
        page.hidden("csrf")
    }
}

/// A urlencoded form body.
pub fn with_form(r: reqwest::RequestBuilder, form: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = serde_urlencoded::to_string(form).expect("form");
    r.header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(body)
}

async fn project_token(app: &TestApp, project: &str) -> String {
    let r = app.admin(Method::POST, &format!("/api/v1/projects/{project}/tokens"), None).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body["token"].as_str().expect("token").to_owned()
}

#[tokio::test]
async fn dashboard_sign_in_sets_a_strict_http_only_session_cookie_and_sign_out_ends_it() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);

    // Signed out, every page sends the browser to sign in.
    let page = browser.get("/dashboard").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.headers.get(LOCATION).and_then(|v| v.to_str().ok()), Some("/dashboard/login"));

    // A wrong token is refused beside the field, and no session cookie is set.
    let refused = browser.sign_in("tga_not-a-real-token").await;
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("id=\"token-error\""), "{}", refused.body);
    assert!(!refused.set_cookies().iter().any(|c| c.starts_with("tollgate_session=")));

    let signed_in = browser.sign_in(ADMIN_TOKEN).await;
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    let cookie =
        signed_in.set_cookies().into_iter().find(|c| c.starts_with("tollgate_session=")).expect("a session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=28800"] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure flag ({cookie})");
    assert!(!cookie.contains(ADMIN_TOKEN), "the token is never in the cookie");
    let value = cookie.split(';').next().and_then(|c| c.split_once('=')).map(|(_, v)| v.to_owned()).expect("value");
    assert_eq!(value.len(), 64, "a random 256-bit id");

    let overview = browser.get("/dashboard").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(overview.body.contains("<h1>Overview</h1>"));
    assert!(overview.body.contains("No usage yet"), "an empty state with a curl command");
    assert!(!overview.body.contains(ADMIN_TOKEN), "the token is never in a page");
    assert_eq!(overview.headers.get("cache-control").and_then(|v| v.to_str().ok()), Some("no-store"));
    assert!(overview.headers.get("content-security-policy").is_some());

    // Over TLS (a proxy that terminates it says so) the cookie is Secure.
    let mut tls = Browser::new(&app);
    let login = tls.get("/dashboard/login").await;
    let csrf = login.hidden("csrf");
    let r = tls
        .http
        .post(format!("{}/dashboard/login", app.base))
        .header("x-forwarded-proto", "https")
        .header(COOKIE, tls.cookie_header());
    let r = with_form(r, &[("csrf", csrf.as_str()), ("token", ADMIN_TOKEN)]);
    let secure = tls.send(r).await;
    assert_eq!(secure.status, 303);
    assert!(secure.set_cookies().iter().any(|c| c.starts_with("tollgate_session=") && c.contains("; Secure")));

    // Sign-out clears the cookie and ends the session on the server: the old id no
    // longer works even if a copy of it is kept.
    let csrf = browser.csrf().await;
    let out = browser.post("/dashboard/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert!(out.set_cookies().iter().any(|c| c.starts_with("tollgate_session=;") && c.contains("Max-Age=0")));
    browser.cookies.push(("tollgate_session".into(), value));
    assert_eq!(browser.get("/dashboard").await.status, 303, "the session is gone");
}

#[tokio::test]
async fn dashboard_forms_without_their_csrf_token_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_in(ADMIN_TOKEN).await.status, 303);

    for form in [vec![("project", "acme"), ("name", "no-csrf")], vec![("project", "acme"), ("csrf", "forged")]] {
        let page = browser.post("/dashboard/keys", &form).await;
        assert_eq!(page.status, 403, "{}", page.body);
        assert!(page.body.contains("security token"), "{}", page.body);
    }
    let keys = app.admin(Method::GET, "/api/v1/keys", None).await;
    assert_eq!(keys.body["data"].as_array().map(Vec::len), Some(0), "no key was made: {:?}", keys.body);

    // Sign-out without the token is refused too: the session stays.
    assert_eq!(browser.post("/dashboard/logout", &[]).await.status, 403);
    assert_eq!(browser.get("/dashboard").await.status, 200);

    // The sign-in form carries its own token (there is no session yet).
    let mut fresh = Browser::new(&app);
    let page = fresh.post("/dashboard/login", &[("token", ADMIN_TOKEN)]).await;
    assert_eq!(page.status, 403);
    assert!(!page.set_cookies().iter().any(|c| c.starts_with("tollgate_session=") && !c.contains("Max-Age=0")));

    // With the token the same form works, and a bad field is shown beside it.
    let csrf = browser.csrf().await;
    let page = browser.post("/dashboard/keys", &[("csrf", &csrf), ("project", "acme"), ("plan", "no-such-plan")]).await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("id=\"plan-error\""), "{}", page.body);
    let page = browser.post("/dashboard/keys", &[("csrf", &csrf), ("project", "acme"), ("name", "ok")]).await;
    assert_eq!(page.status, 201, "{}", page.body);
    assert!(page.body.contains("data-testid=\"secret\">tg_"), "the secret, once: {}", page.body);
}

#[tokio::test]
async fn dashboard_sessions_of_a_project_token_see_only_their_project() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    app.create_project("globex").await;
    let (acme_secret, acme_key) = app.create_key(json!({ "project": "acme", "name": "acme-key" })).await;
    let (globex_secret, globex_key) = app.create_key(json!({ "project": "globex", "name": "globex-key" })).await;
    assert_eq!(app.chat(&acme_secret).await.status, 200);
    assert_eq!(app.chat(&globex_secret).await.status, 200);
    app.settled().await;
    app.state.ledger.flush().await.expect("flush");
    let token = project_token(&app, "acme").await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_in(&token).await.status, 303);

    let keys = browser.get("/dashboard/keys").await;
    assert_eq!(keys.status, 200);
    assert!(keys.body.contains(&acme_key) && !keys.body.contains(&globex_key), "{}", keys.body);
    assert!(keys.body.contains("Project acme"));
    assert_eq!(browser.get(&format!("/dashboard/keys/{acme_key}")).await.status, 200);

    // Another project's key, pages and exports: 404, as in the API.
    for path in [
        format!("/dashboard/keys/{globex_key}"),
        "/dashboard?project=globex".to_owned(),
        "/dashboard/keys?project=globex".to_owned(),
        "/dashboard/usage?project=globex".to_owned(),
        "/dashboard/usage/export?format=csv&project=globex".to_owned(),
        format!("/dashboard/fragments/quotas?key={globex_key}"),
    ] {
        let page = browser.get(&path).await;
        assert_eq!(page.status, 404, "{path}: {}", page.body);
        assert!(!page.body.contains("globex-key"), "{path}");
    }
    let csrf = browser.csrf().await;
    let revoke =
        browser.post(&format!("/dashboard/keys/{globex_key}/revoke"), &[("csrf", &csrf), ("confirm", "yes")]).await;
    assert_eq!(revoke.status, 404, "{}", revoke.body);
    assert_eq!(app.chat(&globex_secret).await.status, 200, "the other project's key still works");

    // The usage explorer and its export hold only acme's requests.
    let usage = browser.get("/dashboard/usage").await;
    assert_eq!(usage.status, 200);
    assert!(usage.body.contains(&acme_key) && !usage.body.contains(&globex_key));
    let csv = browser.get("/dashboard/usage/export?format=csv").await;
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("id,timestamp,project"), "{}", csv.body);
    assert!(csv.body.contains(",acme,") && !csv.body.contains("globex"), "{}", csv.body);

    // The export narrowed by the filters the API does not take: still streamed, the
    // header kept.
    let none = browser.get("/dashboard/usage/export?format=csv&model=no-such-model").await;
    assert_eq!(none.status, 200);
    assert_eq!(none.body.trim_end().lines().count(), 1, "only the header: {}", none.body);
    let ok = browser.get("/dashboard/usage/export?format=ndjson&model=gpt-4o-mini&status=2xx").await;
    assert_eq!(ok.status, 200);
    let lines: Vec<serde_json::Value> =
        ok.body.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(!lines.is_empty() && lines.iter().all(|r| r["model"] == "gpt-4o-mini" && r["status"] == 200), "{lines:?}");

    // Project tokens cannot edit plans: the API's 403, shown as a page.
    let plan = browser
        .post("/dashboard/plans/free", &[("csrf", &csrf), ("limits", "[]"), ("description", ""), ("time_zone", "")])
        .await;
    assert_eq!(plan.status, 403, "{}", plan.body);
}

#[tokio::test]
async fn dashboard_root_sends_browsers_to_the_dashboard_and_api_clients_get_json() {
    let app = spawn_app().await;
    let mut browser = Browser::new(&app);
    let page = browser.get("/").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.headers.get(LOCATION).and_then(|v| v.to_str().ok()), Some("/dashboard"));
    let api = app.http.get(app.url("/")).header(ACCEPT, "application/json").send().await.expect("sent");
    assert_eq!(api.status(), 404);
    let body: serde_json::Value = api.json().await.expect("json");
    assert!(body["error"]["code"].is_string(), "{body}");
    let post = app.http.post(app.url("/")).header(ACCEPT, "text/html").send().await.expect("sent");
    assert_eq!(post.status(), 404, "only a GET is sent to the dashboard");
    // The assets are served from the binary.
    let css = browser.get("/dashboard/assets/dashboard.css").await;
    assert_eq!(css.status, 200);
    assert!(css.headers.get("content-type").and_then(|v| v.to_str().ok()) == Some("text/css"));
    // Malformed forms and ids are clear 4xx, never a 500.
    assert_eq!(browser.sign_in(ADMIN_TOKEN).await.status, 303);
    let csrf = browser.csrf().await;
    let r =
        browser.http.post(format!("{}/dashboard/keys", app.base)).header(COOKIE, browser.cookie_header()).body("%%%");
    let bad = browser.send(r).await;
    assert!(bad.status == 400 || bad.status == 403, "{}", bad.status);
    let page = browser.get("/dashboard/no/such/page").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("There is no dashboard page"), "{}", page.body);
    let page = browser.get("/dashboard/keys/..%2F..%2Fetc").await;
    assert_eq!(page.status, 404, "{}", page.body);
    let page = browser.post("/dashboard/keys/nope/rotate", &[("csrf", &csrf), ("grace_period_secs", "soon")]).await;
    assert!(page.status == 400 || page.status == 404, "{}", page.status);
    let page = browser.get("/dashboard/usage?from=yesterday").await;
    assert_eq!(page.status, 400, "{}", page.body);
    assert!(page.body.contains("id=\"f-from-error\""), "{}", page.body);
}

#[tokio::test]
async fn dashboard_sign_in_guesses_are_braked_per_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut config = config(tmp.path(), &mock_url);
    config.invalid_keys_per_minute = 3;
    let app = spawn_app_with(config).await;
    let mut browser = Browser::new(&app);
    let mut statuses = Vec::new();
    for n in 0..4 {
        statuses.push(browser.sign_in(&format!("tga_guess-{n}")).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 429], "three guesses, then the brake");
    let braked = browser.sign_in(ADMIN_TOKEN).await;
    assert_eq!(braked.status, 429, "even the right token waits out the minute");
    assert!(braked.headers.get("retry-after").is_some());
    assert!(braked.body.contains("Too many failed sign-ins"), "{}", braked.body);
}

#[tokio::test]
async fn dashboard_can_be_turned_off_and_then_no_route_exists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut config = config(tmp.path(), &mock_url);
    config.dashboard.enabled = false;
    let app = spawn_app_with(config).await;
    let mut browser = Browser::new(&app);
    for path in ["/", "/dashboard", "/dashboard/login"] {
        let page = browser.get(path).await;
        assert_eq!(page.status, 404, "{path}");
        assert!(page.body.contains("unknown_endpoint"), "{path}: {}", page.body);
    }
}

/// An app whose alerts may send to local receivers, with fast retries.
pub async fn alerts_dashboard_app() -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = crate::helpers::raw_config(tmp.path(), &mock_url);
    crate::alerts::alerts_config(&mut raw);
    let mut app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    app.keep_dir(tmp);
    app
}

#[tokio::test]
async fn dashboard_alerts_forms_create_channels_and_rules_test_send_and_redeliver() {
    let app = alerts_dashboard_app().await;
    app.create_project("acme").await;
    app.create_project("globex").await;
    let receiver = crate::alerts::Receiver::start().await;
    let mut browser = Browser::new(&app);
    assert_eq!(browser.sign_in(ADMIN_TOKEN).await.status, 303);

    let empty = browser.get("/dashboard/alerts").await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert!(empty.body.contains("aria-current=\"page\">Alerts</a>"), "the nav link");
    assert!(
        empty.body.contains("data-testid=\"rules-empty\"") && empty.body.contains("data-testid=\"channels-empty\"")
    );
    let csrf = empty.hidden("csrf");

    // Without its CSRF token a form changes nothing.
    let hook = [("project", "acme"), ("kind", "webhook"), ("name", "ops hook"), ("url", receiver.url.as_str())];
    let forged = browser.post("/dashboard/alerts/channels", &hook).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    let forged_rule = browser.post("/dashboard/alerts/rules", &[("project", "acme"), ("channels", "ch_x")]).await;
    assert_eq!(forged_rule.status, 403);
    let none = app.admin(Method::GET, "/api/v1/alerts/channels", None).await;
    assert_eq!(none.body["data"].as_array().map(Vec::len), Some(0), "{:?}", none.body);

    // The API's validation message is shown beside the field.
    let bad = browser
        .post(
            "/dashboard/alerts/channels",
            &[("csrf", &csrf), ("project", "acme"), ("kind", "webhook"), ("url", "ftp://x")],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("id=\"curl-error\""), "{}", bad.body);

    // A webhook channel: its signing secret shown once.
    let mut form = vec![("csrf", csrf.as_str())];
    form.extend(hook);
    let created = browser.post("/dashboard/alerts/channels", &form).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert!(created.body.contains("data-testid=\"secret\">whsec_"), "{}", created.body);
    assert!(created.body.contains("data-copy=\"secret\""));
    let channels = app.admin(Method::GET, "/api/v1/alerts/channels", None).await;
    let channel = channels.body["data"][0]["id"].as_str().expect("channel").to_owned();
    assert!(!browser.get("/dashboard/alerts").await.body.contains("whsec_"), "never shown again");

    // Test-send: delivered to the receiver, the result on the page.
    let tested = browser.post(&format!("/dashboard/alerts/channels/{channel}/test"), &[("csrf", &csrf)]).await;
    assert_eq!(tested.status, 200, "{}", tested.body);
    assert!(tested.body.contains("data-testid=\"test-result\""), "{}", tested.body);
    assert!(tested.body.contains("badge delivered"), "{}", tested.body);
    assert_eq!(receiver.received().len(), 1);

    let forged = browser.post(&format!("/dashboard/alerts/channels/{channel}/test"), &[]).await;
    assert_eq!(forged.status, 403, "a test send without CSRF is refused");
    assert_eq!(receiver.received().len(), 1);

    // Slack and e-mail channels through the same form; a missing sender is named.
    let slack = browser
        .post(
            "/dashboard/alerts/channels",
            &[("csrf", &csrf), ("project", "acme"), ("kind", "slack"), ("name", "ops slack"), ("url", &receiver.url)],
        )
        .await;
    assert_eq!(slack.status, 303, "{}", slack.body);
    let mail = [
        ("csrf", csrf.as_str()),
        ("project", "acme"),
        ("kind", "email"),
        ("name", "ops mail"),
        ("smtp_host", "127.0.0.1"),
        ("smtp_port", "2525"),
        ("smtp_tls", "none"),
        ("to", "ops@example.com, oncall@example.com"),
    ];
    let no_from = browser.post("/dashboard/alerts/channels", &mail).await;
    assert_eq!(no_from.status, 400, "{}", no_from.body);
    assert!(no_from.body.contains("id=\"cfrom-error\""), "{}", no_from.body);
    assert!(no_from.body.contains("value=\"ops@example.com, oncall@example.com\""), "what was typed is kept");
    let mut mail = mail.to_vec();
    mail.push(("from", "tollgate@example.com"));
    let made = browser.post("/dashboard/alerts/channels", &mail).await;
    assert_eq!(made.status, 303, "{}", made.body);
    let page = browser.get("/dashboard/alerts?done=channel-created").await;
    assert!(page.body.contains("Channel created."));
    assert!(page.body.contains("ops@example.com, oncall@example.com via 127.0.0.1"), "{}", page.body);
    let all = app.admin(Method::GET, "/api/v1/alerts/channels?project=acme", None).await;
    let kinds: Vec<&str> =
        all.body["data"].as_array().expect("channels").iter().filter_map(|c| c["kind"].as_str()).collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds.contains(&"slack") && kinds.contains(&"email"));

    // A rule: bad thresholds and no channel are refused beside their fields.
    let bad = browser
        .post(
            "/dashboard/alerts/rules",
            &[("csrf", &csrf), ("project", "acme"), ("thresholds", "eighty"), ("channels", &channel)],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("id=\"rthresholds-error\""), "{}", bad.body);
    let bad =
        browser.post("/dashboard/alerts/rules", &[("csrf", &csrf), ("project", "acme"), ("thresholds", "80")]).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("id=\"rchannels-error\""), "{}", bad.body);
    let made = browser
        .post(
            "/dashboard/alerts/rules",
            &[
                ("csrf", &csrf),
                ("project", "acme"),
                ("name", "daily requests"),
                ("metric", "requests"),
                ("window", "day"),
                ("thresholds", "50, 100"),
                ("channels", &channel),
            ],
        )
        .await;
    assert_eq!(made.status, 303, "{}", made.body);
    let rules = app.admin(Method::GET, "/api/v1/alerts/rules", None).await;
    let rule = &rules.body["data"][0];
    assert_eq!(rule["thresholds"], json!([50, 100]), "{rule}");
    assert_eq!(rule["channels"], json!([channel]));
    assert_eq!(rule["metric"], "requests");
    let rule = rule["id"].as_str().expect("rule").to_owned();
    let page = browser.get("/dashboard/alerts").await;
    assert!(page.body.contains(&format!("data-rule=\"{rule}\"")) && page.body.contains("50%, 100%"), "{}", page.body);
    assert!(page.body.contains("ops hook (webhook)"));

    // A channel no receiver answers: retried, then a dead letter, redelivered from
    // the events page.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let dead_url = format!("http://127.0.0.1:{port}/hook");
    let r = app
        .admin(
            Method::POST,
            "/api/v1/alerts/channels",
            Some(json!({ "project": "acme", "kind": "webhook", "url": dead_url })),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let dead_channel = r.body["id"].as_str().expect("id").to_owned();
    let tested = browser.post(&format!("/dashboard/alerts/channels/{dead_channel}/test"), &[("csrf", &csrf)]).await;
    assert_eq!(tested.status, 200);
    assert!(tested.body.contains("data-testid=\"test-result\""), "{}", tested.body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dead = loop {
        let d = app.admin(Method::GET, "/api/v1/alerts/deliveries?status=dead", None).await;
        if let Some(id) = d.body["data"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let events = browser.get("/dashboard/alerts/events").await;
    assert_eq!(events.status, 200, "{}", events.body);
    assert!(events.body.contains(&format!("data-delivery=\"{dead}\" data-status=\"dead\"")), "{}", events.body);
    assert!(events.body.contains("dead letter") && events.body.contains("badge delivered"), "{}", events.body);
    assert!(events.body.contains(&format!("/dashboard/alerts/deliveries/{dead}/redeliver")));
    let dead_only = browser.get("/dashboard/alerts/events?status=dead").await;
    assert!(!dead_only.body.contains("badge delivered"), "{}", dead_only.body);
    let redelivered = browser.post(&format!("/dashboard/alerts/deliveries/{dead}/redeliver"), &[("csrf", &csrf)]).await;
    assert_eq!(redelivered.status, 303, "{}", redelivered.body);
    let d = app.admin(Method::GET, &format!("/api/v1/alerts/deliveries/{dead}"), None).await;
    assert_ne!(d.body["status"], "dead", "{:?}", d.body);

    // A project token's session sees only its project: another project's ids are 404.
    let globex = project_token(&app, "globex").await;
    let mut other = Browser::new(&app);
    assert_eq!(other.sign_in(&globex).await.status, 303);
    let page = other.get("/dashboard/alerts").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains(&rule) && !page.body.contains(&channel), "{}", page.body);
    let ocsrf = page.hidden("csrf");
    let confirm = [("csrf", ocsrf.as_str()), ("confirm", "yes")];
    assert_eq!(other.post(&format!("/dashboard/alerts/rules/{rule}/delete"), &confirm).await.status, 404);
    assert_eq!(other.post(&format!("/dashboard/alerts/channels/{channel}/test"), &confirm).await.status, 404);
    assert_eq!(other.post(&format!("/dashboard/alerts/channels/{channel}/delete"), &confirm).await.status, 404);
    assert_eq!(other.post(&format!("/dashboard/alerts/deliveries/{dead}/redeliver"), &confirm).await.status, 404);
    let events = other.get("/dashboard/alerts/events").await;
    assert!(events.body.contains("data-testid=\"events-empty\""), "{}", events.body);
    assert_eq!(receiver.received().len(), 1, "the other project's test-send sent nothing");

    // A channel a rule sends to cannot be deleted (the API's 409, shown); the rule can.
    let refused = browser
        .post(&format!("/dashboard/alerts/channels/{channel}/delete"), &[("csrf", &csrf), ("confirm", "yes")])
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("error-box"));
    let gone =
        browser.post(&format!("/dashboard/alerts/rules/{rule}/delete"), &[("csrf", &csrf), ("confirm", "yes")]).await;
    assert_eq!(gone.status, 303);
    let rules = app.admin(Method::GET, "/api/v1/alerts/rules", None).await;
    assert_eq!(rules.body["data"].as_array().map(Vec::len), Some(0));
}
