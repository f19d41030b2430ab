//! The usage ledger in SQLite, written by one dedicated thread.
//!
//! `append` only sends the record down a channel, so the request path never waits
//! for the disk. The writer thread owns its own connection: it blocks for the first
//! message, drains up to [`MAX_BATCH`] more without blocking, and commits the records
//! in one transaction through a cached `INSERT OR IGNORE` (the id is the primary key,
//! so appends are idempotent). A `Flush` is answered after the commit that follows
//! it, so it covers everything appended before it.
//!
//! A failed commit is retried a few times; if it still fails, the flushers of that
//! batch get the error, and the records stay queued in memory (up to
//! [`MAX_RETAINED`]) to be retried with the next batch or after a pause. Nothing is
//! dropped without an error log.
//!
//! Queries run on a separate read-only connection (WAL lets it read beside the
//! writer) inside `spawn_blocking`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, Row, params_from_iter};
use tokio::sync::oneshot;
use tollgate_core::{UsageQuery, UsageRecord, UsageSource};
use tollgate_store::{Ledger, StoreError, StoreResult};

use crate::schema::{self, Role};
use crate::{copy_error, join_error, sql_error, to_sql_int};

/// Messages drained into one transaction at most.
pub const MAX_BATCH: usize = 1_000;
/// Records kept in memory while the database refuses writes; beyond this the oldest
/// are dropped (with an error log) rather than exhausting memory.
pub const MAX_RETAINED: usize = 100_000;
/// Attempts per commit before the flushers are told it failed.
const ATTEMPTS: u32 = 3;
/// How long the writer waits before retrying records a failed commit left queued
/// when no new message arrives.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

const INSERT: &str = "INSERT OR IGNORE INTO usage (id, ts_ms, project_id, key_id, endpoint, model, status, \
                      counted, requests, prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, \
                      cached_tokens, uncached_cost_micros, usage_source, price_version, client_ip, anonymous_id) \
                      VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)";
const COLUMNS: &str = "id, ts_ms, project_id, key_id, endpoint, model, status, counted, requests, \
                       prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, cached_tokens, \
                       uncached_cost_micros, usage_source, price_version, client_ip, anonymous_id";

type Ack = oneshot::Sender<StoreResult<()>>;

enum Message {
    Record(Box<UsageRecord>),
    /// Answered once everything queued before it is committed.
    Flush(Ack),
    /// Like `Flush`, then the writer stops.
    Close(Ack),
}

/// The SQLite usage ledger. Obtain it from
/// [`EmbeddedStore::ledger`](crate::EmbeddedStore::ledger).
///
/// Call [`Ledger::close`] before exiting: it commits what is queued and joins the
/// writer. Dropping the ledger without closing it also lets the writer commit what is
/// queued, but in the background, without waiting for it.
pub struct EmbeddedLedger {
    sender: Sender<Message>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Dropping it stops the checkpointer thread.
    checkpoint_stop: Mutex<Option<Sender<()>>>,
    reader: Arc<Mutex<Connection>>,
    /// For `append_new`, which must answer which records were new, so it cannot go
    /// through the fire-and-forget writer queue.
    direct: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").field("closed", &self.closed.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl EmbeddedLedger {
    /// Opens the writer and reader connections to a migrated database and starts the
    /// writer thread.
    pub(crate) fn open(path: &Path) -> StoreResult<Self> {
        let writer_conn = schema::open_connection(path, Role::LedgerWriter)?;
        let reader = schema::open_connection(path, Role::Reader)?;
        let direct = schema::open_connection(path, Role::LedgerWriter)?;
        let checkpoint_conn = schema::open_connection(path, Role::Writer)?;
        let (checkpoint_stop, stop) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("tollgate-checkpoint".to_owned())
            .spawn(move || run_checkpointer(&checkpoint_conn, &stop))
            .map_err(|e| StoreError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        let (sender, receiver) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("tollgate-ledger".to_owned())
            .spawn(move || run_writer(writer_conn, receiver))
            .map_err(|e| StoreError::Internal(format!("cannot start the ledger writer thread: {e}")))?;
        Ok(Self {
            sender,
            closed: AtomicBool::new(false),
            checkpoint_stop: Mutex::new(Some(checkpoint_stop)),
            writer: Mutex::new(Some(writer)),
            reader: Arc::new(Mutex::new(reader)),
            direct: Arc::new(Mutex::new(direct)),
        })
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await
        .map_err(join_error)?
    }

    fn closed_error() -> StoreError {
        StoreError::Unavailable("the usage ledger is closed".to_owned())
    }

    fn writer_gone() -> StoreError {
        StoreError::Internal("the ledger writer thread stopped".to_owned())
    }
}

fn u64_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, Box::new(e)))
}

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<UsageRecord> {
    let status: i64 = row.get(6)?;
    Ok(UsageRecord {
        id: row.get(0)?,
        ts_ms: row.get(1)?,
        project_id: row.get(2)?,
        key_id: row.get(3)?,
        endpoint: row.get(4)?,
        model: row.get(5)?,
        status: u16::try_from(status)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(6, Type::Integer, Box::new(e)))?,
        counted: row.get::<_, i64>(7)? != 0,
        requests: u64_column(row, 8)?,
        prompt_tokens: u64_column(row, 9)?,
        completion_tokens: u64_column(row, 10)?,
        cost_micros: u64_column(row, 11)?,
        latency_ms: u64_column(row, 12)?,
        provider: row.get(13)?,
        cached_tokens: u64_column(row, 14)?,
        uncached_cost_micros: u64_column(row, 15)?,
        usage_source: {
            let text: String = row.get(16)?;
            UsageSource::parse(&text).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(16, Type::Text, format!("usage_source '{text}'").into())
            })?
        },
        price_version: row.get(17)?,
        client_ip: row.get(18)?,
        anonymous_id: row.get(19)?,
    })
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn append(&self, record: UsageRecord) {
        if self.closed.load(Ordering::Acquire) {
            tracing::error!(id = %record.id, "usage record appended after the ledger closed: dropped");
            return;
        }
        if let Err(mpsc::SendError(Message::Record(record))) = self.sender.send(Message::Record(Box::new(record))) {
            tracing::error!(id = %record.id, "the ledger writer stopped: usage record dropped");
        }
    }

    async fn flush(&self) -> StoreResult<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        let (ack, done) = oneshot::channel();
        self.sender.send(Message::Flush(ack)).map_err(|_| Self::writer_gone())?;
        done.await.map_err(|_| Self::writer_gone())?
    }

    async fn query(&self, query: UsageQuery) -> StoreResult<Vec<UsageRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let mut sql = format!("SELECT {COLUMNS} FROM usage WHERE 1 = 1");
            let mut args = Vec::new();
            if let Some(project_id) = query.project_id {
                sql.push_str(" AND project_id = ?");
                args.push(Value::Text(project_id));
            }
            if let Some(key_id) = query.key_id {
                sql.push_str(" AND key_id = ?");
                args.push(Value::Text(key_id));
            }
            if let Some(from_ms) = query.from_ms {
                sql.push_str(" AND ts_ms >= ?");
                args.push(Value::Integer(from_ms));
            }
            if let Some(to_ms) = query.to_ms {
                sql.push_str(" AND ts_ms < ?");
                args.push(Value::Integer(to_ms));
            }
            if let Some((ts_ms, id)) = query.cursor {
                // A row value comparison: strictly older than the cursor's (ts, id),
                // in the order pages are served. SQLite walks the index with it.
                sql.push_str(" AND (ts_ms, id) < (?, ?)");
                args.push(Value::Integer(ts_ms));
                args.push(Value::Text(id));
            }
            sql.push_str(" ORDER BY ts_ms DESC, id DESC LIMIT ?");
            args.push(Value::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX)));
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let rows = stmt.query_map(params_from_iter(args), record_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = direct.lock().unwrap_or_else(PoisonError::into_inner);
            insert_batch_reporting(&mut conn, &records)
        })
        .await
        .map_err(join_error)?
    }

    async fn records_since(&self, since_ms: i64) -> StoreResult<Vec<UsageRecord>> {
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM usage WHERE ts_ms >= ?1 ORDER BY ts_ms, id"))
                .map_err(sql_error)?;
            let rows = stmt.query_map([since_ms], record_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        drop(self.checkpoint_stop.lock().unwrap_or_else(PoisonError::into_inner).take());
        let (ack, done) = oneshot::channel();
        let result = match self.sender.send(Message::Close(ack)) {
            Ok(()) => done.await.unwrap_or_else(|_| Err(Self::writer_gone())),
            Err(_) => Err(Self::writer_gone()),
        };
        let handle = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle {
            // The writer has answered Close and is returning; joining is quick, but it
            // is still a blocking call.
            let joined = tokio::task::spawn_blocking(move || handle.join()).await.map_err(join_error)?;
            if joined.is_err() {
                return Err(Self::writer_gone());
            }
        }
        result
    }
}

/// How often the WAL is folded back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoints the WAL from its own thread and connection. The ledger connections
/// turn automatic checkpoints off: a checkpoint fsyncs, and on the writer thread it
/// would hold up every response waiting for that commit (`durability = "sync"`).
/// PASSIVE never blocks the writer; it copies what it can.
fn run_checkpointer(conn: &Connection, stop: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
    }
}

/// The writer thread: batches messages into transactions until closed or until every
/// sender is gone (the ledger was dropped).
fn run_writer(mut conn: Connection, receiver: Receiver<Message>) {
    let mut queued: Vec<UsageRecord> = Vec::new();
    loop {
        // With records left over from a failed commit, wake up to retry them even if
        // nothing new arrives.
        let first = if queued.is_empty() {
            receiver.recv().ok()
        } else {
            match receiver.recv_timeout(RETRY_PAUSE) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => {
                    // Failures are logged inside; the records stay queued.
                    let _ = commit_queued(&mut conn, &mut queued);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            }
        };
        let Some(first) = first else {
            // Dropped without close: commit what is left, then stop.
            if !queued.is_empty()
                && let Err(error) = commit_queued(&mut conn, &mut queued)
            {
                tracing::error!(%error, lost = queued.len(), "usage records lost: the ledger was dropped");
            }
            return;
        };

        let mut waiters = Vec::new();
        let mut close = None;
        let mut take = |message| match message {
            Message::Record(record) => queued.push(*record),
            Message::Flush(ack) => waiters.push(ack),
            Message::Close(ack) => close = Some(ack),
        };
        let closing_first = matches!(first, Message::Close(_));
        take(first);
        let mut drained = 1;
        let mut closing = closing_first;
        while !closing && drained < MAX_BATCH {
            let Ok(message) = receiver.try_recv() else {
                break;
            };
            closing = matches!(message, Message::Close(_));
            take(message);
            drained += 1;
        }
        if close.is_some() {
            // Nothing after Close is part of it; answer stragglers that raced it.
            refuse_after_close(&receiver);
        }

        let result = commit_queued(&mut conn, &mut queued);
        for waiter in waiters {
            // A flusher that stopped waiting is not an error.
            let _ = waiter.send(result.as_ref().map(|_| ()).map_err(copy_error));
        }
        if let Some(ack) = close {
            if !queued.is_empty() {
                tracing::error!(
                    lost = queued.len(),
                    "usage records lost: the ledger closed while the database refused writes"
                );
            }
            let _ = ack.send(result);
            return;
        }
    }
}

/// Commits `queued` (emptying it on success). On failure the records stay queued, cut
/// to [`MAX_RETAINED`], and the error is returned for the flushers.
fn commit_queued(conn: &mut Connection, queued: &mut Vec<UsageRecord>) -> StoreResult<()> {
    if queued.is_empty() {
        return Ok(());
    }
    let mut last_error = None;
    for attempt in 1..=ATTEMPTS {
        match insert_batch(conn, queued) {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(attempt, records = queued.len(), "usage batch committed after retrying");
                }
                queued.clear();
                return Ok(());
            }
            Err(error) => {
                tracing::error!(%error, attempt, records = queued.len(), "usage batch commit failed");
                last_error = Some(error);
                if attempt < ATTEMPTS {
                    std::thread::sleep(Duration::from_millis(50 << attempt));
                }
            }
        }
    }
    if queued.len() > MAX_RETAINED {
        let dropped = queued.len() - MAX_RETAINED;
        queued.drain(..dropped);
        tracing::error!(dropped, "usage records dropped: too many queued while the database refuses writes");
    }
    Err(last_error.unwrap_or_else(|| StoreError::Internal("usage batch commit failed".to_owned())))
}

/// Inserts in one transaction and reports, per record, whether it was new.
fn insert_batch_reporting(conn: &mut Connection, records: &[UsageRecord]) -> StoreResult<Vec<bool>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
    let mut fresh = Vec::with_capacity(records.len());
    {
        let mut insert = tx.prepare_cached(INSERT).map_err(sql_error)?;
        for r in records {
            fresh.push(insert.execute(params_from_iter(record_params(r))).map_err(sql_error)? == 1);
        }
    }
    tx.commit().map_err(sql_error)?;
    Ok(fresh)
}

fn record_params(r: &UsageRecord) -> Vec<Box<dyn rusqlite::ToSql + '_>> {
    vec![
        Box::new(&r.id),
        Box::new(r.ts_ms),
        Box::new(&r.project_id),
        Box::new(&r.key_id),
        Box::new(&r.endpoint),
        Box::new(&r.model),
        Box::new(i64::from(r.status)),
        Box::new(i64::from(r.counted)),
        Box::new(to_sql_int(r.requests)),
        Box::new(to_sql_int(r.prompt_tokens)),
        Box::new(to_sql_int(r.completion_tokens)),
        Box::new(to_sql_int(r.cost_micros)),
        Box::new(to_sql_int(r.latency_ms)),
        Box::new(&r.provider),
        Box::new(to_sql_int(r.cached_tokens)),
        Box::new(to_sql_int(r.uncached_cost_micros)),
        Box::new(r.usage_source.as_str()),
        Box::new(&r.price_version),
        Box::new(&r.client_ip),
        Box::new(&r.anonymous_id),
    ]
}

fn insert_batch(conn: &mut Connection, records: &[UsageRecord]) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
    {
        let mut insert = tx.prepare_cached(INSERT).map_err(sql_error)?;
        for r in records {
            insert.execute(params_from_iter(record_params(r))).map_err(sql_error)?;
        }
    }
    tx.commit().map_err(sql_error)
}

/// Answers whatever raced a `Close` into the channel: flushes get an error, records
/// are counted and logged as dropped.
fn refuse_after_close(receiver: &Receiver<Message>) {
    let mut dropped = 0usize;
    while let Ok(message) = receiver.try_recv() {
        match message {
            Message::Record(_) => dropped += 1,
            Message::Flush(ack) | Message::Close(ack) => {
                let _ = ack.send(Err(EmbeddedLedger::closed_error()));
            }
        }
    }
    if dropped > 0 {
        tracing::error!(dropped, "usage records appended while the ledger closed: dropped");
    }
}
