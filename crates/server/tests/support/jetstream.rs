//! JetStream for the usage events tests: the server at `TOLLGATE_TEST_NATS_URL`
//! (default `nats://127.0.0.1:4222`, which scripts/test.sh starts with JetStream on).
//! Never skipped: a server that does not answer, or answers without JetStream, fails
//! the test. Each test publishes to a stream and subject of its own and reads the
//! stream back message by message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

pub fn nats_url() -> String {
    std::env::var("TOLLGATE_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A stream and subject no other test uses.
pub fn unique_stream() -> (String, String) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tag = format!("{}_{nanos:x}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    (format!("TGTEST_{tag}"), format!("tgtest.usage.{tag}"))
}

/// A JetStream context on the test server; panics (fails the test) if there is none.
pub async fn require_jetstream(url: &str) -> async_nats::jetstream::Context {
    let connect = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5)).connect(url);
    let client = match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            panic!("nats-server must answer at TOLLGATE_TEST_NATS_URL={url} (scripts/test.sh starts it): {e}")
        }
        Err(_) => panic!("nats-server at TOLLGATE_TEST_NATS_URL={url} did not answer within 10 s"),
    };
    let js = async_nats::jetstream::new(client);
    // A stream that does not exist: JetStream answers "not found"; a server without
    // JetStream answers nothing (no responders) or an error saying so.
    match js.get_stream("TGTEST_NO_SUCH_STREAM").await {
        Ok(_) => {}
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => panic!("nats-server at {url} answers without JetStream (start it with -js): {e}"),
    }
    js
}

/// What a stream holds: how many messages, and each message's id with its body.
pub struct StreamContents {
    pub messages: u64,
    /// `Nats-Msg-Id` → how many messages carry it.
    pub ids: HashMap<String, usize>,
    pub bodies: HashMap<String, Value>,
    /// The ids in stream order.
    pub order: Vec<String>,
}

/// Polls the async `check` until it holds or `within` passes (no sleep stands in for
/// an event: the loop waits on the condition itself).
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's message count (0 when it does not exist yet).
pub async fn message_count(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of the stream, read by sequence.
pub async fn read_stream(js: &async_nats::jetstream::Context, stream: &str) -> StreamContents {
    let mut s = js.get_stream(stream).await.expect("the stream exists");
    let state = s.info().await.expect("stream info").state.clone();
    let mut ids = HashMap::new();
    let mut bodies = HashMap::new();
    let mut order = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = s.get_raw_message(seq).await.expect("stream message");
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .expect("every message carries its Nats-Msg-Id");
        let body: Value = serde_json::from_slice(&message.payload).expect("a JSON body");
        assert_eq!(body["id"].as_str(), Some(id.as_str()), "the message id is the record id");
        *ids.entry(id.clone()).or_insert(0) += 1;
        order.push(id.clone());
        bodies.insert(id, body);
    }
    StreamContents { messages: state.messages, ids, bodies, order }
}

pub async fn delete_stream(js: &async_nats::jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}
