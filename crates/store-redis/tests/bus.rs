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

/// Issue 18: on a Redis Cluster the subscriber listens on one node; when that node
/// dies it moves to the next seed, and notices published afterwards still arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_the_subscriber_survives_the_death_of_its_node() {
    let mut cluster = tokio::task::spawn_blocking(tollgate_testkit::RedisCluster::start).await.expect("cluster");
    let url = cluster.url();
    let settings = RedisSettings { url: url.clone(), cluster: true, timeout: Duration::from_secs(2) };
    let conn = RedisConn::connect(&settings).await.expect("connect to the cluster");
    let keys = KeySpace::new("tgtest:bus-cluster:");
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
    // (A cluster's PUBLISH answers the subscribers of the node it reached, not all.)
    bus.publish("before").await.expect("publish");
    assert_eq!(next(&mut rx).await, BusEvent::Message("before".to_owned()));
    // The subscriber's node (the first seed) dies.
    let seed = cluster.first_seed();
    cluster.kill_port(seed);
    let _cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_healthy();
        cluster
    })
    .await
    .expect("cluster heals");
    // It notices (the subscription ends), subscribes on another node, and from then on
    // every notice arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert!(std::time::Instant::now() < deadline, "the subscriber never came back");
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(BusEvent::Subscribed)) => break,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscriber stopped"),
            Err(_) => {}
        }
    }
    // The cluster client learns the new slot map from its next errors: publish
    // until one goes through (a poll for that state, with a deadline).
    let mut delivered = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    while !delivered && std::time::Instant::now() < deadline {
        attempt += 1;
        let text = format!("after-{attempt}");
        if bus.publish(&text).await.is_ok() {
            if let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
                assert_eq!(event, BusEvent::Message(text));
                delivered = true;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(delivered, "a notice published after the failover reached the subscriber");
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), subscriber).await.expect("subscriber stops").expect("joined");
}
