//! The usage ledger in PostgreSQL, written by one background task.
//!
//! `append` sends the record down a channel, so the request path never waits for the
//! database. The writer task takes the first message, drains up to [`MAX_BATCH`] more
//! without waiting, and writes the records with one statement per [`MAX_BATCH`] rows:
//! `INSERT ... SELECT * FROM UNNEST($1::text[], ...) ON CONFLICT (id) DO NOTHING`
//! (twenty array parameters whatever the batch size, so one prepared statement; the
//! id is the primary key, so replays are ignored and the first copy wins). A `Flush`
//! is answered after the write that follows it, so it covers everything appended
//! before it.
//!
//! When PostgreSQL refuses writes, the records stay queued in memory up to the
//! configured bound and are retried every [`RETRY_PAUSE`]; a flush in between is
//! answered at once with `Unavailable` (responses that wait on a flush, with
//! `durability = "sync"`, must not wait on an outage);
//! beyond the bound the oldest are dropped, counted in [`LedgerStats::dropped`] and
//! logged. Nothing is dropped silently.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tollgate_core::{UsageQuery, UsageRecord, UsageSource};
use tollgate_store::{Ledger, StoreError, StoreResult};

use crate::{copy_error, pool_error, sql_error, to_sql_int, u64_column};

/// Rows per statement and messages drained into one write at most.
pub const MAX_BATCH: usize = 1_000;
/// How long the writer waits before retrying records a failed write left queued.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Attempts per write before the flushers of that batch are told it failed.
const ATTEMPTS: u32 = 2;

const COLUMNS: &str = "id, ts_ms, project_id, key_id, endpoint, model, status, counted, requests, \
                       prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, cached_tokens, \
                       uncached_cost_micros, usage_source, price_version, client_ip, anonymous_id";

const INSERT: &str = "INSERT INTO usage (id, ts_ms, project_id, key_id, endpoint, model, status, counted, requests, \
     prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, cached_tokens, uncached_cost_micros, \
     usage_source, price_version, client_ip, anonymous_id) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], \
     $8::bool[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], \
     $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[]) \
     ON CONFLICT (id) DO NOTHING";

const INSERT_RETURNING: &str = "INSERT INTO usage (id, ts_ms, project_id, key_id, endpoint, model, status, counted, requests, \
     prompt_tokens, completion_tokens, cost_micros, latency_ms, provider, cached_tokens, uncached_cost_micros, \
     usage_source, price_version, client_ip, anonymous_id) \
     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], \
     $8::bool[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], \
     $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[]) \
     ON CONFLICT (id) DO NOTHING RETURNING id";

type Ack = oneshot::Sender<StoreResult<()>>;

enum Message {
    Record(Box<UsageRecord>),
    /// Answered once everything queued before it is written.
    Flush(Ack),
    /// Like `Flush`, then the writer stops.
    Close(Ack),
}

/// What the writer has done, for logs, metrics and tests.
#[derive(Debug, Default)]
pub struct LedgerStats {
    /// Records written (replays ignored by the database included).
    pub written: AtomicU64,
    /// Records dropped because PostgreSQL refused writes for longer than the buffer
    /// could hold, or because the ledger closed while it did.
    pub dropped: AtomicU64,
    /// Write attempts that failed.
    pub failed_writes: AtomicU64,
    /// Records waiting in memory for PostgreSQL right now.
    pub queued: AtomicU64,
}

/// Per-group sums of counted usage, for the counter rebuild job: one row per
/// (project, key, provider, model, endpoint, client ip, anonymous id) and whether the
/// records fall in the current day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageTotal {
    /// The group's identity with the summed amounts (`counted` is true; `ts_ms` is
    /// the start of the range the sums cover).
    pub record: UsageRecord,
    /// True when the sums cover records at or after the day start asked for.
    pub today: bool,
}

/// The PostgreSQL usage ledger. Obtain it from
/// [`PostgresStore::ledger`](crate::PostgresStore::ledger).
pub struct PostgresLedger {
    pool: Pool,
    sender: mpsc::UnboundedSender<Message>,
    closed: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<LedgerStats>,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger").field("stats", &self.stats).finish_non_exhaustive()
    }
}

fn record_from_row(row: &Row) -> StoreResult<UsageRecord> {
    let get = |i: usize| row.try_get::<_, Option<String>>(i).map_err(sql_error);
    let status: i32 = row.try_get(6).map_err(sql_error)?;
    let source: String = row.try_get(16).map_err(sql_error)?;
    Ok(UsageRecord {
        id: row.try_get(0).map_err(sql_error)?,
        ts_ms: row.try_get(1).map_err(sql_error)?,
        project_id: row.try_get(2).map_err(sql_error)?,
        key_id: row.try_get(3).map_err(sql_error)?,
        endpoint: row.try_get(4).map_err(sql_error)?,
        model: get(5)?,
        status: u16::try_from(status).map_err(|_| StoreError::Internal(format!("usage status {status}")))?,
        counted: row.try_get(7).map_err(sql_error)?,
        requests: u64_column(row, 8)?,
        prompt_tokens: u64_column(row, 9)?,
        completion_tokens: u64_column(row, 10)?,
        cost_micros: u64_column(row, 11)?,
        latency_ms: u64_column(row, 12)?,
        provider: row.try_get(13).map_err(sql_error)?,
        cached_tokens: u64_column(row, 14)?,
        uncached_cost_micros: u64_column(row, 15)?,
        usage_source: UsageSource::parse(&source)
            .ok_or_else(|| StoreError::Internal(format!("usage_source '{source}'")))?,
        price_version: get(17)?,
        client_ip: get(18)?,
        anonymous_id: get(19)?,
    })
}

impl PostgresLedger {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(pool: Pool, max_queued: usize) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(LedgerStats::default());
        let writer = Writer {
            pool: pool.clone(),
            queued: Vec::new(),
            max_queued: max_queued.max(1),
            retry_at: None,
            stats: stats.clone(),
        };
        let handle = tokio::spawn(writer.run(receiver));
        Self { pool, sender, closed: AtomicBool::new(false), writer: Mutex::new(Some(handle)), stats }
    }

    pub fn stats(&self) -> &LedgerStats {
        &self.stats
    }

    fn closed_error() -> StoreError {
        StoreError::Unavailable("the usage ledger is closed".to_owned())
    }

    fn writer_gone() -> StoreError {
        StoreError::Internal("the ledger writer task stopped".to_owned())
    }

    /// Sums of counted usage since `since_ms`, grouped by what limits look at, split
    /// at `day_start_ms` (see [`UsageTotal`]). One query, whatever the traffic.
    pub async fn usage_totals_since(&self, since_ms: i64, day_start_ms: i64) -> StoreResult<Vec<UsageTotal>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(
                "SELECT project_id, key_id, provider, model, endpoint, client_ip, anonymous_id,
                        ts_ms >= $2 AS today,
                        SUM(requests)::bigint, SUM(prompt_tokens)::bigint,
                        SUM(completion_tokens)::bigint, SUM(cost_micros)::bigint
                 FROM usage WHERE counted AND ts_ms >= $1
                 GROUP BY project_id, key_id, provider, model, endpoint, client_ip, anonymous_id, today",
                &[&since_ms, &day_start_ms],
            )
            .await
            .map_err(sql_error)?;
        rows.iter()
            .map(|row| {
                let today: bool = row.try_get(7).map_err(sql_error)?;
                Ok(UsageTotal {
                    record: UsageRecord {
                        project_id: row.try_get(0).map_err(sql_error)?,
                        key_id: row.try_get(1).map_err(sql_error)?,
                        provider: row.try_get(2).map_err(sql_error)?,
                        model: row.try_get(3).map_err(sql_error)?,
                        endpoint: row.try_get(4).map_err(sql_error)?,
                        client_ip: row.try_get(5).map_err(sql_error)?,
                        anonymous_id: row.try_get(6).map_err(sql_error)?,
                        ts_ms: if today { day_start_ms } else { since_ms },
                        counted: true,
                        requests: u64_column(row, 8)?,
                        prompt_tokens: u64_column(row, 9)?,
                        completion_tokens: u64_column(row, 10)?,
                        cost_micros: u64_column(row, 11)?,
                        ..UsageRecord::default()
                    },
                    today,
                })
            })
            .collect()
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
    fn append(&self, record: UsageRecord) {
        if self.closed.load(Ordering::Acquire) {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %record.id, "usage record appended after the ledger closed: dropped");
            return;
        }
        if let Err(mpsc::error::SendError(Message::Record(record))) =
            self.sender.send(Message::Record(Box::new(record)))
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(id = %record.id, "the ledger writer stopped: usage record dropped");
        }
    }

    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        let mut fresh = Vec::with_capacity(records.len());
        for chunk in records.chunks(MAX_BATCH) {
            let inserted = insert_batch(&self.pool, chunk, true).await?;
            // Within one call the first copy of an id is the one stored.
            let mut seen = std::collections::HashSet::new();
            fresh.extend(chunk.iter().map(|r| inserted.contains(r.id.as_str()) && seen.insert(r.id.as_str())));
        }
        Ok(fresh)
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
        // Only the filters asked for, so each combination gets a plan using its index.
        let mut sql = format!("SELECT {COLUMNS} FROM usage WHERE TRUE");
        let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut push = |sql: &mut String, predicate: &str, value: Box<dyn ToSql + Sync + Send>| {
            args.push(value);
            sql.push_str(&predicate.replace('?', &format!("${}", args.len())));
        };
        if let Some(project_id) = query.project_id {
            push(&mut sql, " AND project_id = ?", Box::new(project_id));
        }
        if let Some(key_id) = query.key_id {
            push(&mut sql, " AND key_id = ?", Box::new(key_id));
        }
        if let Some(from_ms) = query.from_ms {
            push(&mut sql, " AND ts_ms >= ?", Box::new(from_ms));
        }
        if let Some(to_ms) = query.to_ms {
            push(&mut sql, " AND ts_ms < ?", Box::new(to_ms));
        }
        if let Some((ts_ms, id)) = query.cursor {
            // Strictly older than the cursor's (ts, id), in the order pages are served.
            push(&mut sql, " AND (ts_ms, id) < (?", Box::new(ts_ms));
            push(&mut sql, ", ?)", Box::new(id));
        }
        push(
            &mut sql,
            " ORDER BY ts_ms DESC, id DESC LIMIT ?",
            Box::new(i64::try_from(query.limit).unwrap_or(i64::MAX)),
        );
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(&sql).await.map_err(sql_error)?;
        let rows = client.query(&statement, &params).await.map_err(sql_error)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn records_since(&self, since_ms: i64) -> StoreResult<Vec<UsageRecord>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = client
            .query(&format!("SELECT {COLUMNS} FROM usage WHERE ts_ms >= $1 ORDER BY ts_ms, id"), &[&since_ms])
            .await
            .map_err(sql_error)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn close(&self) -> StoreResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (ack, done) = oneshot::channel();
        let result = match self.sender.send(Message::Close(ack)) {
            Ok(()) => done.await.unwrap_or_else(|_| Err(Self::writer_gone())),
            Err(_) => Err(Self::writer_gone()),
        };
        let handle = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(handle) = handle
            && handle.await.is_err()
        {
            return Err(Self::writer_gone());
        }
        result
    }
}

/// The writer task's state.
struct Writer {
    pool: Pool,
    queued: Vec<UsageRecord>,
    max_queued: usize,
    /// Set while PostgreSQL refuses writes: when to try again.
    retry_at: Option<tokio::time::Instant>,
    stats: Arc<LedgerStats>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Message>) {
        loop {
            // With records left over from a failed write, wake up to retry them even
            // if nothing new arrives.
            let first = if self.queued.is_empty() {
                receiver.recv().await
            } else {
                let retry_at = self.retry_at.unwrap_or_else(|| tokio::time::Instant::now() + RETRY_PAUSE);
                tokio::select! {
                    message = receiver.recv() => message,
                    () = tokio::time::sleep_until(retry_at) => {
                        // Failures are logged inside; the records stay queued.
                        let _ = self.write_queued().await;
                        continue;
                    }
                }
            };
            let Some(first) = first else {
                // Dropped without close: write what is left, then stop.
                if let Err(error) = self.write_queued().await {
                    self.drop_all(&format!("the ledger was dropped while PostgreSQL refused writes: {error}"));
                }
                return;
            };

            let mut waiters = Vec::new();
            let mut close = None;
            let mut take = |message, queued: &mut Vec<UsageRecord>| match message {
                Message::Record(record) => queued.push(*record),
                Message::Flush(ack) => waiters.push(ack),
                Message::Close(ack) => close = Some(ack),
            };
            let mut closing = matches!(first, Message::Close(_));
            take(first, &mut self.queued);
            let mut drained = 1;
            while !closing && drained < MAX_BATCH {
                let Ok(message) = receiver.try_recv() else {
                    break;
                };
                closing = matches!(message, Message::Close(_));
                take(message, &mut self.queued);
                drained += 1;
            }
            if close.is_some() {
                refuse_after_close(&mut receiver, &self.stats);
            }
            // While PostgreSQL is failing, new records just queue (bounded) until the
            // next retry is due, and flushers are told at once that their records are
            // not durable yet: a response waiting on a flush must not wait on an
            // outage. Closing always tries.
            let not_due = self.retry_at.is_some_and(|at| tokio::time::Instant::now() < at);
            let result = if not_due && close.is_none() {
                self.bound();
                if waiters.is_empty() {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "PostgreSQL refuses writes; {} usage records wait in memory for it",
                        self.queued.len()
                    )))
                }
            } else {
                self.write_queued().await
            };
            for waiter in waiters {
                // A flusher that stopped waiting is not an error.
                let _ = waiter.send(result.as_ref().map(|_| ()).map_err(copy_error));
            }
            if let Some(ack) = close {
                if !self.queued.is_empty() {
                    self.drop_all("the ledger closed while PostgreSQL refused writes");
                }
                let _ = ack.send(result);
                return;
            }
        }
    }

    /// Writes everything queued, in statements of [`MAX_BATCH`] rows. What could not
    /// be written stays queued (bounded) and the error is returned for the flushers.
    async fn write_queued(&mut self) -> StoreResult<()> {
        while !self.queued.is_empty() {
            let n = self.queued.len().min(MAX_BATCH);
            let mut last_error = None;
            for attempt in 1..=ATTEMPTS {
                match insert_batch(&self.pool, &self.queued[..n], false).await {
                    Ok(_) => {
                        last_error = None;
                        if attempt > 1 || self.retry_at.is_some() {
                            tracing::info!(attempt, records = n, "usage batch written after PostgreSQL failed");
                        }
                        break;
                    }
                    Err(error) => {
                        self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, attempt, records = n, "usage batch write failed");
                        last_error = Some(error);
                        if attempt < ATTEMPTS {
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                    }
                }
            }
            if let Some(error) = last_error {
                self.retry_at = Some(tokio::time::Instant::now() + RETRY_PAUSE);
                self.bound();
                return Err(error);
            }
            self.queued.drain(..n);
            self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        self.retry_at = None;
        self.stats.queued.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Keeps at most `max_queued` records, dropping the oldest (with an error log).
    fn bound(&mut self) {
        if self.queued.len() > self.max_queued {
            let dropped = self.queued.len() - self.max_queued;
            self.queued.drain(..dropped);
            self.stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::error!(
                dropped,
                bound = self.max_queued,
                "usage records dropped: PostgreSQL refused writes longer than the ledger buffer holds"
            );
        }
        self.stats.queued.store(self.queued.len() as u64, Ordering::Relaxed);
    }

    fn drop_all(&mut self, why: &str) {
        let lost = self.queued.len();
        self.queued.clear();
        self.stats.dropped.fetch_add(lost as u64, Ordering::Relaxed);
        self.stats.queued.store(0, Ordering::Relaxed);
        tracing::error!(lost, "usage records lost: {why}");
    }
}

/// Inserts `records` in one statement, ignoring ids already stored; with `returning`,
/// answers the ids that were new.
async fn insert_batch(
    pool: &Pool,
    records: &[UsageRecord],
    returning: bool,
) -> StoreResult<std::collections::HashSet<String>> {
    let n = records.len();
    let mut ids = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut projects = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut counted = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut prompt = Vec::with_capacity(n);
    let mut completion = Vec::with_capacity(n);
    let mut cost = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut providers = Vec::with_capacity(n);
    let mut cached = Vec::with_capacity(n);
    let mut uncached = Vec::with_capacity(n);
    let mut sources = Vec::with_capacity(n);
    let mut prices = Vec::with_capacity(n);
    let mut ips = Vec::with_capacity(n);
    let mut anonymous = Vec::with_capacity(n);
    for r in records {
        ids.push(r.id.as_str());
        ts.push(r.ts_ms);
        projects.push(r.project_id.as_str());
        keys.push(r.key_id.as_str());
        endpoints.push(r.endpoint.as_str());
        models.push(r.model.as_deref());
        statuses.push(i32::from(r.status));
        counted.push(r.counted);
        requests.push(to_sql_int(r.requests));
        prompt.push(to_sql_int(r.prompt_tokens));
        completion.push(to_sql_int(r.completion_tokens));
        cost.push(to_sql_int(r.cost_micros));
        latency.push(to_sql_int(r.latency_ms));
        providers.push(r.provider.as_str());
        cached.push(to_sql_int(r.cached_tokens));
        uncached.push(to_sql_int(r.uncached_cost_micros));
        sources.push(r.usage_source.as_str());
        prices.push(r.price_version.as_deref());
        ips.push(r.client_ip.as_deref());
        anonymous.push(r.anonymous_id.as_deref());
    }
    let client = pool.get().await.map_err(pool_error)?;
    let statement =
        client.prepare_cached(if returning { INSERT_RETURNING } else { INSERT }).await.map_err(sql_error)?;
    let rows = client
        .query(
            &statement,
            &[
                &ids,
                &ts,
                &projects,
                &keys,
                &endpoints,
                &models,
                &statuses,
                &counted,
                &requests,
                &prompt,
                &completion,
                &cost,
                &latency,
                &providers,
                &cached,
                &uncached,
                &sources,
                &prices,
                &ips,
                &anonymous,
            ],
        )
        .await
        .map_err(sql_error)?;
    rows.iter().map(|row| row.try_get::<_, String>(0).map_err(sql_error)).collect()
}

/// Answers whatever raced a `Close` into the channel: flushes get an error, records
/// are counted and logged as dropped.
fn refuse_after_close(receiver: &mut mpsc::UnboundedReceiver<Message>, stats: &LedgerStats) {
    let mut dropped = 0u64;
    while let Ok(message) = receiver.try_recv() {
        match message {
            Message::Record(_) => dropped += 1,
            Message::Flush(ack) | Message::Close(ack) => {
                let _ = ack.send(Err(PostgresLedger::closed_error()));
            }
        }
    }
    if dropped > 0 {
        stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::error!(dropped, "usage records appended while the ledger closed: dropped");
    }
}
