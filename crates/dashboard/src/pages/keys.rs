//! The keys list, the page that shows a new secret once, and a key's own page.
use super::*;

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
