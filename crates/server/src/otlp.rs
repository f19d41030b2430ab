//! Optional OTLP export of spans (`[otlp] enabled = true`; off by default, and then
//! nothing of this runs). One span per request, kind SERVER, named after the route
//! template (`POST /v1/chat/completions`, `GET /api/v1/keys/{id}`), from the request's
//! arrival to the end of its answer's body (a stream's last chunk), in the trace of
//! the W3C `traceparent` the client sent (its span is the parent) or in a new trace.
//!
//! Spans are handed to a background task over a bounded channel (a full channel drops
//! the span and counts it; the request never waits) and posted in batches to
//! `{endpoint}/v1/traces` with OTLP/HTTP's JSON encoding: no gRPC, no protobuf, no
//! OpenTelemetry SDK in the dependency tree.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::config::OtlpSettings;

/// Spans waiting for export at most; beyond, new spans are dropped.
const QUEUE: usize = 8_192;
/// Spans per export request at most.
const BATCH: usize = 512;

/// One finished request, as exported.
#[derive(Clone, Debug)]
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_span_id: Option<[u8; 8]>,
    name: String,
    method: &'static str,
    route: Option<String>,
    path: String,
    status: u16,
    request_id: Option<String>,
    start_ns: u64,
    end_ns: u64,
}

/// The sending side, shared by every request.
pub struct Exporter {
    tx: mpsc::Sender<SpanData>,
    dropped: AtomicU64,
}

impl Exporter {
    fn record(&self, span: SpanData) {
        if self.tx.try_send(span).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "otlp: export queue full, spans dropped");
            }
        }
    }
}

/// `router` with a span recorded for every request, exported to `settings`' collector
/// by a task on the current runtime (without one, spans are not exported).
pub fn layer<S: Clone + Send + Sync + 'static>(router: Router<S>, settings: &OtlpSettings) -> Router<S> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("otlp: no async runtime; spans are not exported");
        return router;
    };
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "otlp: no HTTP client; spans are not exported");
            return router;
        }
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    runtime.spawn(export_loop(rx, client, settings.clone()));
    tracing::info!(url = %settings.traces_url, "otlp: exporting spans");
    let exporter = Arc::new(Exporter { tx, dropped: AtomicU64::new(0) });
    router.layer(axum::middleware::from_fn(move |req: Request, next: Next| {
        let exporter = exporter.clone();
        async move { trace(exporter, req, next).await }
    }))
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn random<const N: usize>() -> Option<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).ok()?;
    (bytes != [0u8; N]).then_some(bytes)
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    (out != [0u8; N]).then_some(out)
}

/// The trace id and parent span id of a W3C `traceparent` header
/// (`00-<32 hex>-<16 hex>-<2 hex>`), or `None` when it is absent or invalid.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex(version) || version == "ff" || !lower_hex(flags) {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    Some((hex_bytes::<16>(trace)?, hex_bytes::<8>(parent)?))
}

async fn trace(exporter: Arc<Exporter>, req: Request, next: Next) -> Response {
    let start_ns = now_ns();
    let method = method_name(req.method());
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(parse_traceparent);
    let response = next.run(req).await;
    let (Some(trace_id), Some(span_id)) = (parent.map(|p| p.0).or_else(random::<16>), random::<8>()) else {
        return response;
    };
    let status = response.status().as_u16();
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let name = format!("{method} {}", route.as_deref().unwrap_or("unmatched"));
    let span = SpanData {
        trace_id,
        span_id,
        parent_span_id: parent.map(|p| p.1),
        name,
        method,
        route,
        path,
        status,
        request_id,
        start_ns,
        end_ns: start_ns,
    };
    let guard = SpanGuard { exporter, span: Some(span) };
    response.map(|body| Body::new(TracedBody { inner: body, _guard: guard }))
}

fn method_name(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Ends and records the span when the answer's body is done (or dropped: the client left).
struct SpanGuard {
    exporter: Arc<Exporter>,
    span: Option<SpanData>,
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end_ns = now_ns().max(span.start_ns);
            self.exporter.record(span);
        }
    }
}

struct TracedBody {
    inner: Body,
    _guard: SpanGuard,
}

impl HttpBody for TracedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(key: &str, value: Value) -> Value {
    json!({ "key": key, "value": value })
}

/// A batch in OTLP/HTTP's JSON encoding (`ExportTraceServiceRequest`): ids in hex,
/// 64-bit integers as strings, enums as numbers.
fn encode(service_name: &str, spans: &[SpanData]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut attributes = vec![
                attribute("http.request.method", json!({ "stringValue": s.method })),
                attribute("url.path", json!({ "stringValue": s.path })),
                attribute("http.response.status_code", json!({ "intValue": s.status.to_string() })),
            ];
            if let Some(route) = &s.route {
                attributes.push(attribute("http.route", json!({ "stringValue": route })));
            }
            if let Some(id) = &s.request_id {
                attributes.push(attribute("tollgate.request_id", json!({ "stringValue": id })));
            }
            let mut span = json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": attributes,
                // STATUS_CODE_ERROR for server errors, UNSET otherwise (OpenTelemetry's HTTP conventions).
                "status": { "code": if s.status >= 500 { 2 } else { 0 } },
            });
            if let Some(parent) = &s.parent_span_id {
                span["parentSpanId"] = Value::String(hex(parent));
            }
            span
        })
        .collect();
    json!({ "resourceSpans": [{
        "resource": { "attributes": [attribute("service.name", json!({ "stringValue": service_name }))] },
        "scopeSpans": [{
            "scope": { "name": "tollgate", "version": env!("CARGO_PKG_VERSION") },
            "spans": spans,
        }],
    }]})
}

async fn export_loop(mut rx: mpsc::Receiver<SpanData>, client: reqwest::Client, settings: OtlpSettings) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        let body = encode(&settings.service_name, &batch).to_string();
        let sent = client
            .post(&settings.traces_url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let problem = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match problem {
            Some(why) if !failing => {
                tracing::warn!(url = %settings.traces_url, error = %why, spans = batch.len(), "otlp: export failed");
                failing = true;
            }
            Some(_) => {}
            None if failing => {
                tracing::info!(url = %settings.traces_url, "otlp: export works again");
                failing = false;
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_strictly() {
        let (trace, parent) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
