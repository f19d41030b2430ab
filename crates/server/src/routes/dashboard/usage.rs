//! The usage explorer (filters, rows, the group-by chart) and its export, streamed
//! from the API's and narrowed to the filters the API does not take.
use super::*;

pub(super) const STATUS_OPTIONS: &[(&str, &str)] =
    &[("", "Any"), ("2xx", "2xx"), ("4xx", "4xx"), ("5xx", "5xx"), ("429", "429")];
pub(super) const GROUP_OPTIONS: &[(&str, &str)] = &[
    ("model", "Model"),
    ("key", "Key"),
    ("endpoint", "Endpoint"),
    ("provider", "Provider"),
    ("status_class", "Status class"),
    ("project", "Project"),
];
pub(super) const METRIC_OPTIONS: &[(&str, &str)] = &[
    ("requests", "Requests"),
    ("total_tokens", "Tokens"),
    ("cost_micros", "Cost"),
    ("saved_micros", "Saved"),
    ("error_rate", "Error rate"),
    ("latency_p95", "Latency p95"),
];

pub(super) async fn usage_page(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let project = scoped_project(&session, q.get("project"));
    let (range, range_from_secs, mut granularity) = range_from(q.get("range"));
    let range_from_s = range_from_secs.to_string();
    let from = if q.get("from").is_empty() { range_from_s.as_str() } else { q.get("from") };
    let to = q.get("to");
    if !q.get("from").is_empty() {
        granularity = "day";
    }
    let group_by = Some(q.get("group_by")).filter(|g| GROUP_OPTIONS.iter().any(|(v, _)| v == g)).unwrap_or("model");
    let metric = Some(q.get("metric")).filter(|m| METRIC_OPTIONS.iter().any(|(v, _)| v == m)).unwrap_or("requests");
    let (key, model, provider, endpoint, status) =
        (q.get("key"), q.get("model"), q.get("provider"), q.get("endpoint"), q.get("status"));
    let mut errors = FieldErrors::default();
    if !status.is_empty() && !STATUS_OPTIONS.iter().any(|(v, _)| *v == status) && status.parse::<u16>().is_err() {
        errors = FieldErrors::one(Some("status"), "must be 2xx, 4xx, 5xx or a status code");
    }
    // Rows: the ledger newest first, narrowed here by model, provider, endpoint and status.
    let mut rows = Vec::new();
    let mut cursor = q.get("cursor").to_owned();
    let mut next_cursor = None;
    if errors.is_empty() {
        for _ in 0..USAGE_SCAN_PAGES {
            let uq = query_string(&[
                ("project", project.as_str()),
                ("key", key),
                ("from", from),
                ("to", to),
                ("limit", "200"),
                ("cursor", cursor.as_str()),
            ]);
            let page = match d.call(&session, Method::GET, &format!("/api/v1/usage{uq}"), None).await {
                Ok(page) => page,
                Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
                    return Err(d.fail_page(&session, fail));
                }
                Err(fail) => {
                    errors = fail.errors();
                    break;
                }
            };
            let data = page["data"].as_array().cloned().unwrap_or_default();
            let mut last = None;
            for r in data {
                if rows.len() == USAGE_PAGE {
                    break;
                }
                last = Some(format!("{}.{}", ms_of(&r), r["id"].as_str().unwrap_or("")));
                let keep = (model.is_empty() || r["model"].as_str() == Some(model))
                    && (provider.is_empty() || r["provider"].as_str() == Some(provider))
                    && (endpoint.is_empty() || r["endpoint"].as_str() == Some(endpoint))
                    && tollgate_dashboard::export::status_matches(status, r["status"].as_u64().unwrap_or(0));
                if keep {
                    rows.push(r);
                }
            }
            let more = page["next_cursor"].as_str().map(str::to_owned);
            if rows.len() == USAGE_PAGE {
                next_cursor = last;
                break;
            }
            match more {
                Some(c) => {
                    cursor = c.clone();
                    next_cursor = Some(c);
                }
                None => {
                    next_cursor = None;
                    break;
                }
            }
        }
    }
    let chart = if errors.is_empty() {
        let tq = query_string(&[
            ("metric", metric),
            ("group_by", group_by),
            ("granularity", granularity),
            ("project", project.as_str()),
            ("key", key),
            ("model", model),
            ("provider", provider),
            ("endpoint", endpoint),
            ("from", from),
            ("to", to),
        ]);
        match d.call(&session, Method::GET, &format!("/api/v1/analytics/timeseries{tq}"), None).await {
            Ok(ts) => Some(ts),
            Err(fail) if fail.status == StatusCode::BAD_REQUEST => {
                errors = fail.errors();
                None
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let option_list = |opts: &[(&str, &str)]| opts.iter().map(|(v, l)| ((*v).to_owned(), (*l).to_owned())).collect();
    let mut filters = Vec::new();
    if session.is_operator() {
        let mut options = vec![(String::new(), "All".to_owned())];
        options.extend(d.project_ids(&session).await.into_iter().map(|p| (p.clone(), p)));
        filters.push(pages::Filter {
            name: "project",
            label: "Project",
            value: project.clone(),
            placeholder: "",
            options,
        });
    }
    let text = |name, label, value: &str, placeholder| pages::Filter {
        name,
        label,
        value: value.to_owned(),
        placeholder,
        options: Vec::new(),
    };
    filters.push(text("key", "Key id", key, "any key"));
    filters.push(text("model", "Model", model, "gpt-4o-mini"));
    filters.push(text("provider", "Provider", provider, "openai"));
    filters.push(text("endpoint", "Endpoint", endpoint, "chat.completions"));
    filters.push(pages::Filter {
        name: "status",
        label: "Status",
        value: status.to_owned(),
        placeholder: "",
        options: option_list(STATUS_OPTIONS),
    });
    filters.push(pages::Filter {
        name: "range",
        label: "Range",
        value: range.to_owned(),
        placeholder: "",
        options: RANGES.iter().map(|(l, v)| ((*v).to_owned(), (*l).to_owned())).collect(),
    });
    filters.push(text("from", "From (RFC 3339)", q.get("from"), "overrides the range"));
    filters.push(text("to", "To (RFC 3339)", to, "now"));
    filters.push(pages::Filter {
        name: "group_by",
        label: "Chart by",
        value: group_by.to_owned(),
        placeholder: "",
        options: option_list(GROUP_OPTIONS),
    });
    filters.push(pages::Filter {
        name: "metric",
        label: "Chart of",
        value: metric.to_owned(),
        placeholder: "",
        options: option_list(METRIC_OPTIONS),
    });
    let own_project = q.get("project");
    let query = query_string(&[
        ("project", own_project),
        ("key", key),
        ("model", model),
        ("provider", provider),
        ("endpoint", endpoint),
        ("status", status),
        ("range", q.get("range")),
        ("from", q.get("from")),
        ("to", to),
        ("group_by", q.get("group_by")),
        ("metric", q.get("metric")),
    ]);
    let export_query = vec![
        ("project", own_project.to_owned()),
        ("key", key.to_owned()),
        ("from", from.to_owned()),
        ("to", to.to_owned()),
        ("model", model.to_owned()),
        ("provider", provider.to_owned()),
        ("endpoint", endpoint.to_owned()),
        ("status", status.to_owned()),
    ];
    let nothing_at_all = rows.is_empty() && q.get("cursor").is_empty() && errors.is_empty() && {
        let any = d.read_optional(&session, &format!("/api/v1/usage{}", query_string(&[("limit", "1")]))).await;
        any.and_then(|a| a["data"].as_array().map(Vec::is_empty)).unwrap_or(false)
    };
    let title = format!(
        "{} by {}",
        METRIC_OPTIONS.iter().find(|(v, _)| *v == metric).map(|(_, l)| *l).unwrap_or("Requests"),
        GROUP_OPTIONS.iter().find(|(v, _)| *v == group_by).map(|(_, l)| l.to_lowercase()).unwrap_or_default()
    );
    let base = base_url(&headers);
    let layout = Layout::new("Usage", "usage", session.project.as_deref(), &session.csrf);
    let status_code = if errors.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    let data = pages::UsageData {
        filters,
        errors,
        query,
        export_query,
        chart: chart.as_ref().map(|c| (title, c)),
        rows: &rows,
        next_cursor,
        has_prev: !q.get("cursor").is_empty(),
        nothing_at_all,
        base_url: &base,
    };
    Ok(rendered(status_code, pages::usage(layout, data)))
}

/// The export body narrowed by `filter`, still streamed chunk by chunk; an error of
/// the API's stream (a store failure mid-export) still aborts the body.
pub(super) fn filtered(body: Body, filter: ExportFilter) -> Body {
    use futures_util::StreamExt;
    let stream =
        futures_util::stream::unfold((body.into_data_stream(), Some(filter)), |(mut inner, filter)| async move {
            let mut filter = filter?;
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        let kept = filter.push(&chunk);
                        if !kept.is_empty() {
                            return Some((Ok::<Bytes, axum::Error>(Bytes::from(kept)), (inner, Some(filter))));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (inner, None))),
                    None => {
                        let rest = filter.finish();
                        return (!rest.is_empty()).then(|| (Ok(Bytes::from(rest)), (inner, None)));
                    }
                }
            }
        });
    Body::from_stream(stream)
}

/// A usage row's time in Unix ms (from its RFC 3339 timestamp), for the cursor.
pub(super) fn ms_of(row: &Value) -> i64 {
    row["timestamp"].as_str().and_then(tollgate_core::calendar::parse_timestamp).unwrap_or(0)
}

/// `GET /dashboard/usage/export?format=&project=&key=&from=&to=&model=&provider=&endpoint=&status=`:
/// the API's export, streamed through under the session's scope, narrowed to the
/// filters the API does not take.
pub(super) async fn export(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let format = if q.get("format") == "csv" { "csv" } else { "ndjson" };
    let project = scoped_project(&session, q.get("project"));
    let uri = format!(
        "/api/v1/usage/export{}",
        query_string(&[
            ("format", format),
            ("project", project.as_str()),
            ("key", q.get("key")),
            ("from", q.get("from")),
            ("to", q.get("to")),
        ])
    );
    let response = d.send(&session, Method::GET, &uri, None).await.map_err(|f| d.fail_page(&session, f))?;
    if response.status().is_success() {
        let filter = RowFilter {
            model: q.get("model").to_owned(),
            provider: q.get("provider").to_owned(),
            endpoint: q.get("endpoint").to_owned(),
            status: q.get("status").to_owned(),
        };
        if filter.is_empty() {
            return Ok(response);
        }
        let kind = if format == "csv" { export::Format::Csv } else { export::Format::Ndjson };
        let (parts, body) = response.into_parts();
        return Ok(Response::from_parts(parts, filtered(body, ExportFilter::new(kind, filter))));
    }
    let status = response.status();
    let bytes = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let message = value.pointer("/error/message").and_then(Value::as_str).unwrap_or("the export failed").to_owned();
    Err(d.fail_page(&session, ApiFail { status, message, param: None }))
}
