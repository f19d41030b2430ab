//! Tests for the mock upstream over a real socket, the way the gateway and
//! the benchmarks use it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tollgate_mock_upstream::{self as mock, MockConfig, RunningMock};

fn client() -> reqwest::Client {
    // reqwest is built with `rustls-no-provider` and refuses to build a client
    // (even a plain-http one) until some provider is installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().expect("build reqwest client")
}

/// reqwest is built without its `json` feature; these stand in for it.
trait JsonBody {
    fn json_body(self, body: &Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &Value) -> Self {
        self.header("content-type", "application/json").body(body.to_string())
    }
}

trait JsonValue {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let bytes = self.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

async fn start(config: MockConfig) -> RunningMock {
    mock::spawn(config).await.expect("spawn mock upstream")
}

fn chat_body(stream: bool, include_usage: bool) -> Value {
    let mut body = json!({
        "model": "gpt-4o-mini",
        "messages": [{ "role": "user", "content": "hi" }],
    });
    if stream {
        body["stream"] = json!(true);
    }
    if include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

async fn post_chat(mock: &RunningMock, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().post(format!("{}/chat/completions", mock.base_url())).json_body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.send().await.expect("send request")
}

/// Splits an SSE body into the payloads of its `data:` lines.
fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n").filter_map(|event| event.strip_prefix("data: ")).map(str::to_owned).collect()
}

fn assert_openai_error(body: &Value, kind: &str) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(error["type"], kind, "{body}");
}

#[tokio::test]
async fn chat_completion_echoes_model_and_reports_usage() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(false, false), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-request-id"));
    let body: Value = resp.json_value().await.expect("json body");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body["created"].as_u64().is_some());
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(body["usage"], json!({ "prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30 }));
    assert_eq!(mock.requests_served(), 1);
}

#[tokio::test]
async fn streaming_without_include_usage_has_no_usage_chunk() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(true, false), &[]).await;
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap_or("");
    assert!(content_type.starts_with("text/event-stream"));
    let events = sse_data(&resp.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("chunk is JSON")).collect();
    assert!(chunks.len() >= 3);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert!(!content.is_empty());
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o-mini");
        assert!(chunk.get("usage").is_none(), "unexpected usage: {chunk}");
    }
    let last = chunks.last().expect("chunks");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn streaming_with_include_usage_ends_with_usage_chunk() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(true, true), &[("x-mock-usage", "7,11")]).await;
    assert_eq!(resp.status(), 200);
    let events = sse_data(&resp.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&events[events.len() - 2]).expect("json");
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], json!({ "prompt_tokens": 7, "completion_tokens": 11, "total_tokens": 18 }));
    let finish: Value = serde_json::from_str(&events[events.len() - 3]).expect("json");
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["usage"], Value::Null);
}

#[tokio::test]
async fn usage_header_overrides_config() {
    let mock = start(MockConfig { prompt_tokens: 100, completion_tokens: 200, ..MockConfig::default() }).await;
    let body: Value = post_chat(&mock, &chat_body(false, false), &[]).await.json_value().await.expect("json");
    assert_eq!(body["usage"]["total_tokens"], 300);
    let body: Value =
        post_chat(&mock, &chat_body(false, false), &[("x-mock-usage", "3, 4")]).await.json_value().await.expect("json");
    assert_eq!(body["usage"], json!({ "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7 }));
}

#[tokio::test]
async fn status_header_injects_openai_errors() {
    let mock = start(MockConfig::default()).await;
    for (status, kind) in [(500, "server_error"), (503, "server_error"), (429, "requests")] {
        let code = status.to_string();
        let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-status", &code)]).await;
        assert_eq!(resp.status().as_u16(), status);
        let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
        if status == 429 {
            assert_eq!(retry_after.as_deref(), Some("7"));
        } else {
            assert_eq!(retry_after, None);
        }
        let body: Value = resp.json_value().await.expect("json");
        assert_openai_error(&body, kind);
    }
    // Errors count as answered requests.
    assert_eq!(mock.requests_served(), 3);
}

#[tokio::test]
async fn invalid_mock_header_is_rejected() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-status", "200")]).await;
    assert_eq!(resp.status(), 400);
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-fault", "explode")]).await;
    assert_eq!(resp.status(), 400);
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-usage", "1")]).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn expected_api_key_is_enforced() {
    let mock = start(MockConfig { expected_api_key: Some("sk-upstream".to_owned()), ..MockConfig::default() }).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = chat_body(false, false);

    let missing = client().post(&url).json_body(&body).send().await.expect("send");
    assert_eq!(missing.status(), 401);
    let missing: Value = missing.json_value().await.expect("json");
    assert_openai_error(&missing, "invalid_request_error");
    assert_eq!(missing["error"]["code"], "invalid_api_key");

    let wrong = client().post(&url).bearer_auth("sk-wrong").json_body(&body).send().await.expect("send");
    assert_eq!(wrong.status(), 401);
    let wrong: Value = wrong.json_value().await.expect("json");
    assert_eq!(wrong["error"]["code"], "invalid_api_key");

    let right = client().post(&url).bearer_auth("sk-upstream").json_body(&body).send().await.expect("send");
    assert_eq!(right.status(), 200);

    let models = client().get(format!("{}/models", mock.base_url())).send().await.expect("send");
    assert_eq!(models.status(), 401);
}

#[tokio::test]
async fn malformed_json_body_is_400() {
    let mock = start(MockConfig::default()).await;
    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json_value().await.expect("json");
    assert_openai_error(&body, "invalid_request_error");

    let resp = post_chat(&mock, &json!({ "messages": [] }), &[]).await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json_value().await.expect("json");
    assert_eq!(body["error"]["param"], "model");
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let mock = start(MockConfig::default()).await;
    let base = mock.base_url();

    let body: Value = client()
        .post(format!("{base}/completions"))
        .json_body(&json!({ "model": "gpt-3.5-turbo-instruct", "prompt": "Say hi" }))
        .send()
        .await
        .expect("send")
        .json_value()
        .await
        .expect("json");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "gpt-3.5-turbo-instruct");
    assert!(body["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(body["usage"]["total_tokens"], 30);

    let embed = |input: Value| {
        let url = format!("{base}/embeddings");
        async move {
            client()
                .post(url)
                .json_body(&json!({ "model": "text-embedding-3-small", "input": input }))
                .send()
                .await
                .expect("send")
                .json_value()
                .await
                .expect("json")
        }
    };
    let single = embed(json!("hello")).await;
    assert_eq!(single["object"], "list");
    assert_eq!(single["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(single["data"][0]["object"], "embedding");
    assert_eq!(single["data"][0]["embedding"].as_array().map(Vec::len), Some(8));
    assert_eq!(single["usage"], json!({ "prompt_tokens": 10, "total_tokens": 10 }));
    let many = embed(json!(["a", "b", "c"])).await;
    let data = many["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
    }
    let tokens = embed(json!([1, 2, 3])).await;
    assert_eq!(tokens["data"].as_array().map(Vec::len), Some(1));

    // The official SDKs request base64: 8 little-endian f32s = 32 bytes = 44 chars.
    let b64: Value = client()
        .post(format!("{base}/embeddings"))
        .json_body(&json!({ "model": "text-embedding-3-small", "input": "hello", "encoding_format": "base64" }))
        .send()
        .await
        .expect("send")
        .json_value()
        .await
        .expect("json");
    assert_eq!(b64["data"][0]["embedding"].as_str().map(str::len), Some(44));

    let models: Value =
        client().get(format!("{base}/models")).send().await.expect("send").json_value().await.expect("json");
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().expect("data").iter().filter_map(|m| m["id"].as_str()).collect();
    for id in ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }

    let unknown = client().post(format!("{base}/nope")).send().await.expect("send");
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json_value().await.expect("json");
    assert_openai_error(&unknown, "invalid_request_error");
}

#[tokio::test]
async fn latency_from_config_and_header() {
    let mock = start(MockConfig { latency_ms: 150, ..MockConfig::default() }).await;
    let started = Instant::now();
    let resp = post_chat(&mock, &chat_body(false, false), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));

    let started = Instant::now();
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-latency-ms", "0")]).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_millis(150));

    let started = Instant::now();
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-latency-ms", "250")]).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn fault_malformed_and_no_usage() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-fault", "malformed")]).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let resp = post_chat(&mock, &chat_body(false, false), &[("x-mock-fault", "no-usage")]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json_value().await.expect("json");
    assert_eq!(body["object"], "chat.completion");
    assert!(body.get("usage").is_none());

    let resp = post_chat(&mock, &chat_body(true, true), &[("x-mock-fault", "no-usage")]).await;
    let events = sse_data(&resp.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).expect("json");
        assert_ne!(chunk["choices"], json!([]), "usage chunk sent: {chunk}");
        assert_eq!(chunk["usage"], Value::Null);
    }
}

#[tokio::test]
async fn fault_reset_aborts_stream_after_two_chunks() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(true, true), &[("x-mock-fault", "reset")]).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut received = Vec::new();
    let mut errored = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                errored = true;
                break;
            }
        }
    }
    assert!(errored, "stream ended cleanly");
    let text = String::from_utf8(received).expect("utf8");
    let events = sse_data(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn fault_stall_sends_one_chunk_then_nothing() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(true, false), &[("x-mock-fault", "stall")]).await;
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("first chunk in time")
        .expect("some chunk")
        .expect("chunk ok");
    assert_eq!(sse_data(&String::from_utf8_lossy(&first)).len(), 1);
    let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(next.is_err(), "stalled stream produced more data");
}

#[tokio::test]
async fn serve_stops_on_shutdown_signal() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(mock::serve(listener, MockConfig::default(), async move {
        let _ = rx.await;
    }));
    let resp = client().get(format!("http://{addr}/v1/models")).send().await.expect("send");
    assert_eq!(resp.status(), 200);
    let _ = tx.send(());
    let result = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped in time")
        .expect("server task did not panic");
    assert!(result.is_ok());
}

#[tokio::test]
async fn keep_alive_connection_serves_many_streams() {
    // One pooled connection, many complete streams: catches framing bugs that
    // would leave a keep-alive connection unusable after a streamed answer.
    let mock = start(MockConfig::default()).await;
    let client = client();
    let url = format!("{}/chat/completions", mock.base_url());
    let body = chat_body(true, true);
    for _ in 0..20 {
        let text = client.post(&url).json_body(&body).send().await.expect("send").text().await.expect("body");
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
    assert_eq!(mock.requests_served(), 20);
}

#[tokio::test]
async fn the_chunks_header_sets_how_many_content_chunks_a_stream_has() {
    let mock = start(MockConfig::default()).await;
    let resp = post_chat(&mock, &chat_body(true, false), &[("x-mock-chunks", "20")]).await;
    assert_eq!(resp.status(), 200);
    let events = sse_data(&resp.text().await.expect("body"));
    let content_chunks = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty()))
        .count();
    assert_eq!(content_chunks, 20);
    let bad = post_chat(&mock, &chat_body(true, false), &[("x-mock-chunks", "0")]).await;
    assert_eq!(bad.status(), 400);
}

async fn post_messages(mock: &RunningMock, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}/messages", mock.base_url()))
        .header("anthropic-version", "2023-06-01")
        .json_body(body)
        .send()
        .await
        .expect("send request")
}

/// A Messages request that defines a tool; `text` is the user's message.
fn tool_request(text: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": stream,
        "tools": [
            { "name": "get_weather", "description": "Weather of a city",
              "input_schema": { "type": "object", "properties": { "city": { "type": "string" } } } },
            { "name": "get_time", "input_schema": { "type": "object", "properties": {} } }
        ],
        "messages": [{ "role": "user", "content": [{ "type": "text", "text": text }] }],
    })
}

/// The JSON data of each event of an Anthropic stream.
fn anthropic_events(body: &str) -> Vec<Value> {
    body.split_terminator("\n\n")
        .filter_map(|event| event.lines().find_map(|line| line.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).expect("event data is JSON"))
        .collect()
}

#[tokio::test]
async fn messages_call_the_first_tool_when_asked() {
    let mock = start(MockConfig::default()).await;
    let resp = post_messages(&mock, &tool_request("Please call a tool for Paris", false)).await;
    assert_eq!(resp.status(), 200);
    let body = resp.json_value().await.expect("json");
    assert_eq!(body["stop_reason"], "tool_use");
    let content = body["content"].as_array().expect("content");
    assert_eq!(content.len(), 1);
    assert_eq!(content[0]["type"], "tool_use");
    assert_eq!(content[0]["name"], "get_weather");
    assert_eq!(content[0]["input"], json!({ "city": "Paris" }));
    assert!(content[0]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")));
    assert_eq!(body["usage"]["input_tokens"], 10);
    assert_eq!(body["usage"]["output_tokens"], 20);

    // Without the words, or without tools, the answer is text.
    let body =
        post_messages(&mock, &tool_request("What is the weather?", false)).await.json_value().await.expect("json");
    assert_eq!((body["stop_reason"].clone(), body["content"][0]["type"].clone()), (json!("end_turn"), json!("text")));
    let mut no_tools = tool_request("call a tool", false);
    no_tools.as_object_mut().expect("object").remove("tools");
    let body = post_messages(&mock, &no_tools).await.json_value().await.expect("json");
    assert_eq!(body["stop_reason"], "end_turn");
}

#[tokio::test]
async fn a_streamed_tool_call_splits_its_input_in_two_deltas() {
    let mock = start(MockConfig::default()).await;
    let resp = post_messages(&mock, &tool_request("call a tool", true)).await;
    assert_eq!(resp.status(), 200);
    let events = anthropic_events(&resp.text().await.expect("body"));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let block = &events[1]["content_block"];
    assert_eq!((block["type"].clone(), block["name"].clone()), (json!("tool_use"), json!("get_weather")));
    let input: String = events[3..5]
        .iter()
        .map(|e| {
            assert_eq!(e["delta"]["type"], "input_json_delta");
            e["delta"]["partial_json"].as_str().expect("partial json").to_owned()
        })
        .collect();
    assert!(serde_json::from_str::<Value>(events[3]["delta"]["partial_json"].as_str().unwrap_or("")).is_err());
    assert_eq!(serde_json::from_str::<Value>(&input).expect("whole input"), json!({ "city": "Paris" }));
    assert_eq!(events[6]["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[6]["usage"]["output_tokens"], 20);
    assert_eq!(events[0]["message"]["usage"]["input_tokens"], 10);
}
