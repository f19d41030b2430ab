//! The usage ledger in PostgreSQL: its SQL, and the shared batch writer as a task.
//!
//! `append` hands the record to a [`BatchWriter`] (see `tollgate_store::batch` for
//! the queue, batching, retries and flush/close semantics) running as a task on the
//! current runtime. It writes the records with one statement per [`MAX_BATCH`] rows:
//! the ids into `usage_ids` (`ON CONFLICT (id) DO NOTHING`), and the rows whose id was
//! new into `usage`, partitioned by month (made on demand, `tollgate_usage_partition`),
//! in one statement over `UNNEST` arrays (twenty-two array parameters whatever the batch
//! size, so one prepared statement; replays are ignored and the first copy wins).
//!
//! The same transaction adds the rows that were new (the `RETURNING` ids: a replay
//! adds nothing) to the hourly rollups, one `UNNEST` upsert for every group of the
//! batch (see `crate::analytics`), so the rollups never drift from the ledger.
//!
//! The policy is this backend's: two attempts per write; when PostgreSQL refuses
//! writes, the records stay queued in memory up to the configured bound and are
//! retried every [`RETRY_PAUSE`], and a flush in between is answered at once with
//! `Unavailable` (responses that wait on a flush, with `durability = "sync"`, must not
//! wait on an outage); beyond the bound the oldest are dropped, counted in
//! [`LedgerStats::dropped`] and logged. Nothing is dropped silently.

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};
use tollgate_analytics::Rollups;
use tollgate_core::{UsageQuery, UsageRecord};
use tollgate_store::CountedSums;
use tollgate_store::batch::{self, BatchPolicy, BatchSink, BatchWriter, LedgerStats, WriterHome};
use tollgate_store::columns::{USAGE_COLUMNS, UsageRow, to_sql_int};
use tollgate_store::totals::TotalRow;
use tollgate_store::{Ledger, StoreResult, TOTALS_PAGE, TotalsPages, TotalsQuery};

use crate::{pool_error, sql_error};

/// Rows per statement and messages drained into one write at most.
pub const MAX_BATCH: usize = 1_000;
/// How long the writer waits before retrying records a failed write left queued.
pub const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The insert of a batch, answering the ids that were new. The ids go first into
/// `usage_ids` (its primary key ignores replays; the partitioned `usage` cannot hold a
/// unique index without the month), and only the rows whose id was new into `usage`,
/// in one statement. The batch holds each id once (the first copy).
static INSERT_RETURNING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH fresh AS (INSERT INTO usage_ids (id, ts_ms, seq) \
         SELECT b.id, b.ts_ms, $23::bigint + b.n FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS b (id, ts_ms, n) \
         ON CONFLICT (id) DO NOTHING RETURNING id) \
         INSERT INTO usage ({USAGE_COLUMNS}) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], \
         $8::bool[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], \
         $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::text[], $20::text[], $21::bool[], \
         $22::text[]) AS batch ({USAGE_COLUMNS}) WHERE batch.id IN (SELECT id FROM fresh) RETURNING id"
    )
});

/// The writer's policy for a buffer of `max_queued` records.
fn policy(max_queued: usize) -> BatchPolicy {
    BatchPolicy {
        database: "PostgreSQL",
        max_batch: MAX_BATCH,
        rows_per_write: MAX_BATCH,
        attempts: 2,
        retry_pause: RETRY_PAUSE,
        max_retained: max_queued,
        // Back-pressure at half the buffer: the other half is headroom for the
        // requests already in flight, so their records are not dropped.
        queue_capacity: (max_queued / 2).max(1),
        fail_fast_during_outage: true,
    }
}

/// The PostgreSQL usage ledger. Obtain it from
/// [`PostgresStore::ledger`](crate::PostgresStore::ledger).
pub struct PostgresLedger {
    pub(crate) pool: Pool,
    writer: BatchWriter,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger").field("stats", self.writer.stats()).finish_non_exhaustive()
    }
}

/// The writer task's end: the pool.
struct PostgresSink {
    pool: Pool,
}

impl BatchSink for PostgresSink {
    async fn write(&mut self, records: &[UsageRecord]) -> StoreResult<()> {
        insert_batch(&self.pool, records).await.map(drop)
    }
}

/// Column `index` of a row, read by the driver.
fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> StoreResult<T> {
    row.try_get(index).map_err(sql_error)
}

pub(crate) fn record_from_row(row: &Row) -> StoreResult<UsageRecord> {
    let usage = UsageRow {
        id: column(row, 0)?,
        ts_ms: column(row, 1)?,
        project_id: column(row, 2)?,
        key_id: column(row, 3)?,
        endpoint: column(row, 4)?,
        model: column(row, 5)?,
        status: i64::from(column::<i32>(row, 6)?),
        counted: column(row, 7)?,
        requests: column(row, 8)?,
        prompt_tokens: column(row, 9)?,
        completion_tokens: column(row, 10)?,
        cost_micros: column(row, 11)?,
        latency_ms: column(row, 12)?,
        provider: column(row, 13)?,
        cached_tokens: column(row, 14)?,
        uncached_cost_micros: column(row, 15)?,
        usage_source: column(row, 16)?,
        price_version: column(row, 17)?,
        client_ip: column(row, 18)?,
        anonymous_id: column(row, 19)?,
        price_estimated: column(row, 20)?,
        upstream_request_id: column(row, 21)?,
    };
    Ok(usage.into_record()?)
}

impl PostgresLedger {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(pool: Pool, max_queued: usize) -> StoreResult<Self> {
        let sink = PostgresSink { pool: pool.clone() };
        let writer = BatchWriter::start(sink, policy(max_queued), WriterHome::Task)?;
        Ok(Self { pool, writer })
    }

    pub fn stats(&self) -> &LedgerStats {
        self.writer.stats()
    }
}

#[async_trait]
impl Ledger for PostgresLedger {
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

    async fn append_new(&self, records: Vec<UsageRecord>) -> StoreResult<Vec<bool>> {
        if self.writer.is_closed() {
            return Err(batch::closed_error());
        }
        let mut fresh = Vec::with_capacity(records.len());
        for chunk in records.chunks(MAX_BATCH) {
            let inserted = insert_batch(&self.pool, chunk).await?;
            // Within one call the first copy of an id is the one stored.
            let mut seen = HashSet::new();
            fresh.extend(chunk.iter().map(|r| inserted.contains(r.id.as_str()) && seen.insert(r.id.as_str())));
        }
        Ok(fresh)
    }

    async fn flush(&self) -> StoreResult<()> {
        self.writer.flush().await
    }

    async fn query(&self, query: UsageQuery) -> StoreResult<Vec<UsageRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Only the filters asked for, so each combination gets a plan using its index.
        let mut sql = format!("SELECT {USAGE_COLUMNS} FROM usage WHERE TRUE");
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
            .query(&format!("SELECT {USAGE_COLUMNS} FROM usage WHERE ts_ms >= $1 ORDER BY ts_ms, id"), &[&since_ms])
            .await
            .map_err(sql_error)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn usage_totals(&self, query: TotalsQuery) -> StoreResult<TotalsPages> {
        let (pages, rx) = tokio::sync::mpsc::channel(1);
        let pool = self.pool.clone();
        // A cursor (portal) fetched a page at a time, in a task; a full channel waits
        // for the consumer, so neither side holds more than a page or two.
        tokio::spawn(async move {
            if let Err(error) = send_totals(&pool, &query, &pages).await {
                let _ = pages.send(Err(error)).await;
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
        let (after_ts, after_id) = after.unwrap_or((since_ms - 1, String::new()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_error)?;
        let sql = format!(
            "SELECT {USAGE_COLUMNS} FROM usage \
             WHERE project_id = $1 AND anonymous_id = $2 AND ts_ms >= $3 AND (ts_ms, id) > ($4, $5) AND counted \
             ORDER BY ts_ms, id LIMIT $6"
        );
        let statement = client.prepare_cached(&sql).await.map_err(sql_error)?;
        let rows = client
            .query(&statement, &[&project_id, &anonymous_id, &since_ms, &after_ts, &after_id, &limit])
            .await
            .map_err(sql_error)?;
        rows.iter().map(record_from_row).collect()
    }

    async fn close(&self) -> StoreResult<()> {
        self.writer.close().await
    }
}

/// Runs the totals statement through a portal and sends its rows in pages of
/// [`TOTALS_PAGE`]; stops early (without error) when the receiver is gone.
async fn send_totals(
    pool: &Pool,
    query: &TotalsQuery,
    pages: &tokio::sync::mpsc::Sender<StoreResult<Vec<UsageRecord>>>,
) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(sql_error)?;
    let sql = query.sql(|i| format!("${}", i + 1));
    let statement = tx.prepare(&sql).await.map_err(sql_error)?;
    let params = query.params();
    let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
    let portal = tx.bind(&statement, &params).await.map_err(sql_error)?;
    let page_rows = i32::try_from(TOTALS_PAGE).unwrap_or(i32::MAX);
    loop {
        let rows = tx.query_portal(&portal, page_rows).await.map_err(sql_error)?;
        let last = rows.len() < TOTALS_PAGE;
        let page = rows.iter().map(total_from_row).collect::<StoreResult<Vec<_>>>()?;
        if !page.is_empty() && pages.send(Ok(page)).await.is_err() {
            return Ok(());
        }
        if last {
            break;
        }
    }
    tx.commit().await.map_err(sql_error)
}

fn total_from_row(row: &Row) -> StoreResult<UsageRecord> {
    let total = TotalRow {
        bucket_ms: column(row, 0)?,
        project_id: column(row, 1)?,
        key_id: column(row, 2)?,
        provider: column(row, 3)?,
        model: column(row, 4)?,
        endpoint: column(row, 5)?,
        client_ip: column(row, 6)?,
        anonymous_id: column(row, 7)?,
        requests: column(row, 8)?,
        prompt_tokens: column(row, 9)?,
        completion_tokens: column(row, 10)?,
        cost_micros: column(row, 11)?,
    };
    Ok(total.into_record()?)
}

/// Inserts `records` in one statement, ignoring ids already stored, and adds the new
/// ones to the hourly rollups in the same transaction (one statement for every
/// group of the batch); answers the ids that were new.
async fn insert_batch(pool: &Pool, all: &[UsageRecord]) -> StoreResult<HashSet<String>> {
    // The first copy of each id (a later copy in the same batch is a replay).
    let mut first = HashSet::with_capacity(all.len());
    let records: Vec<&UsageRecord> = all.iter().filter(|r| first.insert(r.id.as_str())).collect();
    // The months the batch falls in: their partitions are made first if missing.
    let mut months: Vec<i64> = records.iter().map(|r| tollgate_core::calendar::month_start(r.ts_ms)).collect();
    months.sort_unstable();
    months.dedup();
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
    let mut estimated = Vec::with_capacity(n);
    let mut upstream_ids = Vec::with_capacity(n);
    for r in &records {
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
        estimated.push(r.price_estimated);
        upstream_ids.push(r.upstream_request_id.as_deref());
    }
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(sql_error)?;
    let partitions = tx.prepare_cached("SELECT tollgate_usage_partition($1::bigint[])").await.map_err(sql_error)?;
    tx.execute(&partitions, &[&months]).await.map_err(sql_error)?;
    // The batch's commit-order numbers (`usage_ids.seq`, see `tollgate_store::feed`):
    // taken last before the rows, since the counter row stays locked until the commit
    // and the next batch of any instance waits for it here.
    let numbers = tx
        .prepare_cached("UPDATE tollgate_ledger_seq SET next = next + $1 WHERE id = 1 RETURNING next - $1 - 1")
        .await
        .map_err(sql_error)?;
    let taken = i64::try_from(n).unwrap_or(i64::MAX);
    let before: i64 = tx.query_one(&numbers, &[&taken]).await.map_err(sql_error)?.try_get(0).map_err(sql_error)?;
    let statement = tx.prepare_cached(&INSERT_RETURNING).await.map_err(sql_error)?;
    let rows = tx
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
                &estimated,
                &upstream_ids,
                &before,
            ],
        )
        .await
        .map_err(sql_error)?;
    let inserted: HashSet<String> =
        rows.iter().map(|row| row.try_get::<_, String>(0).map_err(sql_error)).collect::<StoreResult<_>>()?;
    // Within one statement the first copy of an id is the one stored.
    let mut rollups = Rollups::new();
    let mut counted = CountedSums::default();
    let mut seen = HashSet::new();
    for r in records {
        if inserted.contains(r.id.as_str()) && seen.insert(r.id.as_str()) {
            rollups.add(r);
            counted.add(r);
        }
    }
    crate::analytics::upsert_rollups(&tx, &rollups).await?;
    upsert_counted(&tx, &counted).await?;
    tx.commit().await.map_err(sql_error)?;
    Ok(inserted)
}

/// Adds a batch's counted sums to `usage_counted` (the counter rebuild reads them): one
/// `UNNEST` statement; the groups are distinct, so no row is touched twice.
async fn upsert_counted(tx: &deadpool_postgres::Transaction<'_>, counted: &CountedSums<'_>) -> StoreResult<()> {
    use tollgate_store::totals::{COUNTED_COLUMNS, COUNTED_ON_CONFLICT};
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO usage_counted ({COUNTED_COLUMNS}) SELECT * FROM UNNEST($1::bigint[], $2::text[], \
             $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[], \
             $11::bigint[], $12::bigint[]){COUNTED_ON_CONFLICT}"
        )
    });
    if counted.is_empty() {
        return Ok(());
    }
    let n = counted.len();
    let mut buckets = Vec::with_capacity(n);
    let mut text: [Vec<&str>; 7] = Default::default();
    let mut sums: [Vec<i64>; 4] = Default::default();
    for (k, values) in counted.iter() {
        buckets.push(k.bucket_ms);
        for (column, v) in
            text.iter_mut().zip([k.project_id, k.key_id, k.provider, k.model, k.endpoint, k.client_ip, k.anonymous_id])
        {
            column.push(v);
        }
        for (column, v) in sums.iter_mut().zip(values) {
            column.push(v);
        }
    }
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&buckets];
    for column in &text {
        params.push(column);
    }
    for column in &sums {
        params.push(column);
    }
    let statement = tx.prepare_cached(&SQL).await.map_err(sql_error)?;
    tx.execute(&statement, &params).await.map_err(sql_error)?;
    Ok(())
}
