//! The dashboard's HTTP wiring: `/dashboard` pages, sign-in and sign-out, the quota
//! fragment the page polls, the export download, the embedded assets, and `/`
//! sending browsers to `/dashboard`. The HTML is `tollgate_dashboard`'s.
//!
//! Every read and change goes through the admin API's own handlers, called in
//! process (a `tower` oneshot on the admin router) with the session's admin token as
//! the bearer: the dashboard has exactly the API's validation and scoping (a project
//! token's session gets the API's 404 for another project's ids, shown as a 404
//! page), and a revoked admin token ends its sessions at their next page. These are
//! routes only: nothing here runs on the proxy routes.

// A refused page is itself the answer (a redirect or an error page): boxing the
// `Err` response would buy nothing on a path that renders HTML.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::{Map, Value, json};
use tollgate_dashboard::export::{self, ExportFilter, RowFilter};
use tollgate_dashboard::pages::{self, FieldErrors, KeyForm, Layout, PlanForm, query_string};
use tollgate_dashboard::session::{self, COOKIE, LOGIN_COOKIE, Session, Sessions};
use tollgate_gateway::now_ms;
use tower::ServiceExt;

use crate::app::AppState;
use crate::http::error::ApiError;
use crate::http::extract::Path;

mod alerts;
mod keys;
mod plans;
mod usage;

use alerts::*;
use keys::*;
use plans::*;
use usage::*;

/// Keys per page of the keys list.
const KEYS_PAGE: usize = 25;
/// Usage rows per page of the explorer, and how many ledger rows one page may scan.
const USAGE_PAGE: usize = 50;
const USAGE_SCAN_PAGES: usize = 5;
/// At most this many projects' quotas on an operator's overview.
const QUOTA_PROJECTS: usize = 10;

const RANGES: &[(&str, &str)] = &[("1 hour", "1h"), ("24 hours", "24h"), ("7 days", "7d"), ("30 days", "30d")];

#[derive(Clone)]
struct Dashboard {
    state: AppState,
    /// The admin API, called in process.
    api: Router,
    sessions: Arc<Sessions>,
}

/// The dashboard's routes; none when `dashboard.enabled` is false.
pub fn routes(state: &AppState) -> Router<AppState> {
    if !state.config.dashboard.enabled {
        return Router::new();
    }
    let dashboard = Dashboard {
        state: state.clone(),
        api: crate::routes::admin::routes().merge(crate::routes::alerts::routes()).with_state(state.clone()),
        sessions: Arc::new(Sessions::new(state.config.dashboard.session_ttl.as_millis() as i64)),
    };
    Router::new()
        .route("/", axum::routing::any(root))
        .route("/dashboard", get(overview))
        .route("/dashboard/", get(|| async { see_other("/dashboard") }))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/assets/dashboard.css", get(|| async { asset("text/css", tollgate_dashboard::assets::CSS) }))
        .route(
            "/dashboard/assets/dashboard.js",
            get(|| async { asset("text/javascript", tollgate_dashboard::assets::JS) }),
        )
        .route("/dashboard/fragments/quotas", get(quotas_fragment))
        .route("/dashboard/keys", get(keys_page).post(create_key))
        .route("/dashboard/keys/{id}", get(key_page))
        .route("/dashboard/keys/{id}/edit", post(edit_key))
        .route("/dashboard/keys/{id}/rotate", post(rotate_key))
        .route("/dashboard/keys/{id}/revoke", post(revoke_key))
        .route("/dashboard/plans", get(plans_page).post(create_plan))
        .route("/dashboard/plans/{name}", post(save_plan))
        .route("/dashboard/usage", get(usage_page))
        .route("/dashboard/usage/export", get(export))
        .route("/dashboard/alerts", get(alerts_page))
        .route("/dashboard/alerts/rules", post(create_rule))
        .route("/dashboard/alerts/rules/{id}/delete", post(delete_rule))
        .route("/dashboard/alerts/channels", post(create_channel))
        .route("/dashboard/alerts/channels/{id}/delete", post(delete_channel))
        .route("/dashboard/alerts/channels/{id}/test", post(test_channel))
        .route("/dashboard/alerts/events", get(events_page))
        .route("/dashboard/alerts/deliveries/{id}/redeliver", post(redeliver))
        .route("/dashboard/{*rest}", get(unknown_page))
        .with_state(dashboard)
}

/// A page or the response that replaces it (a redirect to sign-in, an error page).
type Page = Result<Response, Response>;

// ----- responses -----

fn html(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    security_headers(h);
    response
}

fn security_headers(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

fn see_other(location: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    security_headers(response.headers_mut());
    response
}

fn rendered(status: StatusCode, page: pages::Rendered) -> Response {
    match page {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "rendering a dashboard page failed");
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                "<!doctype html><title>Error</title><p>The page could not be drawn.</p>".into(),
            )
        }
    }
}

fn message_page(session: &Session, status: StatusCode, heading: &str, message: &str, back: &str) -> Response {
    let layout = Layout::new(heading, "", session.project.as_deref(), &session.csrf);
    rendered(status, pages::message(layout, heading, message, back))
}

fn csrf_refused(session: &Session) -> Response {
    message_page(
        session,
        StatusCode::FORBIDDEN,
        "Form refused",
        "This form's security token is missing or out of date, so nothing was changed. Reload the page and try again.",
        "/dashboard",
    )
}

/// Whether the request reached us over TLS (through a proxy that terminates it).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")))
}

/// The base URL the browser used, for the curl examples.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
        .unwrap_or("localhost:8080");
    format!("{}://{host}", if over_tls(headers) { "https" } else { "http" })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| session::cookie_value(v, name))
}

// ----- forms and queries -----

/// A urlencoded form or query: the first value of each name.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(raw: &[u8]) -> Option<Self> {
        serde_urlencoded::from_bytes::<Vec<(String, String)>>(raw).ok().map(Fields)
    }

    fn query(raw: &Option<String>) -> Self {
        raw.as_deref().and_then(|q| Self::parse(q.as_bytes())).unwrap_or(Fields(Vec::new()))
    }

    fn get(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).unwrap_or("")
    }

    /// Every value of `name` (checkboxes), trimmed.
    fn all(&self, name: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.trim()).collect()
    }

    fn raw(&self, name: &str) -> &str {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
}

// ----- the admin API, in process -----

/// A refusal of the admin API: its status, message and the field it named.
struct ApiFail {
    status: StatusCode,
    message: String,
    param: Option<String>,
}

impl ApiFail {
    fn errors(&self) -> FieldErrors {
        // `limits[0].metric` belongs beside `limits`. A body serde refused names the
        // path in its message ("... target type: limits[0].window: unknown variant").
        let from_message = || {
            let rest = self.message.split("target type: ").nth(1)?;
            rest.split_once(": ").map(|(path, _)| path).filter(|p| !p.contains(' '))
        };
        let field = self.param.as_deref().or_else(from_message).map(|p| p.split(['.', '[']).next().unwrap_or(p));
        // Shown beside the field: serde's words without the envelope ("invalid JSON
        // body: Failed to deserialize ... target type: ") and the position in a body
        // the person never saw.
        let shown = self.message.split("target type: ").nth(1).unwrap_or(&self.message);
        let shown = shown.split(" at line ").next().unwrap_or(shown);
        FieldErrors::one(field, shown.to_owned())
    }
}

impl Dashboard {
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        cookie(headers, COOKIE).and_then(|id| self.sessions.get(id, now_ms()))
    }

    /// The session, or a redirect to sign-in.
    fn signed_in(&self, headers: &HeaderMap) -> Result<Session, Response> {
        self.session(headers).ok_or_else(|| see_other("/dashboard/login"))
    }

    /// A form of a signed-in session with its CSRF token checked.
    fn form(&self, headers: &HeaderMap, body: &[u8]) -> Result<(Session, Fields), Response> {
        let session = self.signed_in(headers)?;
        let Some(fields) = Fields::parse(body) else {
            return Err(message_page(
                &session,
                StatusCode::BAD_REQUEST,
                "Bad form",
                "The form could not be read.",
                "/dashboard",
            ));
        };
        if !session.csrf_matches(Some(fields.raw("csrf"))) {
            return Err(csrf_refused(&session));
        }
        Ok((session, fields))
    }

    async fn send(
        &self,
        session: &Session,
        method: Method,
        uri: &str,
        body: Option<&Value>,
    ) -> Result<Response, ApiFail> {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", session.token())).map_err(|_| ApiFail {
            status: StatusCode::UNAUTHORIZED,
            message: "the session's token is unusable".into(),
            param: None,
        })?;
        let body = match body {
            Some(v) => Body::from(serde_json::to_vec(v).unwrap_or_default()),
            None => Body::empty(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, bearer)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| ApiFail {
                status: StatusCode::BAD_REQUEST,
                message: format!("bad address: {e}"),
                param: None,
            })?;
        request.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
        match self.api.clone().oneshot(request).await {
            Ok(response) => Ok(response),
            Err(never) => match never {},
        }
    }

    async fn call(&self, session: &Session, method: Method, uri: &str, body: Option<&Value>) -> Result<Value, ApiFail> {
        let response = self.send(session, method, uri, body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let message =
            value.pointer("/error/message").and_then(Value::as_str).unwrap_or("the request failed").to_owned();
        let param = value.pointer("/error/param").and_then(Value::as_str).map(str::to_owned);
        Err(ApiFail { status, message, param })
    }

    /// A read a page cannot do without: a refusal becomes the page's answer.
    async fn read(&self, session: &Session, uri: &str) -> Result<Value, Response> {
        self.call(session, Method::GET, uri, None).await.map_err(|f| self.fail_page(session, f))
    }

    /// A read a page can do without (a chart, a forecast): `None` if refused.
    async fn read_optional(&self, session: &Session, uri: &str) -> Option<Value> {
        self.call(session, Method::GET, uri, None).await.ok()
    }

    fn fail_page(&self, session: &Session, f: ApiFail) -> Response {
        match f.status {
            StatusCode::UNAUTHORIZED => see_other("/dashboard/login"),
            StatusCode::NOT_FOUND => {
                message_page(session, StatusCode::NOT_FOUND, "Not found", &f.message, "/dashboard")
            }
            s if s.is_server_error() => message_page(
                session,
                StatusCode::BAD_GATEWAY,
                "Something failed",
                "tollgate could not answer this page; the server log says why. Try again in a moment.",
                "/dashboard",
            ),
            s => message_page(session, s, "Refused", &f.message, "/dashboard"),
        }
    }

    async fn project_ids(&self, session: &Session) -> Vec<String> {
        let Some(list) = self.read_optional(session, "/api/v1/projects").await else { return Vec::new() };
        list["data"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// The plans a session may put keys on: every plan for the operator, the
    /// project's allowed plans for a project token.
    async fn plan_names(&self, session: &Session) -> Vec<String> {
        if let Some(own) = &session.project {
            let uri = format!("/api/v1/projects/{}", pages::query_escape(own));
            return self
                .read_optional(session, &uri)
                .await
                .and_then(|p| p["allowed_plans"].as_array().cloned())
                .map(|ps| ps.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                .unwrap_or_default();
        }
        self.read_optional(session, "/api/v1/plans")
            .await
            .and_then(|p| p["data"].as_array().cloned())
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

/// The project a page asks the API about: the one in the address (another
/// project's is then the API's 404 for a project token), else a project token's own.
fn scoped_project(session: &Session, asked: &str) -> String {
    if asked.is_empty() { session.project.clone().unwrap_or_default() } else { asked.to_owned() }
}

/// `from` as Unix seconds for a range name (`24h` unless another is known).
fn range_from(range: &str) -> (&'static str, i64, &'static str) {
    let hours = match range {
        "1h" => 1,
        "7d" => 7 * 24,
        "30d" => 30 * 24,
        _ => 24,
    };
    let name = RANGES.iter().find(|(_, v)| *v == range).map(|(_, v)| *v).unwrap_or("24h");
    let granularity = if hours > 7 * 24 { "day" } else { "hour" };
    (name, now_ms() / 1000 - hours * 3600, granularity)
}

/// A dashboard address that names no page: an HTML 404 with the navigation.
async fn unknown_page(State(d): State<Dashboard>, headers: HeaderMap) -> Page {
    let session = d.signed_in(&headers)?;
    Ok(message_page(
        &session,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no dashboard page at this address.",
        "/dashboard",
    ))
}

// ----- sign-in -----

/// `/`: a browser's GET goes to the dashboard; anything else gets what `/` gave before
/// the dashboard (the unknown-endpoint 404), whatever the method.
async fn root(method: Method, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    if (method == Method::GET || method == Method::HEAD) && tollgate_dashboard::accept_prefers_html(accept) {
        see_other("/dashboard")
    } else {
        ApiError::UnknownEndpoint("/".into()).into_response()
    }
}

async fn login_page(State(d): State<Dashboard>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_some() {
        return see_other("/dashboard");
    }
    login_form(&headers, StatusCode::OK, None)
}

fn login_form(headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let Some(csrf) = session::random_token() else {
        return html(StatusCode::SERVICE_UNAVAILABLE, "no randomness available".into());
    };
    let mut response = rendered(status, pages::login(error, &csrf));
    let value = session::set_cookie(LOGIN_COOKIE, &csrf, 3600, over_tls(headers));
    if let Ok(v) = HeaderValue::from_str(&value) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

async fn login(
    State(d): State<Dashboard>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(fields) = Fields::parse(&body) else {
        return login_form(&headers, StatusCode::BAD_REQUEST, Some("The form could not be read."));
    };
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if !session::tokens_equal(fields.raw("csrf"), expected) {
        return login_form(
            &headers,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or came from elsewhere; it was refused. Try again."),
        );
    }
    // Guessed tokens are braked per address like guessed keys (`limits.invalid_keys_per_minute`).
    let now = now_ms();
    if let Some(secs) = d.state.invalid_keys.blocked(Some(peer.ip()), now) {
        let message = format!("Too many failed sign-ins from this address: try again in {secs} s.");
        let mut response = login_form(&headers, StatusCode::TOO_MANY_REQUESTS, Some(&message));
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let token = fields.get("token");
    let refused = || {
        d.state.invalid_keys.failed(Some(peer.ip()), now);
        login_form(
            &headers,
            StatusCode::UNAUTHORIZED,
            Some("That admin token is not valid (or was revoked or expired)."),
        )
    };
    if token.is_empty() {
        return login_form(&headers, StatusCode::BAD_REQUEST, Some("Enter an admin token."));
    }
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else { return refused() };
    let mut probe = HeaderMap::new();
    probe.insert(header::AUTHORIZATION, bearer);
    let admin = match crate::auth::admin_from_headers(&d.state, &probe).await {
        Ok(admin) => admin,
        Err(ApiError::AdminUnauthorized(_)) => return refused(),
        Err(e) => return e.into_response(),
    };
    let Some((id, _)) = d.sessions.create(token, admin.0.project_id.clone(), now_ms()) else {
        return html(StatusCode::SERVICE_UNAVAILABLE, "no randomness available".into());
    };
    tracing::info!(project = admin.0.project_id.as_deref().unwrap_or("(operator)"), "dashboard sign-in");
    let mut response = see_other("/dashboard");
    let secure = over_tls(&headers);
    for value in [
        session::set_cookie(COOKIE, &id, d.sessions.ttl_secs(), secure),
        session::set_cookie(LOGIN_COOKIE, "", 0, secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

async fn logout(State(d): State<Dashboard>, headers: HeaderMap, body: Bytes) -> Response {
    let (_, _) = match d.form(&headers, &body) {
        Ok(ok) => ok,
        Err(refused) => return refused,
    };
    if let Some(id) = cookie(&headers, COOKIE) {
        d.sessions.remove(id);
    }
    let mut response = see_other("/dashboard/login");
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(COOKIE, "", 0, over_tls(&headers))) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

// ----- overview -----

async fn overview(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let (range, from, granularity) = range_from(q.get("range"));
    let from = from.to_string();
    let project = scoped_project(&session, q.get("project"));
    let projects = if session.is_operator() { d.project_ids(&session).await } else { Vec::new() };
    let scope = [("project", project.as_str()), ("from", from.as_str())];
    let summary = d.read(&session, &format!("/api/v1/analytics/summary{}", query_string(&scope))).await?;
    let mut series = Vec::new();
    for (title, metric) in [
        ("Requests", "requests"),
        ("Tokens", "total_tokens"),
        ("Cost", "cost_micros"),
        ("Saved by cache", "saved_micros"),
        ("Error rate", "error_rate"),
        ("Latency p95", "latency_p95"),
    ] {
        let q = query_string(&[
            ("metric", metric),
            ("granularity", granularity),
            ("project", project.as_str()),
            ("from", from.as_str()),
        ]);
        if let Some(ts) = d.read_optional(&session, &format!("/api/v1/analytics/timeseries{q}")).await {
            series.push((title, ts));
        }
    }
    let anomalies = if granularity == "hour" {
        d.read_optional(&session, &format!("/api/v1/analytics/anomalies{}", query_string(&scope))).await
    } else {
        None
    };
    let quota_projects: Vec<String> = if project.is_empty() {
        projects.iter().take(QUOTA_PROJECTS).cloned().collect()
    } else {
        vec![project.clone()]
    };
    let quotas = quotas_of(&d, &session, &quota_projects).await;
    let forecast = if project.is_empty() {
        None
    } else {
        d.read_optional(&session, &format!("/api/v1/analytics/forecast{}", query_string(&[("project", &project)])))
            .await
    };
    let base = base_url(&headers);
    let layout = Layout::new("Overview", "overview", session.project.as_deref(), &session.csrf);
    let data = pages::OverviewData {
        range,
        ranges: RANGES,
        project: if session.is_operator() { &project } else { "" },
        projects,
        summary: &summary,
        series: series.iter().map(|(t, v)| (*t, v)).collect(),
        anomalies: anomalies.as_ref(),
        quotas,
        forecast: forecast.as_ref(),
        base_url: &base,
    };
    Ok(rendered(StatusCode::OK, pages::overview(layout, data)))
}

async fn quotas_of(d: &Dashboard, session: &Session, projects: &[String]) -> pages::Quotas {
    let mut statuses = Vec::new();
    for p in projects {
        let uri = format!("/api/v1/usage/status{}", query_string(&[("project", p)]));
        if let Some(s) = d.read_optional(session, &uri).await {
            statuses.push(s);
        }
    }
    pages::quotas_of_projects(&statuses, 20)
}

/// `GET /dashboard/fragments/quotas?key=` or `?project=`: the quota bars alone, for
/// the page's live refresh.
async fn quotas_fragment(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Response {
    let Some(session) = d.session(&headers) else {
        return html(StatusCode::UNAUTHORIZED, "signed out".into());
    };
    let q = Fields::query(&raw);
    let quotas = if !q.get("key").is_empty() {
        let uri = format!("/api/v1/usage/status{}", query_string(&[("key", q.get("key"))]));
        match d.call(&session, Method::GET, &uri, None).await {
            Ok(s) => pages::Quotas { groups: vec![pages::quota_group(&s, false)] },
            Err(f) => return html(f.status, String::new()),
        }
    } else {
        let project = scoped_project(&session, q.get("project"));
        let projects = if project.is_empty() {
            d.project_ids(&session).await.into_iter().take(QUOTA_PROJECTS).collect()
        } else {
            vec![project]
        };
        quotas_of(&d, &session, &projects).await
    };
    rendered(StatusCode::OK, pages::quotas(&quotas))
}
