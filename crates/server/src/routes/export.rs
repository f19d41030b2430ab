//! Exports that stream in constant memory: `GET /api/v1/usage/export` (raw ledger
//! rows, newest first, read a page of [`PAGE`] at a time through the ledger's keyset
//! pagination) and `GET /api/v1/analytics/export` (hourly rollup rows, oldest hour
//! first, one hour at a time), as CSV or NDJSON. Each page becomes one chunk of the
//! response body and is dropped once written, so memory stays flat whatever the
//! range. A store failure mid-stream aborts the response (the body ends without its
//! final chunk), so a client never mistakes a truncated export for a complete one.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tollgate_analytics::rollup::hour_of;
use tollgate_analytics::store::AnalyticsStore;
use tollgate_analytics::{RollupKey, RollupValues};
use tollgate_core::calendar::{MS_PER_HOUR, parse_timestamp, to_rfc3339};
use tollgate_core::{UsageQuery, UsageRecord};
use tollgate_gateway::now_ms;
use tollgate_store::Ledger;

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::Query;
use crate::routes::ledger::usage_view;

/// Ledger rows per page (and per body chunk).
pub const PAGE: usize = 1_000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportParams {
    /// `ndjson` (the default) or `csv`.
    #[serde(default)]
    #[param(pattern = "^(csv|ndjson)$")]
    format: Option<String>,
    /// Only this project (a project token: its own).
    #[serde(default)]
    project: Option<String>,
    /// Only this key.
    #[serde(default)]
    key: Option<String>,
    /// From this time on: RFC 3339 or Unix seconds.
    #[serde(default)]
    from: Option<String>,
    /// Before this time: RFC 3339 or Unix seconds.
    #[serde(default)]
    to: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Ndjson,
}

fn format_of(p: &ExportParams) -> Result<Format, ApiError> {
    match p.format.as_deref() {
        None | Some("ndjson") => Ok(Format::Ndjson),
        Some("csv") => Ok(Format::Csv),
        Some(other) => Err(ApiError::invalid_field("format", format!("must be csv or ndjson, not '{other}'"))),
    }
}

fn time(field: &'static str, v: &Option<String>) -> Result<Option<i64>, ApiError> {
    v.as_deref()
        .map(|s| parse_timestamp(s).ok_or_else(|| ApiError::invalid_field(field, "must be RFC 3339 or Unix seconds")))
        .transpose()
}

/// A CSV field, quoted when it must be (RFC 4180).
fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

const USAGE_CSV_HEADER: &str = "id,timestamp,project,key_id,endpoint,provider,model,status,counted,requests,\
prompt_tokens,completion_tokens,cached_tokens,cost_micros,uncached_cost_micros,usage_source,price_version,\
price_estimated,client_ip,anonymous_id,latency_ms\n";

fn usage_csv(out: &mut String, r: &UsageRecord) {
    let texts = [
        r.id.as_str(),
        &to_rfc3339(r.ts_ms),
        &r.project_id,
        &r.key_id,
        &r.endpoint,
        &r.provider,
        r.model.as_deref().unwrap_or(""),
    ];
    for t in texts {
        csv_field(out, t);
        out.push(',');
    }
    let _ = write!(
        out,
        "{},{},{},{},{},{},{},{},{},",
        r.status,
        r.counted,
        r.requests,
        r.prompt_tokens,
        r.completion_tokens,
        r.cached_tokens,
        r.cost_micros,
        r.uncached_cost_micros,
        r.usage_source.as_str()
    );
    csv_field(out, r.price_version.as_deref().unwrap_or(""));
    let _ = write!(out, ",{},", r.price_estimated);
    csv_field(out, r.client_ip.as_deref().unwrap_or(""));
    out.push(',');
    csv_field(out, r.anonymous_id.as_deref().unwrap_or(""));
    let _ = writeln!(out, ",{}", r.latency_ms);
}

fn attachment(format: Format, name: &str, body: Body) -> Response {
    let (content_type, ext) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "csv"),
        Format::Ndjson => ("application/x-ndjson", "ndjson"),
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.{ext}\"")),
        ],
        body,
    )
        .into_response()
}

fn stream_error(e: tollgate_store::StoreError) -> std::io::Error {
    tracing::error!(error = %e, "export aborted: the store failed mid-stream");
    std::io::Error::other(e.to_string())
}

struct UsagePages {
    ledger: Arc<dyn Ledger>,
    query: UsageQuery,
    format: Format,
    header: bool,
    done: bool,
}

/// `GET /api/v1/usage/export?format=csv|ndjson&project=&key=&from=&to=`: raw ledger
/// rows, newest first.
#[utoipa::path(get, path = "/api/v1/usage/export", tag = "usage", params(ExportParams),
    responses((status = 200, description = "Every ledger record of the range, newest first, streamed: one JSON \
        object a line (the `UsageRecordView` schema), or CSV with a header row",
        content((String = "application/x-ndjson"), (String = "text/csv")))))]
pub async fn usage_export(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let format = format_of(&p)?;
    let filter = crate::routes::analytics::scoped_filter(
        &state,
        &admin,
        &crate::routes::analytics::Params::for_export(p.project.clone(), p.key.clone()),
    )
    .await?;
    let (from_ms, to_ms) = (time("from", &p.from)?, time("to", &p.to)?);
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && f >= t
    {
        return Err(ApiError::invalid_field("from", "must be before `to`"));
    }
    let pages = UsagePages {
        ledger: state.ledger.clone(),
        query: UsageQuery {
            project_id: filter.project_id,
            key_id: filter.key_id,
            from_ms,
            to_ms,
            cursor: None,
            limit: PAGE,
        },
        format,
        header: format == Format::Csv,
        done: false,
    };
    let stream = futures_util::stream::unfold(pages, |mut pages| async move {
        if pages.done {
            return None;
        }
        let page = match pages.ledger.query(pages.query.clone()).await {
            Ok(page) => page,
            Err(e) => {
                pages.done = true;
                return Some((Err(stream_error(e)), pages));
            }
        };
        pages.done = page.len() < PAGE;
        pages.query.cursor = page.last().map(|r| (r.ts_ms, r.id.clone()));
        let mut out = String::with_capacity(page.len() * 256 + USAGE_CSV_HEADER.len());
        if std::mem::take(&mut pages.header) {
            out.push_str(USAGE_CSV_HEADER);
        }
        for r in &page {
            match pages.format {
                Format::Csv => usage_csv(&mut out, r),
                Format::Ndjson => {
                    // Serializing plain strings and numbers cannot fail.
                    out.push_str(&serde_json::to_string(&usage_view(r)).unwrap_or_default());
                    out.push('\n');
                }
            }
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(out)), pages))
    });
    Ok(attachment(format, "usage", Body::from_stream(stream)))
}

fn rollup_csv_header() -> String {
    let mut h = String::from(
        "hour,project,key_id,model,provider,endpoint,status_class,cache,counted,requests,input_tokens,output_tokens,\
         cached_tokens,cost_micros,potential_cost_micros,saved_micros,latency_count,latency_sum_ms,latency_max_ms",
    );
    for i in 0..tollgate_analytics::latency::LATENCY_BUCKETS {
        let _ = write!(h, ",lat_{i}");
    }
    h.push('\n');
    h
}

fn rollup_line(out: &mut String, format: Format, k: &RollupKey, v: &RollupValues) {
    match format {
        Format::Csv => {
            out.push_str(&to_rfc3339(k.hour_ms));
            for t in [&k.project_id, &k.key_id, &k.model, &k.provider, &k.endpoint] {
                out.push(',');
                csv_field(out, t);
            }
            let _ = write!(
                out,
                ",{},{},{},{},{},{},{},{},{},{},{},{},{}",
                k.status_class,
                k.cache.as_str(),
                k.counted,
                v.requests,
                v.input_tokens,
                v.output_tokens,
                v.cached_tokens,
                v.cost_micros,
                v.potential_cost_micros,
                v.saved_micros(),
                v.latency_count,
                v.latency_sum_ms,
                v.latency_max_ms
            );
            for b in &v.latency_buckets {
                let _ = write!(out, ",{b}");
            }
            out.push('\n');
        }
        Format::Ndjson => {
            let line = json!({
                "hour": to_rfc3339(k.hour_ms), "project": k.project_id, "key_id": k.key_id, "model": k.model,
                "provider": k.provider, "endpoint": k.endpoint, "status_class": k.status_class,
                "cache": k.cache, "counted": k.counted, "requests": v.requests,
                "input_tokens": v.input_tokens, "output_tokens": v.output_tokens,
                "cached_tokens": v.cached_tokens, "cost_micros": v.cost_micros,
                "potential_cost_micros": v.potential_cost_micros, "saved_micros": v.saved_micros(),
                "latency_count": v.latency_count, "latency_sum_ms": v.latency_sum_ms,
                "latency_max_ms": v.latency_max_ms, "latency_buckets": v.latency_buckets,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
    }
}

struct RollupHours {
    analytics: Arc<dyn AnalyticsStore>,
    project_id: Option<String>,
    key_id: Option<String>,
    hour: i64,
    to_ms: i64,
    format: Format,
    header: bool,
}

/// `GET /api/v1/analytics/export?format=csv|ndjson&project=&key=&from=&to=`: the
/// hourly rollup rows of the range (default: the last 30 days), oldest hour first.
#[utoipa::path(get, path = "/api/v1/analytics/export", tag = "analytics", params(ExportParams),
    responses((status = 200, description = "The hourly rollup rows of the range, oldest hour first, streamed as \
        NDJSON or CSV with a header row",
        content((String = "application/x-ndjson"), (String = "text/csv")))))]
pub async fn rollup_export(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ExportParams>,
) -> Result<Response, ApiError> {
    let format = format_of(&p)?;
    let filter = crate::routes::analytics::scoped_filter(
        &state,
        &admin,
        &crate::routes::analytics::Params::for_export(p.project.clone(), p.key.clone()),
    )
    .await?;
    let range = tollgate_analytics::query::parse_range(
        p.from.as_deref(),
        p.to.as_deref(),
        now_ms(),
        30 * 24 * MS_PER_HOUR,
        state.config.analytics.max_range_ms,
    )?;
    let hours = RollupHours {
        analytics: state.analytics.clone(),
        project_id: filter.project_id,
        key_id: filter.key_id,
        hour: hour_of(range.from_ms),
        to_ms: range.to_ms,
        format,
        header: format == Format::Csv,
    };
    let stream = futures_util::stream::unfold(hours, |mut h| async move {
        let mut out = String::new();
        if std::mem::take(&mut h.header) {
            out.push_str(&rollup_csv_header());
        }
        // Skip empty hours without yielding empty chunks (at most a day per chunk).
        let mut scanned = 0;
        while h.hour < h.to_ms && (out.is_empty() || scanned == 0) && scanned < 24 {
            let rows = match h.analytics.rollup_rows(h.hour, h.hour + MS_PER_HOUR, h.project_id.clone()).await {
                Ok(rows) => rows,
                Err(e) => {
                    h.hour = h.to_ms;
                    return Some((Err(stream_error(e)), h));
                }
            };
            for (k, v) in rows.iter().filter(|(k, _)| h.key_id.as_ref().is_none_or(|id| *id == k.key_id)) {
                rollup_line(&mut out, h.format, k, v);
            }
            h.hour += MS_PER_HOUR;
            scanned += 1;
        }
        if out.is_empty() && h.hour >= h.to_ms {
            return None;
        }
        Some((Ok::<_, std::io::Error>(Bytes::from(out)), h))
    });
    Ok(attachment(format, "usage-hourly", Body::from_stream(stream)))
}
