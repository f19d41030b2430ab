//! The usage explorer: filters, rows, the group-by chart, export links.
use super::*;

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
