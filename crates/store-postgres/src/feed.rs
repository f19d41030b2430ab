//! The PostgreSQL ledger in commit order (`tollgate_store::feed`): `usage_ids.seq`,
//! numbered by each batch from the locked counter row `tollgate_ledger_seq`
//! (migration 12), joined to the rows in `usage`; the sinks' positions in
//! `tollgate_event_cursors`.

use async_trait::async_trait;
use tollgate_store::columns::USAGE_COLUMNS;
use tollgate_store::{FeedRecord, LedgerFeed, StoreResult};

use crate::ledger::{PostgresLedger, record_from_row};
use crate::{pool_error, sql_error};

/// How many columns [`USAGE_COLUMNS`] lists (the `seq` column follows them).
const USAGE_COLUMN_COUNT: usize = 22;

#[async_trait]
impl LedgerFeed for PostgresLedger {
    async fn feed_cursor(&self, sink: &str) -> StoreResult<i64> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt("SELECT seq FROM tollgate_event_cursors WHERE sink = $1", &[&sink])
            .await
            .map_err(sql_error)?;
        row.map_or(Ok(0), |row| row.try_get(0).map_err(sql_error))
    }

    /// An id whose row is gone (a month partition dropped by retention before its ids
    /// were deleted) is skipped: the limit applies to joined rows.
    async fn feed_after(&self, after: i64, limit: usize) -> StoreResult<Vec<FeedRecord>> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let columns: Vec<String> = USAGE_COLUMNS.split(", ").map(|c| format!("u.{c}")).collect();
            format!(
                "SELECT {}, i.seq FROM usage_ids i JOIN usage u ON u.ts_ms = i.ts_ms AND u.id = i.id \
                 WHERE i.seq > $1 ORDER BY i.seq LIMIT $2",
                columns.join(", ")
            )
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(&SQL).await.map_err(sql_error)?;
        let rows = client.query(&statement, &[&after, &limit]).await.map_err(sql_error)?;
        rows.iter()
            .map(|row| {
                let seq: i64 = row.try_get(USAGE_COLUMN_COUNT).map_err(sql_error)?;
                Ok(FeedRecord { seq, record: record_from_row(row)? })
            })
            .collect()
    }

    async fn advance_feed_cursor(&self, sink: &str, seq: i64, now_ms: i64) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(
                "INSERT INTO tollgate_event_cursors (sink, seq, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (sink) DO UPDATE SET seq = GREATEST(tollgate_event_cursors.seq, EXCLUDED.seq), \
                 updated_at_ms = EXCLUDED.updated_at_ms",
                &[&sink, &seq, &now_ms],
            )
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    async fn feed_lag(&self, after: i64) -> StoreResult<u64> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client.query_one("SELECT max(seq) FROM usage_ids", &[]).await.map_err(sql_error)?;
        let last: Option<i64> = row.try_get(0).map_err(sql_error)?;
        Ok(u64::try_from(last.unwrap_or(0).saturating_sub(after)).unwrap_or(0))
    }

    /// Only ids whose row is still there: an id left by a month partition that
    /// retention dropped must not hold retention back.
    async fn feed_oldest_after(&self, after: i64) -> StoreResult<Option<i64>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_one(
                "SELECT min(i.ts_ms) FROM usage_ids i JOIN usage u ON u.ts_ms = i.ts_ms AND u.id = i.id \
                 WHERE i.seq > $1",
                &[&after],
            )
            .await
            .map_err(sql_error)?;
        row.try_get(0).map_err(sql_error)
    }
}
