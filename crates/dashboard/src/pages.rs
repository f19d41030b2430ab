//! The pages, as askama templates over view models built from the admin API's JSON
//! answers (the same bodies an API client reads). Every value is escaped by askama;
//! only the SVG this crate draws is inserted as markup.

use askama::Template;
use serde_json::Value;

use crate::chart::{self, Series};
use crate::format::{self, Time};

pub type Rendered = Result<String, askama::Error>;

/// What every signed-in page shows around its content.
#[derive(Clone, Debug)]
pub struct Layout {
    pub title: String,
    /// `overview`, `keys`, `plans` or `usage`: the highlighted tab.
    pub active: &'static str,
    pub scope: String,
    pub csrf: String,
    pub is_operator: bool,
}

impl Layout {
    pub fn new(title: impl Into<String>, active: &'static str, project: Option<&str>, csrf: &str) -> Self {
        let scope = match project {
            None => "Operator · all projects".to_owned(),
            Some(p) => format!("Project {p}"),
        };
        Self { title: title.into(), active, scope, csrf: csrf.to_owned(), is_operator: project.is_none() }
    }
}

/// Validation messages by field (`param` of the API's 400), and one for the form.
#[derive(Clone, Debug, Default)]
pub struct FieldErrors(pub Vec<(String, String)>);

impl FieldErrors {
    pub fn one(field: Option<&str>, message: impl Into<String>) -> Self {
        Self(vec![(field.unwrap_or("").to_owned(), message.into())])
    }

    pub fn get(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|(f, _)| f == field && !f.is_empty()).map(|(_, m)| m.as_str())
    }

    /// Messages for no field, or for a field this form does not show.
    pub fn general_for(&self, shown: &[&str]) -> Option<String> {
        let rest: Vec<&str> = self
            .0
            .iter()
            .filter(|(f, _)| f.is_empty() || !shown.contains(&f.as_str()))
            .map(|(_, m)| m.as_str())
            .collect();
        (!rest.is_empty()).then(|| rest.join(" "))
    }

    pub fn general(&self) -> Option<String> {
        self.general_for(FIELDS)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The fields the forms show beside their inputs; an error naming any other field is
/// shown at the top of its form.
const FIELDS: &[&str] = &[
    "project",
    "name",
    "plan",
    "metadata",
    "limits",
    "grace_period_secs",
    "confirm",
    "time_zone",
    "key",
    "from",
    "to",
    "model",
    "provider",
    "endpoint",
    "status",
    "metric",
    "group_by",
];

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or("")
}

fn u64_of(v: &Value, field: &str) -> u64 {
    v.get(field).and_then(Value::as_u64).unwrap_or(0)
}

fn time_of(v: &Value, field: &str) -> Option<Time> {
    v.get(field).and_then(Value::as_str).map(Time::of)
}

/// The curl command of an empty state.
pub fn curl_example(base_url: &str, secret: Option<&str>) -> String {
    format!(
        "curl {base_url}/v1/chat/completions \\\n  -H \"Authorization: Bearer {}\" \\\n  -H \"Content-Type: application/json\" \\\n  -d '{{\"model\": \"gpt-4o-mini\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello\"}}]}}'",
        secret.unwrap_or("tg_...")
    )
}

// ----- sign-in and messages -----

#[derive(Template)]
#[template(path = "login.html")]
struct Login<'a> {
    error: Option<&'a str>,
    csrf: &'a str,
}

pub fn login(error: Option<&str>, csrf: &str) -> Rendered {
    Login { error, csrf }.render()
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    layout: Layout,
    heading: &'a str,
    message: &'a str,
    back: &'a str,
}

pub fn message(layout: Layout, heading: &str, message: &str, back: &str) -> Rendered {
    Message { layout, heading, message, back }.render()
}

// ----- charts -----

pub struct ChartView {
    pub title: String,
    pub metric: String,
    pub svg: String,
    pub legend: Vec<(String, String)>,
    pub notes: Vec<String>,
}

/// A chart of one `GET /api/v1/analytics/timeseries` answer.
pub fn chart_of(title: &str, timeseries: &Value) -> ChartView {
    let metric = str_of(timeseries, "metric").to_owned();
    let series: Vec<Series> = timeseries
        .get("series")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|s| Series {
                    name: str_of(s, "name").to_owned(),
                    points: s
                        .get("points")
                        .and_then(Value::as_array)
                        .map(|ps| {
                            ps.iter()
                                .map(|p| (str_of(p, "t").to_owned(), p.get("value").and_then(Value::as_f64)))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    ChartView {
        title: title.to_owned(),
        svg: chart::line_chart(title, &metric, &series),
        legend: chart::legend(&series),
        metric,
        notes: Vec::new(),
    }
}

/// Anomaly notes of a `GET /api/v1/analytics/anomalies` answer, for the chart of its metric.
pub fn anomaly_notes(anomalies: &Value) -> Vec<String> {
    let metric = str_of(anomalies, "metric");
    anomalies
        .get("anomalies")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .take(5)
                .map(|a| {
                    let who = a.get("project").or_else(|| a.get("key")).and_then(Value::as_str).unwrap_or("");
                    let observed = a.get("observed").and_then(Value::as_f64).unwrap_or(0.0);
                    let baseline = a.get("baseline").and_then(Value::as_f64).unwrap_or(0.0);
                    let score = a.get("score").and_then(Value::as_f64).unwrap_or(0.0);
                    let kind = if score < 0.0 { "Drop" } else { "Spike" };
                    format!(
                        "{kind} for {who} at {}: {} against a usual {} (score {score:.1})",
                        format::utc_label(str_of(a, "hour")),
                        format::metric_value(metric, observed),
                        format::metric_value(metric, baseline)
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

// ----- quotas -----

pub struct QuotaBar {
    pub name: String,
    pub used: String,
    pub limit: String,
    pub percent: f64,
    pub percent_label: String,
    pub class: &'static str,
    pub reset: Option<Time>,
    pub bar: String,
}

pub struct QuotaGroup {
    pub title: String,
    pub link: Option<String>,
    pub state: String,
    pub bars: Vec<QuotaBar>,
}

#[derive(Template)]
#[template(path = "quotas.html")]
pub struct Quotas {
    pub groups: Vec<QuotaGroup>,
}

pub fn quotas(q: &Quotas) -> Rendered {
    q.render()
}

/// One key's group from a `GET /api/v1/usage/status?key=` answer (or one entry of
/// `keys` in a project's answer).
pub fn quota_group(status: &Value, link: bool) -> QuotaGroup {
    let key = str_of(status, "key_id");
    let bars = status
        .get("limits")
        .and_then(Value::as_array)
        .map(|limits| {
            limits
                .iter()
                .map(|l| {
                    let metric = str_of(l, "metric");
                    let percent = l.get("percent").and_then(Value::as_f64).unwrap_or(0.0);
                    QuotaBar {
                        name: str_of(l, "name").to_owned(),
                        used: format::metric_value(metric, u64_of(l, "used") as f64),
                        limit: format::metric_value(metric, u64_of(l, "limit") as f64),
                        percent,
                        percent_label: format::percent(Some(percent)),
                        class: chart::bar_class(percent),
                        reset: time_of(l, "reset"),
                        bar: chart::quota_bar(percent),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    QuotaGroup {
        title: format!("{key} · plan {}", str_of(status, "plan")),
        link: link.then(|| format!("/dashboard/keys/{key}")),
        state: str_of(status, "state").to_owned(),
        bars,
    }
}

/// The quota groups of project status answers, busiest first, at most `max` keys.
pub fn quotas_of_projects(statuses: &[Value], max: usize) -> Quotas {
    let mut groups: Vec<QuotaGroup> = statuses
        .iter()
        .flat_map(|s| s.get("keys").and_then(Value::as_array).cloned().unwrap_or_default())
        .map(|k| quota_group(&k, true))
        .filter(|g| !g.bars.is_empty())
        .collect();
    let worst = |g: &QuotaGroup| g.bars.iter().map(|b| b.percent).fold(0.0f64, f64::max);
    groups.sort_by(|a, b| worst(b).total_cmp(&worst(a)));
    groups.truncate(max);
    Quotas { groups }
}

pub struct ForecastRow {
    pub name: String,
    pub used: String,
    pub projected: String,
    pub class: &'static str,
    pub exhausts: Option<Time>,
}

/// The rows of a `GET /api/v1/analytics/forecast` answer.
pub fn forecast_rows(forecast: &Value) -> Vec<ForecastRow> {
    forecast
        .get("quotas")
        .and_then(Value::as_array)
        .map(|qs| {
            qs.iter()
                .map(|q| {
                    let metric = str_of(q, "metric");
                    let limit = u64_of(q, "limit");
                    let projected_percent = q.get("projected_percent").and_then(Value::as_f64).unwrap_or(0.0);
                    ForecastRow {
                        name: str_of(q, "name").to_owned(),
                        used: format!(
                            "{} of {}",
                            format::metric_value(metric, u64_of(q, "used") as f64),
                            format::metric_value(metric, limit as f64)
                        ),
                        projected: format!(
                            "{} ({})",
                            format::metric_value(metric, u64_of(q, "projected") as f64),
                            format::percent(Some(projected_percent))
                        ),
                        class: chart::bar_class(projected_percent),
                        exhausts: time_of(q, "exhausts_at"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

// ----- overview -----

pub struct Stat {
    pub key: &'static str,
    pub label: &'static str,
    pub value: String,
    pub hint: String,
}

pub struct TopRow {
    pub name: String,
    pub link: Option<String>,
    pub requests: String,
    pub tokens: String,
    pub cost: String,
}

pub struct TopTable {
    pub title: &'static str,
    pub column: &'static str,
    pub rows: Vec<TopRow>,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview<'a> {
    layout: Layout,
    ranges: Vec<(&'static str, String, bool)>,
    range: &'a str,
    project: &'a str,
    projects: Vec<String>,
    empty_curl: Option<String>,
    stats: Vec<Stat>,
    charts: Vec<ChartView>,
    tops: Vec<TopTable>,
    quotas_url: String,
    quotas_html: String,
    forecasts: Vec<ForecastRow>,
}

/// What the overview is drawn from: the API's answers for the chosen range.
pub struct OverviewData<'a> {
    pub range: &'a str,
    /// The ranges offered, `(label, value)`.
    pub ranges: &'a [(&'static str, &'static str)],
    /// The project chosen by an operator (empty: all).
    pub project: &'a str,
    pub projects: Vec<String>,
    pub summary: &'a Value,
    /// `(title, timeseries answer)`.
    pub series: Vec<(&'static str, &'a Value)>,
    pub anomalies: Option<&'a Value>,
    pub quotas: Quotas,
    pub forecast: Option<&'a Value>,
    pub base_url: &'a str,
}

fn top_table(summary: &Value, dim: &str, title: &'static str, column: &'static str) -> TopTable {
    let rows = summary
        .pointer(&format!("/top/{dim}"))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .map(|g| {
                    let other = g.get("other").and_then(Value::as_bool).unwrap_or(false);
                    let name = if other { "other".to_owned() } else { str_of(g, "value").to_owned() };
                    let shown = if name.is_empty() { "(none)".to_owned() } else { name.clone() };
                    TopRow {
                        link: (dim == "key" && !other && !name.is_empty()).then(|| format!("/dashboard/keys/{name}")),
                        name: shown,
                        requests: format::count(u64_of(g, "requests")),
                        tokens: format::count(u64_of(g, "total_tokens")),
                        cost: format::dollars(u64_of(g, "cost_micros")),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    TopTable { title, column, rows }
}

pub fn overview(layout: Layout, d: OverviewData<'_>) -> Rendered {
    let totals = d.summary.get("totals").cloned().unwrap_or(Value::Null);
    let requests = u64_of(&totals, "requests");
    let lat = totals.get("latency_ms").cloned().unwrap_or(Value::Null);
    let ms = |f: &str| lat.get(f).and_then(Value::as_f64);
    let error_rate = totals.get("error_rate").and_then(Value::as_f64);
    let stats = vec![
        Stat { key: "requests", label: "Requests", value: format::count(requests), hint: String::new() },
        Stat {
            key: "tokens",
            label: "Tokens",
            value: format::tokens(u64_of(&totals, "total_tokens")),
            hint: format!(
                "{} in · {} out",
                format::count(u64_of(&totals, "input_tokens")),
                format::count(u64_of(&totals, "output_tokens"))
            ),
        },
        Stat {
            key: "cost",
            label: "Cost",
            value: format::dollars(u64_of(&totals, "cost_micros")),
            hint: format!("{} without cache", format::dollars(u64_of(&totals, "potential_cost_micros"))),
        },
        Stat {
            key: "saved",
            label: "Saved by cache",
            value: format::dollars(u64_of(&totals, "saved_micros")),
            hint: format!("{} cached tokens", format::count(u64_of(&totals, "cached_tokens"))),
        },
        Stat {
            key: "errors",
            label: "Error rate",
            value: format::percent(error_rate.map(|r| r * 100.0)),
            hint: "4xx and 5xx, refusals included".into(),
        },
        Stat {
            key: "latency",
            label: "Latency p50",
            value: format::millis(ms("p50")),
            hint: format!("p95 {} · p99 {}", format::millis(ms("p95")), format::millis(ms("p99"))),
        },
    ];
    let mut charts: Vec<ChartView> = d.series.iter().map(|(title, ts)| chart_of(title, ts)).collect();
    if let (Some(a), Some(first)) = (d.anomalies, charts.first_mut()) {
        first.notes = anomaly_notes(a);
    }
    let project_q = if d.project.is_empty() { String::new() } else { format!("&project={}", query_escape(d.project)) };
    let ranges =
        d.ranges.iter().map(|(label, v)| (*label, format!("/dashboard?range={v}{project_q}"), *v == d.range)).collect();
    let quotas_url = format!("/dashboard/fragments/quotas?x=1{project_q}");
    let quotas_html = d.quotas.render()?;
    Overview {
        layout,
        ranges,
        range: d.range,
        project: d.project,
        projects: d.projects,
        empty_curl: (requests == 0).then(|| curl_example(d.base_url, None)),
        stats,
        charts,
        tops: vec![
            top_table(d.summary, "model", "Top models", "Model"),
            top_table(d.summary, "key", "Top keys", "Key"),
            top_table(d.summary, "endpoint", "Top endpoints", "Endpoint"),
            top_table(d.summary, "provider", "Providers", "Provider"),
        ],
        quotas_url,
        quotas_html,
        forecasts: d.forecast.map(forecast_rows).unwrap_or_default(),
    }
    .render()
}

/// Percent-encodes a query value or path segment (everything but unreserved characters).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `?a=1&b=2` from the pairs whose value is not empty.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={}", query_escape(v))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

// ----- keys -----

pub struct KeyRow {
    /// The worst quota now (`ok`, `warning`, `critical`, `exceeded`; empty: unknown)
    /// and which limit it is.
    pub quota_state: String,
    pub quota_note: String,
    pub id: String,
    pub name: String,
    pub project: String,
    pub plan: String,
    pub status: String,
    pub created: Time,
    pub expires: Option<Time>,
    pub revoked: Option<Time>,
}

pub fn key_row(k: &Value) -> KeyRow {
    let name = str_of(k, "name");
    KeyRow {
        quota_state: String::new(),
        quota_note: String::new(),
        id: str_of(k, "id").to_owned(),
        name: if name.is_empty() { "(unnamed)".to_owned() } else { name.to_owned() },
        project: str_of(k, "project").to_owned(),
        plan: str_of(k, "plan").to_owned(),
        status: str_of(k, "status").to_owned(),
        created: time_of(k, "created_at").unwrap_or_default(),
        expires: time_of(k, "expires_at"),
        revoked: time_of(k, "revoked_at"),
    }
}

#[derive(Template)]
#[template(path = "keys.html")]
struct Keys<'a> {
    layout: Layout,
    q: &'a str,
    project: &'a str,
    projects: Vec<String>,
    plans: Vec<String>,
    keys: Vec<KeyRow>,
    next: Option<String>,
    has_prev: bool,
    first: String,
    errors: FieldErrors,
    form_project: &'a str,
    form_name: &'a str,
    form_plan: &'a str,
}

pub struct KeysData<'a> {
    /// `GET /api/v1/usage/status?project=` answers of the listed keys' projects.
    pub statuses: &'a [Value],
    pub q: &'a str,
    pub project: &'a str,
    pub projects: Vec<String>,
    pub plans: Vec<String>,
    pub keys: &'a [Value],
    /// The `after` of the next page, if there is one.
    pub next_after: Option<&'a str>,
    pub has_prev: bool,
    pub errors: FieldErrors,
    pub form_project: &'a str,
    pub form_name: &'a str,
    pub form_plan: &'a str,
}

pub fn keys(layout: Layout, d: KeysData<'_>) -> Rendered {
    let first = format!("/dashboard/keys{}", query_string(&[("q", d.q), ("project", d.project)]));
    let next = d.next_after.map(|after| {
        format!("/dashboard/keys{}", query_string(&[("q", d.q), ("project", d.project), ("after", after)]))
    });
    Keys {
        layout,
        q: d.q,
        project: d.project,
        projects: d.projects,
        plans: d.plans,
        keys: d
            .keys
            .iter()
            .map(|k| {
                let mut row = key_row(k);
                let status = d
                    .statuses
                    .iter()
                    .flat_map(|s| s["keys"].as_array().into_iter().flatten())
                    .find(|s| s["key_id"].as_str() == Some(row.id.as_str()));
                if let Some(status) = status {
                    row.quota_state = str_of(status, "state").to_owned();
                    let worst = status["limits"].as_array().and_then(|ls| {
                        ls.iter().max_by(|a, b| {
                            let p = |v: &Value| v["percent"].as_f64().unwrap_or(0.0);
                            p(a).total_cmp(&p(b))
                        })
                    });
                    if let Some(w) = worst {
                        row.quota_note = format!("{} of {}", format::percent(w["percent"].as_f64()), str_of(w, "name"));
                    }
                }
                row
            })
            .collect(),
        next,
        has_prev: d.has_prev,
        first,
        errors: d.errors,
        form_project: d.form_project,
        form_name: d.form_name,
        form_plan: d.form_plan,
    }
    .render()
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage<'a> {
    layout: Layout,
    heading: &'a str,
    id: &'a str,
    secret: &'a str,
    previous_until: Option<Time>,
    curl: String,
}

/// The page that shows a new secret, once: the answer of create or regenerate.
pub fn secret(layout: Layout, heading: &str, answer: &Value, base_url: &str) -> Rendered {
    let secret = str_of(answer, "key");
    SecretPage {
        layout,
        heading,
        id: str_of(answer, "id"),
        secret,
        previous_until: time_of(answer, "previous_key_valid_until"),
        curl: curl_example(base_url, Some(secret)),
    }
    .render()
}

pub struct UsageRow {
    pub id: String,
    pub time: Time,
    pub project: String,
    pub key: String,
    pub endpoint: String,
    pub model: String,
    pub status: String,
    pub requests: String,
    pub tokens: String,
    pub cost: String,
    pub latency: String,
}

pub fn usage_row(r: &Value) -> UsageRow {
    UsageRow {
        id: str_of(r, "id").to_owned(),
        time: time_of(r, "timestamp").unwrap_or_default(),
        project: str_of(r, "project").to_owned(),
        key: str_of(r, "key_id").to_owned(),
        endpoint: str_of(r, "endpoint").to_owned(),
        model: str_of(r, "model").to_owned(),
        status: u64_of(r, "status").to_string(),
        requests: format::count(u64_of(r, "requests")),
        tokens: format::tokens(u64_of(r, "total_tokens")),
        cost: format::dollars(u64_of(r, "cost_micros")),
        latency: format::millis(r.get("latency_ms").and_then(Value::as_f64)),
    }
}

pub struct KeyForm {
    pub name: String,
    pub metadata: String,
    pub plan: String,
    pub limits: String,
}

impl KeyForm {
    /// The form as the key is now.
    pub fn of(key: &Value) -> Self {
        let pretty = |v: Option<&Value>, empty: &str| {
            v.filter(|v| !v.is_null())
                .and_then(|v| serde_json::to_string_pretty(v).ok())
                .unwrap_or_else(|| empty.to_owned())
        };
        Self {
            name: str_of(key, "name").to_owned(),
            metadata: pretty(key.get("metadata"), "{}"),
            plan: str_of(key, "plan").to_owned(),
            limits: pretty(key.get("limits"), "[]"),
        }
    }
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    layout: Layout,
    key: KeyRow,
    notice: Option<String>,
    usage_line: String,
    quotas_url: String,
    quotas_html: String,
    forecasts: Vec<ForecastRow>,
    charts: Vec<ChartView>,
    rows: Vec<UsageRow>,
    plans: Vec<String>,
    form: KeyForm,
    errors: FieldErrors,
}

pub struct KeyData<'a> {
    pub key: &'a Value,
    pub notice: Option<String>,
    pub summary: &'a Value,
    pub status: Option<&'a Value>,
    pub forecast: Option<&'a Value>,
    pub series: Option<&'a Value>,
    pub rows: &'a [Value],
    pub plans: Vec<String>,
    pub form: KeyForm,
    pub errors: FieldErrors,
}

pub fn key_page(layout: Layout, d: KeyData<'_>) -> Rendered {
    let key = key_row(d.key);
    let totals = d.summary.get("totals").cloned().unwrap_or(Value::Null);
    let usage_line = format!(
        "{} requests · {} · {}",
        format::count(u64_of(&totals, "requests")),
        format::tokens(u64_of(&totals, "total_tokens")),
        format::dollars(u64_of(&totals, "cost_micros"))
    );
    let quotas = Quotas { groups: d.status.map(|s| vec![quota_group(s, false)]).unwrap_or_default() };
    KeyPage {
        quotas_url: format!("/dashboard/fragments/quotas?key={}", query_escape(&key.id)),
        quotas_html: quotas.render()?,
        layout,
        key,
        notice: d.notice,
        usage_line,
        forecasts: d.forecast.map(forecast_rows).unwrap_or_default(),
        charts: d.series.map(|s| vec![chart_of("Requests, last 24 hours", s)]).unwrap_or_default(),
        rows: d.rows.iter().map(usage_row).collect(),
        plans: d.plans,
        form: d.form,
        errors: d.errors,
    }
    .render()
}

// ----- plans -----

pub struct LimitRow {
    pub name: String,
    pub metric: String,
    pub window: String,
    pub subject: String,
    pub scope: String,
    pub limit: String,
}

pub struct PlanView {
    pub name: String,
    pub description: String,
    pub time_zone: Option<String>,
    pub zone_input: String,
    pub limits: Vec<LimitRow>,
    pub limits_json: String,
    pub errors: FieldErrors,
    pub open: bool,
}

/// A plan of `GET /api/v1/plans`; `edited` keeps what the operator typed, with the
/// API's errors, when a save was refused.
pub fn plan_view(p: &Value, edited: Option<(&PlanForm, FieldErrors)>) -> PlanView {
    let limits: Vec<LimitRow> = p
        .get("limits")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let metric = str_of(l, "metric");
                    let scope: Vec<String> = ["provider", "model", "endpoint"]
                        .iter()
                        .filter_map(|f| l.get(*f).and_then(Value::as_str).map(|v| format!("{f} {v}")))
                        .collect();
                    let subject = str_of(l, "subject");
                    LimitRow {
                        name: str_of(l, "name").to_owned(),
                        metric: metric.to_owned(),
                        window: str_of(l, "window").to_owned(),
                        subject: if subject.is_empty() { "key".to_owned() } else { subject.to_owned() },
                        scope: if scope.is_empty() { "all traffic".to_owned() } else { scope.join(", ") },
                        limit: format::metric_value(metric, u64_of(l, "limit") as f64),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let raw_limits: Vec<Value> = p
        .get("limits")
        .and_then(Value::as_array)
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let mut l = l.clone();
                    if let Some(o) = l.as_object_mut() {
                        o.remove("name");
                    }
                    l
                })
                .collect()
        })
        .unwrap_or_default();
    let time_zone = p.get("time_zone").and_then(Value::as_str).map(str::to_owned);
    let mut view = PlanView {
        name: str_of(p, "name").to_owned(),
        description: str_of(p, "description").to_owned(),
        zone_input: time_zone.clone().unwrap_or_default(),
        time_zone,
        limits,
        limits_json: serde_json::to_string_pretty(&raw_limits).unwrap_or_else(|_| "[]".into()),
        errors: FieldErrors::default(),
        open: false,
    };
    if let Some((form, errors)) = edited {
        view.description = form.description.clone();
        view.zone_input = form.time_zone.clone();
        view.limits_json = form.limits.clone();
        view.errors = errors;
        view.open = true;
    }
    view
}

/// A plan form as submitted.
#[derive(Clone, Debug, Default)]
pub struct PlanForm {
    pub name: String,
    pub description: String,
    pub time_zone: String,
    pub limits: String,
}

#[derive(Template)]
#[template(path = "plans.html")]
struct Plans<'a> {
    layout: Layout,
    notice: Option<&'a str>,
    allowed: String,
    plans: Vec<PlanView>,
    new_errors: FieldErrors,
    new_name: &'a str,
    new_description: &'a str,
    new_zone: &'a str,
    new_limits: &'a str,
}

pub fn plans(
    layout: Layout,
    plans: Vec<PlanView>,
    allowed: &[String],
    notice: Option<&str>,
    new_plan: Option<(&PlanForm, FieldErrors)>,
) -> Rendered {
    let (form, new_errors) = match new_plan {
        Some((f, e)) => (f.clone(), e),
        None => (
            PlanForm {
                limits: "[{\"metric\": \"requests\", \"window\": \"minute\", \"limit\": 60}]".into(),
                ..PlanForm::default()
            },
            FieldErrors::default(),
        ),
    };
    Plans {
        layout,
        notice,
        allowed: allowed.join(", "),
        plans,
        new_errors,
        new_name: &form.name,
        new_description: &form.description,
        new_zone: &form.time_zone,
        new_limits: &form.limits,
    }
    .render()
}

// ----- usage explorer -----

pub struct Filter {
    pub name: &'static str,
    pub label: &'static str,
    pub value: String,
    pub placeholder: &'static str,
    /// `(value, label)`; empty: a text field.
    pub options: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "usage.html")]
struct Usage {
    layout: Layout,
    filters: Vec<Filter>,
    errors: FieldErrors,
    csv_url: String,
    ndjson_url: String,
    charts: Vec<ChartView>,
    rows: Vec<UsageRow>,
    empty_curl: Option<String>,
    next: Option<String>,
    has_prev: bool,
    first: String,
}

pub struct UsageData<'a> {
    pub filters: Vec<Filter>,
    pub errors: FieldErrors,
    /// The query of the current filters, without the cursor (`?a=1&…` or empty).
    pub query: String,
    /// The query of the export: project, key, from and to.
    pub export_query: Vec<(&'a str, String)>,
    pub chart: Option<(String, &'a Value)>,
    pub rows: &'a [Value],
    pub next_cursor: Option<String>,
    pub has_prev: bool,
    pub nothing_at_all: bool,
    pub base_url: &'a str,
}

pub fn usage(layout: Layout, d: UsageData<'_>) -> Rendered {
    let export = |format: &str| {
        let mut pairs: Vec<(&str, &str)> = vec![("format", format)];
        pairs.extend(d.export_query.iter().map(|(k, v)| (*k, v.as_str())));
        format!("/dashboard/usage/export{}", query_string(&pairs))
    };
    let sep = if d.query.is_empty() { "?" } else { "&" };
    Usage {
        layout,
        filters: d.filters,
        errors: d.errors,
        csv_url: export("csv"),
        ndjson_url: export("ndjson"),
        charts: d.chart.map(|(title, ts)| vec![chart_of(&title, ts)]).unwrap_or_default(),
        rows: d.rows.iter().map(usage_row).collect(),
        empty_curl: d.nothing_at_all.then(|| curl_example(d.base_url, None)),
        next: d.next_cursor.map(|c| format!("/dashboard/usage{}{sep}cursor={}", d.query, query_escape(&c))),
        has_prev: d.has_prev,
        first: format!("/dashboard/usage{}", d.query),
    }
    .render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn layout() -> Layout {
        Layout::new("t", "overview", Some("acme"), "csrf-token-value")
    }

    #[test]
    fn the_overview_renders_totals_charts_tops_and_quotas() {
        let summary = json!({"totals": {"requests": 3, "total_tokens": 30, "input_tokens": 20, "output_tokens": 10,
            "cost_micros": 1_500_000, "potential_cost_micros": 2_000_000, "saved_micros": 500_000, "error_rate": 0.0,
            "latency_ms": {"p50": 12, "p95": 20, "p99": 30}},
            "top": {"model": [{"value": "gpt-4o-mini", "requests": 3, "total_tokens": 30, "cost_micros": 1_500_000}],
                    "key": [{"value": "AbC<script>", "requests": 3}]}});
        let ts = json!({"metric": "requests", "series": [{"name": "total", "points": [{"t": "2026-12-02T10:00:00Z", "value": 1}, {"t": "2026-12-02T11:00:00Z", "value": 2}]}]});
        let status = json!({"keys": [{"key_id": "k1", "plan": "free", "state": "warning", "limits": [
            {"name": "requests_per_day", "metric": "requests", "used": 85, "limit": 100, "percent": 85.0, "reset": "2026-12-03T00:00:00Z"}]}]});
        let html = overview(
            layout(),
            OverviewData {
                range: "24h",
                ranges: &[("24 hours", "24h"), ("7 days", "7d")],
                project: "",
                projects: vec![],
                summary: &summary,
                series: vec![("Requests", &ts)],
                anomalies: None,
                quotas: quotas_of_projects(&[status], 20),
                forecast: None,
                base_url: "http://127.0.0.1:8080",
            },
        )
        .expect("render");
        assert!(html.contains("$1.50"), "cost with cents");
        assert!(html.contains("data-total=\"3\""));
        assert!(html.contains("AbC&#60;script&#62;") || html.contains("AbC&lt;script&gt;"), "escaped: {html}");
        assert!(!html.contains("AbC<script>"));
        assert!(html.contains("data-class=\"warn\""));
        assert!(html.contains("csrf-token-value"));
        assert!(!html.contains("No usage yet"));
    }

    #[test]
    fn an_empty_overview_shows_a_curl_command() {
        let html = overview(
            layout(),
            OverviewData {
                range: "24h",
                ranges: &[],
                project: "",
                projects: vec![],
                summary: &json!({}),
                series: vec![],
                anomalies: None,
                quotas: Quotas { groups: vec![] },
                forecast: None,
                base_url: "http://h",
            },
        )
        .expect("render");
        assert!(html.contains("No usage yet"));
        assert!(html.contains("curl http://h/v1/chat/completions"));
    }

    #[test]
    fn errors_are_shown_beside_their_field_or_atop_the_form() {
        let e = FieldErrors::one(Some("limits"), "limits: bad");
        assert_eq!(e.get("limits"), Some("limits: bad"));
        assert_eq!(e.general(), None);
        let e = FieldErrors::one(Some("unknown_thing"), "nope");
        assert_eq!(e.general().as_deref(), Some("nope"));
        let plan = json!({"name": "free", "limits": [{"metric": "requests", "window": "minute", "limit": 10, "name": "requests_per_minute"}]});
        let form = PlanForm { name: "free".into(), limits: "[oops".into(), ..PlanForm::default() };
        let view = plan_view(&plan, Some((&form, FieldErrors::one(Some("limits"), "not JSON"))));
        let html = plans(Layout::new("p", "plans", None, "c"), vec![view], &[], None, None).expect("render");
        assert!(html.contains("id=\"l-free-error\">not JSON"));
        assert!(html.contains("[oops"));
    }

    #[test]
    fn queries_are_escaped() {
        assert_eq!(query_string(&[("q", "a b&c"), ("empty", "")]), "?q=a%20b%26c");
        assert_eq!(query_string(&[]), "");
    }
}
