//! The usage ledger in SQLite: its SQL, and the shared batch writer on a thread of
//! its own.
//!
//! `append` hands the record to a [`BatchWriter`] (see `tollgate_store::batch` for
//! the queue, batching, retries and flush/close semantics) whose writer runs on a
//! dedicated thread with its own connection, because SQLite blocks: it commits each
//! batch in one transaction through a cached `INSERT OR IGNORE` (the id is the
//! primary key, so appends are idempotent). The policy is this backend's: up to
//! [`MAX_BATCH`] messages per batch, everything queued in one transaction, three
//! attempts, and a flush during an outage waits for its attempts; up to
//! [`MAX_RETAINED`] records stay queued while the database refuses writes.
//!
//! Each transaction also adds its new records (those the ledger had not stored: a
//! replay adds nothing) to the hourly rollups, one upsert per distinct group (see
//! `crate::analytics`), so the rollups commit or roll back with the rows.
//!
//! Queries run on a separate read-only connection (WAL lets it read beside the
//! writer) inside `spawn_blocking`.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, Row, params, params_from_iter};
use tollgate_analytics::Rollups;
use tollgate_core::{UsageQuery, UsageRecord};
use tollgate_store::batch::{self, BatchPolicy, BatchSink, BatchWriter, WriterHome};
use tollgate_store::columns::{USAGE_COLUMNS, UsageRow, to_sql_int};
use tollgate_store::totals::TotalRow;
use tollgate_store::{CountedSums, Ledger, StoreError, StoreResult, TOTALS_PAGE, TotalsPages, TotalsQuery};

use crate::schema::{self, Role};
use crate::sql_error;

/// Messages drained into one transaction at most.
pub const MAX_BATCH: usize = 1_000;
/// Records kept in memory while the database refuses writes, by default
/// (`ledger_buffer`); beyond this the oldest are dropped (with an error log) rather
/// than exhausting memory. Back-pressure starts at half of it, so the other half
/// holds the records of requests already in flight and answered requests' records
/// are not dropped.
pub const MAX_RETAINED: usize = 100_000;

/// The writer's policy for a buffer of `max_retained` records. A flush waits for the
/// attempts rather than failing fast: a local disk that refuses a write (busy, full)
/// usually does so briefly.
fn policy(max_retained: usize) -> BatchPolicy {
    BatchPolicy {
        database: "SQLite",
        max_batch: MAX_BATCH,
        // One transaction for everything queued, records left from a failed commit
        // included: all of it commits or none of it does.
        rows_per_write: usize::MAX,
        attempts: 3,
        retry_pause: Duration::from_secs(1),
        max_retained,
        queue_capacity: (max_retained / 2).max(1),
        fail_fast_during_outage: false,
    }
}

static INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT OR IGNORE INTO usage ({USAGE_COLUMNS}, seq) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, \
         ?23)"
    )
});

/// The SQLite usage ledger. Obtain it from
/// [`EmbeddedStore::ledger`](crate::EmbeddedStore::ledger).
///
/// Call [`Ledger::close`] before exiting: it commits what is queued and joins the
/// writer. Dropping the ledger without closing it also lets the writer commit what is
/// queued, but in the background, without waiting for it.
pub struct EmbeddedLedger {
    writer: BatchWriter,
    /// Dropping it stops the checkpointer thread.
    checkpoint_stop: Mutex<Option<Sender<()>>>,
    pub(crate) reader: Arc<Mutex<Connection>>,
    /// For `append_new`, which must answer which records were new, so it cannot go
    /// through the fire-and-forget writer queue.
    pub(crate) direct: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLedger").field("closed", &self.writer.is_closed()).finish_non_exhaustive()
    }
}

/// The writer thread's end: its own connection.
struct SqliteSink {
    conn: Connection,
}

impl BatchSink for SqliteSink {
    // Blocks the writer's own thread, never an async worker (`WriterHome::Thread`).
    async fn write(&mut self, records: &[UsageRecord]) -> StoreResult<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
        let mut rollups = Rollups::new();
        let mut counted = CountedSums::default();
        let mut seq = SeqNumbers::take(&tx)?;
        {
            let mut insert = tx.prepare_cached(&INSERT).map_err(sql_error)?;
            for r in records {
                if insert_record(&mut insert, r, seq.next)? == 1 {
                    seq.next += 1;
                    rollups.add(r);
                    counted.add(r);
                }
            }
        }
        seq.store(&tx)?;
        crate::analytics::upsert_rollups(&tx, &rollups)?;
        upsert_counted(&tx, &counted)?;
        tx.commit().map_err(sql_error)
    }
}

static UPSERT_COUNTED: LazyLock<String> =
    LazyLock::new(|| tollgate_store::totals::counted_upsert_sql(|i| format!("?{}", i + 1)));

/// Adds a batch's counted sums to `usage_counted` (the counter rebuild reads them).
fn upsert_counted(tx: &rusqlite::Transaction<'_>, counted: &CountedSums<'_>) -> StoreResult<()> {
    if counted.is_empty() {
        return Ok(());
    }
    let mut upsert = tx.prepare_cached(&UPSERT_COUNTED).map_err(sql_error)?;
    for (k, [requests, prompt, completion, cost]) in counted.iter() {
        upsert
            .execute(params![
                k.bucket_ms,
                k.project_id,
                k.key_id,
                k.provider,
                k.model,
                k.endpoint,
                k.client_ip,
                k.anonymous_id,
                requests,
                prompt,
                completion,
                cost
            ])
            .map_err(sql_error)?;
    }
    Ok(())
}

impl EmbeddedLedger {
    /// Opens the writer and reader connections to a migrated database and starts the
    /// writer thread.
    pub(crate) fn open(path: &Path, fsync: bool, max_retained: usize) -> StoreResult<Self> {
        let writer_conn = schema::open_ledger_writer(path, fsync)?;
        let reader = schema::open_connection(path, Role::Reader)?;
        let direct = schema::open_ledger_writer(path, fsync)?;
        let checkpoint_conn = schema::open_connection(path, Role::Writer)?;
        let (checkpoint_stop, stop) = mpsc::channel::<()>();
        let wal = wal_path(path);
        std::thread::Builder::new()
            .name("tollgate-checkpoint".to_owned())
            .spawn(move || {
                tollgate_store::batch::background_scheduling();
                run_checkpointer(&checkpoint_conn, &wal, &stop)
            })
            .map_err(|e| StoreError::internal_with_source(format!("cannot start the checkpoint thread: {e}"), e))?;
        let writer = BatchWriter::start(
            SqliteSink { conn: writer_conn },
            policy(max_retained),
            WriterHome::Thread("tollgate-ledger"),
        )?;
        Ok(Self {
            writer,
            checkpoint_stop: Mutex::new(Some(checkpoint_stop)),
            reader: Arc::new(Mutex::new(reader)),
            direct: Arc::new(Mutex::new(direct)),
        })
    }

    /// The ledger connections' `PRAGMA synchronous`: 1 (NORMAL) or, with
    /// `durability = "fsync"`, 2 (FULL). For diagnostics and tests.
    pub fn synchronous(&self) -> StoreResult<i64> {
        let conn = self.direct.lock().unwrap_or_else(PoisonError::into_inner);
        conn.pragma_query_value(None, "synchronous", |row| row.get(0)).map_err(sql_error)
    }

    pub(crate) async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            f(&conn)
        })
        .await?
    }
}

pub(crate) fn row_from_sql(row: &Row<'_>) -> rusqlite::Result<UsageRow> {
    Ok(UsageRow {
        id: row.get(0)?,
        ts_ms: row.get(1)?,
        project_id: row.get(2)?,
        key_id: row.get(3)?,
        endpoint: row.get(4)?,
        model: row.get(5)?,
        status: row.get(6)?,
        counted: row.get::<_, i64>(7)? != 0,
        requests: row.get(8)?,
        prompt_tokens: row.get(9)?,
        completion_tokens: row.get(10)?,
        cost_micros: row.get(11)?,
        latency_ms: row.get(12)?,
        provider: row.get(13)?,
        cached_tokens: row.get(14)?,
        uncached_cost_micros: row.get(15)?,
        usage_source: row.get(16)?,
        price_version: row.get(17)?,
        client_ip: row.get(18)?,
        anonymous_id: row.get(19)?,
        price_estimated: row.get::<_, i64>(20)? != 0,
        upstream_request_id: row.get(21)?,
    })
}

/// Runs a usage SELECT and checks every row into a record.
fn select_records(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> StoreResult<Vec<UsageRecord>> {
    let mut stmt = conn.prepare_cached(sql).map_err(sql_error)?;
    let rows = stmt.query_map(args, row_from_sql).map_err(sql_error)?;
    rows.map(|row| Ok(row.map_err(sql_error)?.into_record()?)).collect()
}

#[async_trait]
impl Ledger for EmbeddedLedger {
    fn append(&self, record: UsageRecord) {
        self.writer.append(record);
    }

    fn record_refusal(&self, record: UsageRecord) {
        self.writer.record_refusal(record);
    }

    async fn flush_refusals(&self) -> StoreResult<()> {
        self.writer.flush_refusals().await
    }

    async fn room(&self) {
        self.writer.room().await;
    }

    fn queue(&self) -> tollgate_store::LedgerQueue {
        self.writer.queue()
    }

    fn commit_latency(&self) -> Option<tollgate_store::histogram::HistogramSnapshot> {
        Some(self.writer.stats().commit_latency.snapshot())
    }

    async fn flush(&self) -> StoreResult<()> {
        self.writer.flush().await
    }

    async fn query(&self, query: UsageQuery) -> StoreResult<Vec<UsageRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| {
            let mut sql = format!("SELECT {USAGE_COLUMNS} FROM usage WHERE 1 = 1");
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
            select_records(conn, &sql, params_from_iter(args))
        })
        .await
    }

    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>> {
        if self.writer.is_closed() {
            return Err(batch::closed_error());
        }
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = direct.lock().unwrap_or_else(PoisonError::into_inner);
            insert_batch_reporting(&mut conn, &records)
        })
        .await?
    }

    async fn records_since(&self, since_ms: i64) -> StoreResult<Vec<UsageRecord>> {
        self.read(move |conn| {
            let sql = format!("SELECT {USAGE_COLUMNS} FROM usage WHERE ts_ms >= ?1 ORDER BY ts_ms, id");
            select_records(conn, &sql, [since_ms])
        })
        .await
    }

    async fn usage_totals(&self, query: TotalsQuery) -> StoreResult<TotalsPages> {
        let (pages, rx) = tokio::sync::mpsc::channel(1);
        let reader = self.reader.clone();
        // The rows are stepped one at a time on a blocking thread and handed over a
        // page at a time; a full channel waits for the consumer.
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(PoisonError::into_inner);
            let sent = send_totals(&conn, &query, &pages);
            if let Err(error) = sent {
                let _ = pages.blocking_send(Err(error));
            }
        });
        Ok(rx)
    }

    async fn anonymous_records(
        &self,
        project_id: &str,
        anonymous_id: &str,
        since_ms: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreResult<Vec<UsageRecord>> {
        let (project_id, anonymous_id) = (project_id.to_owned(), anonymous_id.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            // Without a cursor, start before every record of the window.
            let (after_ts, after_id) = after.unwrap_or((since_ms - 1, String::new()));
            let sql = format!(
                "SELECT {USAGE_COLUMNS} FROM usage INDEXED BY usage_anonymous_ts \
                 WHERE project_id = ?1 AND anonymous_id = ?2 AND ts_ms >= ?3 AND (ts_ms, id) > (?4, ?5) AND counted \
                 ORDER BY ts_ms, id LIMIT ?6"
            );
            select_records(conn, &sql, params![project_id, anonymous_id, since_ms, after_ts, after_id, limit])
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        drop(self.checkpoint_stop.lock().unwrap_or_else(PoisonError::into_inner).take());
        self.writer.close().await
    }
}

/// Runs the totals statement and sends its rows in pages of [`TOTALS_PAGE`]; stops
/// early (without error) when the receiver is gone.
fn send_totals(
    conn: &Connection,
    query: &TotalsQuery,
    pages: &tokio::sync::mpsc::Sender<StoreResult<Vec<UsageRecord>>>,
) -> StoreResult<()> {
    let sql = query.sql(|i| format!("?{}", i + 1));
    let mut stmt = conn.prepare(&sql).map_err(sql_error)?;
    let mut rows = stmt.query(params_from_iter(query.params())).map_err(sql_error)?;
    let mut page = Vec::with_capacity(TOTALS_PAGE);
    while let Some(row) = rows.next().map_err(sql_error)? {
        let total = TotalRow {
            bucket_ms: row.get(0).map_err(sql_error)?,
            project_id: row.get(1).map_err(sql_error)?,
            key_id: row.get(2).map_err(sql_error)?,
            provider: row.get(3).map_err(sql_error)?,
            model: row.get(4).map_err(sql_error)?,
            endpoint: row.get(5).map_err(sql_error)?,
            client_ip: row.get(6).map_err(sql_error)?,
            anonymous_id: row.get(7).map_err(sql_error)?,
            requests: row.get(8).map_err(sql_error)?,
            prompt_tokens: row.get(9).map_err(sql_error)?,
            completion_tokens: row.get(10).map_err(sql_error)?,
            cost_micros: row.get(11).map_err(sql_error)?,
        };
        page.push(total.into_record()?);
        if page.len() == TOTALS_PAGE && pages.blocking_send(Ok(std::mem::take(&mut page))).is_err() {
            return Ok(());
        }
    }
    if !page.is_empty() {
        let _ = pages.blocking_send(Ok(page));
    }
    Ok(())
}

/// How often the WAL is folded back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// A WAL larger than this after a passive checkpoint (readers kept it from being
/// reset, or a burst outran it) is checkpointed with TRUNCATE: the WAL is bounded.
const WAL_TRUNCATE_ABOVE: u64 = schema::JOURNAL_SIZE_LIMIT as u64;

/// The WAL file of the database at `db`.
fn wal_path(db: &Path) -> std::path::PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    name.into()
}

/// One checkpoint: PASSIVE (never blocks the writer), then TRUNCATE if the WAL is
/// still larger than `truncate_above` bytes. TRUNCATE waits for the writer's current
/// commit and resets the file to zero bytes.
fn checkpoint(conn: &Connection, wal: &Path, truncate_above: u64) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
    let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    if size > truncate_above {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
        if busy != 0 {
            tracing::warn!(wal_bytes = size, "WAL truncation blocked by readers; will retry");
        }
    }
    Ok(())
}

/// Checkpoints the WAL from its own thread and connection. The ledger connections
/// turn automatic checkpoints off: a checkpoint fsyncs, and on the writer thread it
/// would hold up every response waiting for that commit (`durability = "sync"`).
/// PASSIVE never blocks the writer; it copies what it can. A WAL grown past
/// [`WAL_TRUNCATE_ABOVE`] is truncated ([`checkpoint`]).
fn run_checkpointer(conn: &Connection, wal: &Path, stop: &Receiver<()>) {
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(error) = checkpoint(conn, wal, WAL_TRUNCATE_ABOVE) {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
    }
}

/// Inserts in one transaction and reports, per record, whether it was new.
fn insert_batch_reporting(conn: &mut Connection, records: &[UsageRecord]) -> StoreResult<Vec<bool>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
    let mut fresh = Vec::with_capacity(records.len());
    let mut rollups = Rollups::new();
    let mut counted = CountedSums::default();
    let mut seq = SeqNumbers::take(&tx)?;
    {
        let mut insert = tx.prepare_cached(&INSERT).map_err(sql_error)?;
        for r in records {
            let new = insert_record(&mut insert, r, seq.next)? == 1;
            if new {
                seq.next += 1;
                rollups.add(r);
                counted.add(r);
            }
            fresh.push(new);
        }
    }
    seq.store(&tx)?;
    crate::analytics::upsert_rollups(&tx, &rollups)?;
    upsert_counted(&tx, &counted)?;
    tx.commit().map_err(sql_error)?;
    Ok(fresh)
}

/// The commit-order numbers of one ledger transaction (`usage.seq`, see
/// `tollgate_store::feed`): read from `ledger_seq` when the transaction starts (it holds
/// SQLite's write lock, so no other transaction numbers rows meanwhile) and stored back
/// before it commits. Only new rows take a number.
struct SeqNumbers {
    first: i64,
    next: i64,
}

impl SeqNumbers {
    fn take(tx: &rusqlite::Transaction<'_>) -> StoreResult<Self> {
        let next: i64 = tx
            .prepare_cached("SELECT next FROM ledger_seq WHERE id = 1")
            .and_then(|mut s| s.query_row([], |row| row.get(0)))
            .map_err(sql_error)?;
        Ok(Self { first: next, next })
    }

    fn store(&self, tx: &rusqlite::Transaction<'_>) -> StoreResult<()> {
        if self.next != self.first {
            tx.prepare_cached("UPDATE ledger_seq SET next = ?1 WHERE id = 1")
                .and_then(|mut s| s.execute([self.next]))
                .map_err(sql_error)?;
        }
        Ok(())
    }
}

/// Binds one record to [`INSERT`] (in [`USAGE_COLUMNS`] order, then its commit-order
/// number) and runs it; answers the rows inserted (0 when the id was already stored).
fn insert_record(insert: &mut rusqlite::CachedStatement<'_>, r: &UsageRecord, seq: i64) -> StoreResult<usize> {
    insert
        .execute(params![
            r.id,
            r.ts_ms,
            r.project_id,
            r.key_id,
            r.endpoint,
            r.model,
            i64::from(r.status),
            i64::from(r.counted),
            to_sql_int(r.requests),
            to_sql_int(r.prompt_tokens),
            to_sql_int(r.completion_tokens),
            to_sql_int(r.cost_micros),
            to_sql_int(r.latency_ms),
            r.provider,
            to_sql_int(r.cached_tokens),
            to_sql_int(r.uncached_cost_micros),
            r.usage_source.as_str(),
            r.price_version,
            r.client_ip,
            r.anonymous_id,
            i64::from(r.price_estimated),
            r.upstream_request_id,
            seq,
        ])
        .map_err(sql_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: usize) -> Vec<UsageRecord> {
        (0..n)
            .map(|i| UsageRecord {
                id: format!("wal-{i}"),
                ts_ms: i as i64,
                project_id: "p".into(),
                key_id: "k".into(),
                endpoint: "chat.completions".into(),
                ..UsageRecord::default()
            })
            .collect()
    }

    /// A WAL past the bound is truncated by the checkpoint, not only copied back.
    #[tokio::test]
    async fn a_checkpoint_truncates_a_wal_past_its_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::EmbeddedStore::open(dir.path()).expect("open");
        let ledger = store.ledger();
        for r in records(3_000) {
            ledger.append(r);
        }
        ledger.flush().await.expect("flush");
        let db = store.db_path().to_owned();
        let wal = wal_path(&db);
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        assert!(size() > 0, "the writes are in the WAL");
        let conn = schema::open_connection(&db, Role::Writer).expect("connection");
        checkpoint(&conn, &wal, u64::MAX).expect("passive checkpoint");
        assert!(size() > 0, "a passive checkpoint copies back but leaves the file");
        checkpoint(&conn, &wal, 0).expect("checkpoint");
        assert_eq!(size(), 0, "truncated");
        assert_eq!(ledger.records_since(0).await.expect("read").len(), 3_000, "nothing lost");
        store.close().await.expect("close");
    }
}
