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
    /// On a cluster: the seed to publish through next (any node broadcasts).
    next_seed: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for ChangeBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeBus").field("channel", &self.channel).finish_non_exhaustive()
    }
}

impl ChangeBus {
    pub fn new(conn: RedisConn, settings: RedisSettings, keys: &KeySpace) -> Self {
        Self { conn, settings, channel: keys.changes_channel(), next_seed: std::sync::atomic::AtomicUsize::new(0) }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Publishes one notice; returns how many subscribers got it (on a cluster: the
    /// subscribers of the node it reached; the cluster forwards it to the others).
    ///
    /// On a cluster the notice goes through a plain connection to one seed node, the
    /// next one after a failure: a cluster client routes `PUBLISH` to a node it may
    /// still believe alive after it died, and notices would stop until it learnt
    /// otherwise. Notices are rare (catalog changes), so a connection per notice is
    /// cheap.
    pub async fn publish(&self, message: &str) -> StoreResult<usize> {
        if !self.settings.cluster {
            let mut conn = self.conn.clone();
            return bounded(
                self.settings.timeout,
                redis::cmd("PUBLISH").arg(&self.channel).arg(message).query_async(&mut conn),
            )
            .await;
        }
        let clients = self.subscribe_clients()?;
        let mut last = None;
        for _ in 0..clients.len() {
            let turn = self.next_seed.load(std::sync::atomic::Ordering::Relaxed);
            let client = &clients[turn % clients.len()];
            let attempt = async {
                let mut conn = bounded(self.settings.timeout, client.get_multiplexed_async_connection()).await?;
                bounded(
                    self.settings.timeout,
                    redis::cmd("PUBLISH").arg(&self.channel).arg(message).query_async::<usize>(&mut conn),
                )
                .await
            };
            match attempt.await {
                Ok(n) => return Ok(n),
                Err(error) => {
                    self.next_seed.store(turn.wrapping_add(1), std::sync::atomic::Ordering::Relaxed);
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| StoreError::unavailable("no cluster node to publish on".to_owned())))
    }

    /// The nodes to subscribe on, in turn: the server, or every seed of a cluster (a
    /// cluster forwards `PUBLISH` to every node, so any live one will do; after a
    /// failure the next is tried, so a dead node does not silence the bus).
    fn subscribe_clients(&self) -> StoreResult<Vec<redis::Client>> {
        let urls: Vec<&str> = if self.settings.cluster {
            self.settings.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
        } else {
            vec![self.settings.url.as_str()]
        };
        let clients = urls
            .into_iter()
            .map(|url| redis::Client::open(url).map_err(|e| StoreError::internal(format!("redis url: {e}"))))
            .collect::<StoreResult<Vec<_>>>()?;
        if clients.is_empty() {
            return Err(StoreError::internal("redis url names no node".to_owned()));
        }
        Ok(clients)
    }

    /// Subscribes and hands every event to `on_event` until `stop` resolves,
    /// re-subscribing after any failure.
    pub async fn run_subscriber<F>(&self, stop: impl Future<Output = ()>, mut on_event: F)
    where
        F: FnMut(BusEvent),
    {
        let clients = match self.subscribe_clients() {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "catalog change subscriber cannot start; caches rely on their TTL");
                return;
            }
        };
        tokio::pin!(stop);
        let timeout = self.settings.timeout;
        let mut was_up = true;
        let mut turn = 0usize;
        loop {
            let client = &clients[turn % clients.len()];
            turn = turn.wrapping_add(1);
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
