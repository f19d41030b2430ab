//! One pass of the sink, and what it reports.
//!
//! [`Tailer::run_once`]: read the records after the stored cursor (at most a batch),
//! publish them, wait for every acknowledgement, then store the cursor at the last
//! one. Nothing is skipped: a failure anywhere leaves the cursor where it was.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tollgate_store::LedgerFeed;

use crate::{EventsError, NatsSettings, NatsSink};

/// What the sink did, for `/metrics` and `/health/detailed`.
#[derive(Debug, Default)]
pub struct TailerStats {
    /// This instance runs the sink (always in embedded mode; the lease holder of many).
    pub active: AtomicBool,
    /// Connected to JetStream, stream found.
    pub connected: AtomicBool,
    /// Events JetStream stored.
    pub published: AtomicU64,
    /// Events JetStream already held (published again after a failure or a crash).
    pub duplicates: AtomicU64,
    /// Passes that failed (connection, stream, publish, acknowledgement, store).
    pub failures: AtomicU64,
    /// Ledger records not yet published, as of the last pass or check.
    pub lag_records: AtomicU64,
    /// The stored cursor: every record up to this `seq` is published.
    pub cursor: AtomicI64,
    /// When the cursor last moved (Unix ms; 0: never in this process).
    pub last_published_ms: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl TailerStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records a failure; answers whether it differs from the previous one (log it once).
    pub fn failed(&self, error: &EventsError) -> bool {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let text = error.to_string();
        let mut last = self.last_error.lock().unwrap_or_else(PoisonError::into_inner);
        let new = last.as_deref() != Some(text.as_str());
        *last = Some(text);
        new
    }

    fn succeeded(&self) -> bool {
        self.last_error.lock().unwrap_or_else(PoisonError::into_inner).take().is_some()
    }
}

/// The sink: a ledger feed, a JetStream connection made on demand, and a cursor name.
pub struct Tailer {
    feed: Arc<dyn LedgerFeed>,
    settings: NatsSettings,
    /// The cursor's name in the store: `nats:<stream>`, so a new stream starts from
    /// the beginning of the ledger.
    cursor_name: String,
    batch: usize,
    sink: tokio::sync::Mutex<Option<NatsSink>>,
    pub stats: Arc<TailerStats>,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Records published (stored or duplicates) and passed by the cursor.
    pub records: usize,
    /// The batch was full: more may be waiting.
    pub full: bool,
}

impl Tailer {
    pub fn new(feed: Arc<dyn LedgerFeed>, settings: NatsSettings, batch: usize) -> Self {
        let cursor_name = format!("nats:{}", settings.stream);
        Self {
            feed,
            settings,
            cursor_name,
            batch: batch.max(1),
            sink: tokio::sync::Mutex::new(None),
            stats: Arc::default(),
        }
    }

    pub fn cursor_name(&self) -> &str {
        &self.cursor_name
    }

    pub fn settings(&self) -> &NatsSettings {
        &self.settings
    }

    /// One pass at `now_ms`. On failure the cursor stays; after a NATS failure the
    /// connection is dropped too (the next pass connects again and checks the stream).
    pub async fn run_once(&self, now_ms: i64) -> Result<Pass, EventsError> {
        let result = self.pass(now_ms).await;
        match &result {
            Ok(_) => {
                if self.stats.succeeded() {
                    tracing::info!(stream = %self.settings.stream, "usage events are published again");
                }
            }
            Err(EventsError::Store(_)) => {}
            Err(_) => {
                self.stats.connected.store(false, Ordering::Relaxed);
                *self.sink.lock().await = None;
            }
        }
        result
    }

    async fn pass(&self, now_ms: i64) -> Result<Pass, EventsError> {
        let mut sink = self.sink.lock().await;
        if sink.is_none() {
            *sink = Some(NatsSink::connect(&self.settings).await?);
            self.stats.connected.store(true, Ordering::Relaxed);
        }
        let Some(nats) = sink.as_ref() else { return Ok(Pass::default()) };
        let cursor = self.feed.feed_cursor(&self.cursor_name).await?;
        let records = self.feed.feed_after(cursor, self.batch).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            self.stats.cursor.store(cursor, Ordering::Relaxed);
            self.stats.lag_records.store(0, Ordering::Relaxed);
            return Ok(Pass::default());
        };
        let acks = nats.publish(&records).await?;
        // Only now, every message acknowledged, does the cursor move.
        self.feed.advance_feed_cursor(&self.cursor_name, last, now_ms).await?;
        self.stats.published.fetch_add(acks.stored, Ordering::Relaxed);
        self.stats.duplicates.fetch_add(acks.duplicates, Ordering::Relaxed);
        self.stats.cursor.store(last, Ordering::Relaxed);
        self.stats.last_published_ms.store(now_ms, Ordering::Relaxed);
        let full = records.len() >= self.batch;
        if !full {
            self.stats.lag_records.store(0, Ordering::Relaxed);
        } else {
            self.refresh_lag().await?;
        }
        Ok(Pass { records: records.len(), full })
    }

    /// Reads the stored cursor and how many records lie after it (an instance that
    /// does not run the sink, or one whose publishing fails, still shows the lag).
    pub async fn refresh_lag(&self) -> Result<u64, EventsError> {
        let cursor = self.feed.feed_cursor(&self.cursor_name).await?;
        let lag = self.feed.feed_lag(cursor).await?;
        self.stats.cursor.store(cursor, Ordering::Relaxed);
        self.stats.lag_records.store(lag, Ordering::Relaxed);
        Ok(lag)
    }

    /// Drops the connection (shutdown, or this instance lost the lease).
    pub async fn disconnect(&self) {
        *self.sink.lock().await = None;
        self.stats.connected.store(false, Ordering::Relaxed);
    }
}

impl Tailer {
    /// The earliest time among the records not yet published (`None`: none), for
    /// retention: rows from there on are kept until the sink has published them.
    pub async fn oldest_unpublished_ms(&self) -> Result<Option<i64>, EventsError> {
        let cursor = self.feed.feed_cursor(&self.cursor_name).await?;
        Ok(self.feed.feed_oldest_after(cursor).await?)
    }
}
