//! Catalog change notices over a real Redis (`TOLLGATE_TEST_REDIS_URL`): a subscriber
//! reports that it is subscribed, then every notice published after that, in order.

use std::time::Duration;

use tollgate_store_redis::{BusEvent, ChangeBus, KeySpace, RedisConn, RedisSettings};

#[tokio::test]
async fn published_notices_reach_every_subscriber() {
    // Never skipped: without Redis this test fails rather than passes.
    let url = std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let settings = RedisSettings { url: url.clone(), cluster: false, timeout: Duration::from_secs(2) };
    let conn = RedisConn::connect(&settings).await.expect("connect");
    if let Err(e) = conn.ping(settings.timeout).await {
        panic!("Redis at {url} (TOLLGATE_TEST_REDIS_URL) does not answer: {e}");
    }
    let keys = KeySpace::new(format!("tgtest:bus:{}:", std::process::id()));
    let bus = std::sync::Arc::new(ChangeBus::new(conn, settings, &keys));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let subscriber = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.run_subscriber(
                async move {
                    let _ = stop_rx.await;
                },
                move |event| {
                    let _ = tx.send(event);
                },
            )
            .await;
        })
    };
    assert_eq!(next(&mut rx).await, BusEvent::Subscribed);
    for text in ["key 3 abc", "plan free"] {
        assert_eq!(bus.publish(text).await.expect("publish"), 1, "one subscriber");
        assert_eq!(next(&mut rx).await, BusEvent::Message(text.to_owned()));
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), subscriber).await.expect("subscriber stops").expect("joined");
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<BusEvent>) -> BusEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event in time").expect("event")
}
