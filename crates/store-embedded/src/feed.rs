//! The SQLite ledger in commit order (`tollgate_store::feed`): `usage.seq`, numbered
//! by the ledger's transactions from `ledger_seq` (migration 11), and the sinks'
//! positions in `event_cursors`.

use std::sync::PoisonError;

use async_trait::async_trait;
use rusqlite::params;
use tollgate_store::columns::USAGE_COLUMNS;
use tollgate_store::{FeedRecord, LedgerFeed, StoreResult};

use crate::ledger::{EmbeddedLedger, row_from_sql};
use crate::sql_error;

#[async_trait]
impl LedgerFeed for EmbeddedLedger {
    async fn feed_cursor(&self, sink: &str) -> StoreResult<i64> {
        let sink = sink.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT seq FROM event_cursors WHERE sink = ?1").map_err(sql_error)?;
            let mut rows = stmt.query([sink]).map_err(sql_error)?;
            match rows.next().map_err(sql_error)? {
                Some(row) => row.get(0).map_err(sql_error),
                None => Ok(0),
            }
        })
        .await
    }

    async fn feed_after(&self, after: i64, limit: usize) -> StoreResult<Vec<FeedRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let sql = format!(
                "SELECT {USAGE_COLUMNS}, seq FROM usage INDEXED BY usage_seq WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let rows = stmt
                .query_map(params![after, limit], |row| {
                    let seq: i64 = row.get(USAGE_COLUMN_COUNT)?;
                    Ok((seq, row_from_sql(row)?))
                })
                .map_err(sql_error)?;
            rows.map(|row| {
                let (seq, usage) = row.map_err(sql_error)?;
                Ok(FeedRecord { seq, record: usage.into_record()? })
            })
            .collect()
        })
        .await
    }

    async fn advance_feed_cursor(&self, sink: &str, seq: i64, now_ms: i64) -> StoreResult<()> {
        let (sink, direct) = (sink.to_owned(), self.direct.clone());
        tokio::task::spawn_blocking(move || {
            let conn = direct.lock().unwrap_or_else(PoisonError::into_inner);
            conn.execute(
                "INSERT INTO event_cursors (sink, seq, updated_at_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (sink) DO UPDATE SET seq = MAX(seq, excluded.seq), updated_at_ms = excluded.updated_at_ms",
                params![sink, seq, now_ms],
            )
            .map_err(sql_error)?;
            Ok(())
        })
        .await?
    }

    async fn feed_lag(&self, after: i64) -> StoreResult<u64> {
        self.read(move |conn| {
            let last: Option<i64> =
                conn.query_row("SELECT max(seq) FROM usage", [], |row| row.get(0)).map_err(sql_error)?;
            Ok(u64::try_from(last.unwrap_or(0).saturating_sub(after)).unwrap_or(0))
        })
        .await
    }

    async fn feed_oldest_after(&self, after: i64) -> StoreResult<Option<i64>> {
        self.read(move |conn| {
            conn.query_row("SELECT min(ts_ms) FROM usage INDEXED BY usage_seq WHERE seq > ?1", [after], |row| {
                row.get(0)
            })
            .map_err(sql_error)
        })
        .await
    }
}

/// How many columns [`USAGE_COLUMNS`] lists (the `seq` column follows them).
const USAGE_COLUMN_COUNT: usize = 22;
