//! The pages, as askama templates over view models built from the admin API's JSON
//! answers (the same bodies an API client reads). Every value is escaped by askama;
//! only the SVG this crate draws is inserted as markup.

use askama::Template;
use serde_json::Value;

use crate::chart::{self, Series};
use crate::format::{self, Time};

pub type Rendered = Result<String, askama::Error>;

mod alerts;
mod keys;
mod plans;
mod usage;

pub use alerts::*;
pub use keys::*;
pub use plans::*;
pub use usage::*;

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
