//! Catalog change notices over Redis pub/sub.
//!
//! The instance that changes a key, a plan or an admin token publishes one short text
//! message on `<prefix>catalog-changes` after the change is committed; every instance
//! runs [`ChangeBus::run_subscriber`] and drops what it cached about it. Pub/sub
//! delivers at most once, so the subscriber reports [`BusEvent::Subscribed`] on every
//! (re)connection: messages may have been missed while it was away, and the receiver
//! drops its whole cache then. A short cache TTL is the backstop for anything else.
//!
//! The payload is opaque here; the catalog defines it.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use tollgate_store::{StoreError, StoreResult};

use crate::keys::KeySpace;
use crate::{RedisConn, RedisSettings, bounded, redis_error};

/// How often an idle subscription checks that its connection is alive (a Redis that
/// hangs without closing the socket would otherwise go unnoticed).
const PING_EVERY: Duration = Duration::from_secs(2);
/// Pause between two attempts to subscribe again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

/// What the subscriber saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// Subscribed, first or again: notices sent meanwhile are lost.
    Subscribed,
    /// A notice.
    Message(String),
    /// The subscription broke; it is being re-established.
    Lost,
}

/// Publishes and receives catalog change notices.
pub struct ChangeBus {
    conn: RedisConn,
    settings: RedisSettings,
    channel: String,
}

impl std::fmt::Debug for ChangeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeBus").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl ChangeBus {
    pub fn new(conn: RedisConn, settings: RedisSettings, keys: &KeySpace) -> Self {
        Self { conn, settings, channel: keys.changes_channel() }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Publishes one notice; returns how many subscribers got it.
    pub async fn publish(&self, message: &str) -> StoreResult<usize> {
        let mut conn = self.conn.clone();
        bounded(self.settings.timeout, redis::cmd("PUBLISH").arg(&self.channel).arg(message).query_async(&mut conn))
            .await
    }

    /// The node to subscribe on: the server, or the first seed of a cluster (a
    /// cluster forwards `PUBLISH` to every node).
    fn subscribe_client(&self) -> StoreResult<redis::Client> {
        let url = if self.settings.cluster {
            self.settings.url.split(',').map(str::trim).find(|s| !s.is_empty()).unwrap_or_default()
        } else {
            self.settings.url.as_str()
        };
        redis::Client::open(url).map_err(|e| StoreError::internal(format!("redis url: {e}")))
    }

    /// Subscribes and hands every event to `on_event` until `stop` resolves,
    /// re-subscribing after any failure.
    pub async fn run_subscriber<F>(&self, stop: impl Future<Output = ()>, mut on_event: F)
    where
        F: FnMut(BusEvent),
    {
        let client = match self.subscribe_client() {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "catalog change subscriber cannot start; caches rely on their TTL");
                return;
            }
        };
        tokio::pin!(stop);
        let timeout = self.settings.timeout;
        let mut was_up = true;
        loop {
            let connect = async {
                let pubsub = bounded(timeout, client.get_async_pubsub()).await?;
                let (mut sink, stream) = pubsub.split();
                bounded(timeout, sink.subscribe(&self.channel)).await?;
                Ok::<_, StoreError>((sink, stream))
            };
            let attempt = tokio::select! {
                () = &mut stop => return,
                attempt = connect => attempt,
            };
            let (mut sink, mut stream) = match attempt {
                Ok(parts) => parts,
                Err(error) => {
                    if was_up {
                        tracing::warn!(%error, "catalog change subscription unavailable; retrying");
                        was_up = false;
                    }
                    tokio::select! {
                        () = &mut stop => return,
                        () = tokio::time::sleep(RETRY_PAUSE) => continue,
                    }
                }
            };
            if !was_up {
                tracing::info!(channel = %self.channel, "catalog change subscription restored");
            }
            was_up = true;
            on_event(BusEvent::Subscribed);
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    () = &mut stop => return,
                    message = stream.next() => match message {
                        Some(message) => match message.get_payload::<String>() {
                            Ok(text) => on_event(BusEvent::Message(text)),
                            Err(error) => tracing::warn!(error = %redis_error(error), "unreadable catalog notice"),
                        },
                        None => break,
                    },
                    _ = ping.tick() => {
                        if let Err(error) = bounded(timeout, sink.ping::<redis::Value>()).await {
                            tracing::warn!(%error, "catalog change subscription stopped answering");
                            break;
                        }
                    }
                }
            }
            on_event(BusEvent::Lost);
        }
    }
}
