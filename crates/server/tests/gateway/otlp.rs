//! OTLP export of spans (`[otlp]`): a real OTLP/HTTP receiver on port 0 takes the
//! gateway's `POST /v1/traces` and the test reads the spans of a proxied request out
//! of it: in the client's trace when it sent a W3C `traceparent`, in a new one when not.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tollgate_server::config::Config;

use crate::helpers::{TestApp, raw_config, spawn_app_with, spawn_mock};

/// A collector: every POST to /v1/traces, with its content type, goes to the channel.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(Option<String>, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = tx.send((content_type, parsed));
                axum::Json(json!({}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}"), rx)
}

async fn app_exporting_to(endpoint: &str) -> (TestApp, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = spawn_mock(tollgate_mock_upstream::MockConfig {
        expected_api_key: Some("sk-provider-test".into()),
        ..Default::default()
    })
    .await;
    let mut raw = raw_config(tmp.path(), &mock);
    raw.otlp.enabled = true;
    raw.otlp.endpoint = endpoint.to_owned();
    raw.otlp.service_name = "tollgate-test".into();
    let app = spawn_app_with(Config::from_raw(raw).expect("config")).await;
    (app, tmp)
}

/// Spans received until one matches, with a deadline (the export is asynchronous).
async fn span_where(
    rx: &mut mpsc::UnboundedReceiver<(Option<String>, Value)>,
    matches: impl Fn(&Value) -> bool,
) -> (Value, Value) {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some((content_type, batch)) = rx.recv().await {
            assert_eq!(content_type.as_deref(), Some("application/json"));
            for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        if matches(span) {
                            return Some((resource["resource"].clone(), span.clone()));
                        }
                    }
                }
            }
        }
        None
    })
    .await;
    found.ok().flatten().expect("the span reached the receiver")
}

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|kv| kv["key"] == key))
        .map(|kv| &kv["value"])
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn a_proxied_request_is_exported_as_a_span_in_the_clients_trace() {
    let (endpoint, mut rx) = receiver().await;
    let (app, _tmp) = app_exporting_to(&endpoint).await;
    let key = app.project_key("acme", "free").await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{parent}-01");
    let r = app.chat_with(&key, &[("traceparent", &traceparent)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let (resource, span) = span_where(&mut rx, |s| s["traceId"] == trace_id).await;
    assert_eq!(span["parentSpanId"], parent);
    assert_eq!(span["name"], "POST /v1/chat/completions");
    assert_eq!(span["kind"], 2, "SPAN_KIND_SERVER");
    let span_id = span["spanId"].as_str().expect("span id");
    assert!(span_id.len() == 16 && span_id != parent, "{span_id}");
    assert_eq!(attribute(&span, "http.response.status_code")["intValue"], "200");
    assert_eq!(attribute(&span, "http.route")["stringValue"], "/v1/chat/completions");
    assert_eq!(attribute(&span, "http.request.method")["stringValue"], "POST");
    let request_id = r.header("x-request-id").expect("request id").to_owned();
    assert_eq!(attribute(&span, "tollgate.request_id")["stringValue"], request_id.as_str());
    let start: u64 = span["startTimeUnixNano"].as_str().and_then(|t| t.parse().ok()).expect("start");
    let end: u64 = span["endTimeUnixNano"].as_str().and_then(|t| t.parse().ok()).expect("end");
    assert!(start > 0 && end >= start, "{span}");
    let service = resource["attributes"].as_array().and_then(|a| a.iter().find(|kv| kv["key"] == "service.name"));
    assert_eq!(service.map(|kv| &kv["value"]["stringValue"]), Some(&json!("tollgate-test")));

    // Without a traceparent (or with a malformed one): a new trace, no parent.
    let r = app.chat_with(&key, &[("traceparent", "garbage")]).await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-request-id").expect("request id").to_owned();
    let (_, span) =
        span_where(&mut rx, |s| attribute(s, "tollgate.request_id")["stringValue"] == request_id.as_str()).await;
    let new_trace = span["traceId"].as_str().expect("trace id");
    assert!(new_trace.len() == 32 && new_trace != trace_id && new_trace.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(span.get("parentSpanId").is_none(), "{span}");
}

#[tokio::test]
async fn spans_are_not_exported_unless_switched_on() {
    let (endpoint, mut rx) = receiver().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock = spawn_mock(Default::default()).await;
    let mut raw = raw_config(tmp.path(), &mock);
    raw.otlp.endpoint = endpoint.clone();
    assert!(!raw.otlp.enabled, "off by default");
    let app = spawn_app_with(Config::from_raw(raw).expect("config")).await;
    let key = app.project_key("acme", "free").await;
    app.chat(&key).await;
    // A second, exporting gateway's span arriving first proves the receiver works and
    // that nothing from the first came before it.
    let (exporting, _tmp) = app_exporting_to(&endpoint).await;
    let r = reqwest::get(exporting.url("/health")).await.expect("health");
    assert_eq!(r.status(), 200);
    let (_, span) = span_where(&mut rx, |_| true).await;
    assert_eq!(span["name"], "GET /health", "only the exporting gateway's span: {span}");
}
