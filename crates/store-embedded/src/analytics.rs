//! The analytics store in SQLite: the `usage_hourly` rollup table, written by the
//! ledger's transactions ([`upsert_rollups`]) and read through the ledger's reader
//! connection; retention deletes in bounded batches through its direct connection.

use std::sync::{LazyLock, PoisonError};

use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Transaction, params, params_from_iter};
use tollgate_analytics::projection::{self, Grain, Kind};
use tollgate_analytics::rollup::day_of;
use tollgate_analytics::store::{self, SqlParam, VALUE_COLUMNS};
use tollgate_analytics::{AnalyticsStore, RollupGroup, RollupKey, RollupQuery, RollupValues, Rollups};
use tollgate_store::StoreResult;

use crate::EmbeddedLedger;
use crate::sql_error;

static UPSERT: LazyLock<String> = LazyLock::new(|| store::upsert_sql(|i| format!("?{}", i + 1)));

/// The upsert into each projection table, with the table's kind and grain.
static PROJECTED: LazyLock<Vec<(String, Kind, Grain)>> = LazyLock::new(|| {
    projection::tables()
        .map(|(t, k, g)| (store::upsert_sql_for(t, k.histogram, |i| format!("?{}", i + 1)), k, g))
        .collect()
});

/// Adds a batch's rollups inside the transaction that inserted its rows: one upsert
/// per distinct group, into the full rollup and into each projection table.
pub(crate) fn upsert_rollups(tx: &Transaction<'_>, rollups: &Rollups<'_>) -> StoreResult<()> {
    if rollups.is_empty() {
        return Ok(());
    }
    upsert_into(tx, &UPSERT, rollups, true)?;
    for (sql, kind, grain) in PROJECTED.iter() {
        upsert_into(tx, sql, &rollups.project(*kind, *grain), kind.histogram)?;
    }
    Ok(())
}

/// One upsert per group; `histogram`: the table has the latency buckets' columns.
fn upsert_into(tx: &Transaction<'_>, sql: &str, rollups: &Rollups<'_>, histogram: bool) -> StoreResult<()> {
    let mut upsert = tx.prepare_cached(sql).map_err(sql_error)?;
    for (key, values) in rollups.iter() {
        let mut args: Vec<Value> = vec![
            Value::Integer(key.hour_ms),
            Value::Text(key.project_id.to_owned()),
            Value::Text(key.key_id.to_owned()),
            Value::Text(key.model.to_owned()),
            Value::Text(key.provider.to_owned()),
            Value::Text(key.endpoint.to_owned()),
            Value::Integer(i64::from(key.status_class)),
            Value::Text(key.cache.as_str().to_owned()),
            Value::Integer(i64::from(key.counted)),
        ];
        let value_count = store::rollup_params(histogram) - args.len();
        args.extend(store::value_params(values).into_iter().take(value_count).map(Value::Integer));
        upsert.execute(params_from_iter(args)).map_err(sql_error)?;
    }
    Ok(())
}

fn to_value(param: SqlParam) -> Value {
    match param {
        SqlParam::Int(n) => Value::Integer(n),
        SqlParam::Text(s) => Value::Text(s),
        SqlParam::Bool(b) => Value::Integer(i64::from(b)),
    }
}

#[async_trait]
impl AnalyticsStore for EmbeddedLedger {
    async fn rollup_groups(&self, query: RollupQuery) -> StoreResult<Vec<RollupGroup>> {
        self.read(move |conn| {
            let sql = query.sql(|i| format!("?{}", i + 1));
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let params = query.params().into_iter().map(to_value);
            let mut rows = stmt.query(params_from_iter(params)).map_err(sql_error)?;
            let dims = query.group_by.len();
            let first = usize::from(query.by_hour) + dims;
            let mut groups = Vec::new();
            let mut ints = [None; VALUE_COLUMNS];
            let count = query.value_column_count();
            while let Some(row) = rows.next().map_err(sql_error)? {
                let hour_ms = if query.by_hour { Some(row.get(0).map_err(sql_error)?) } else { None };
                let mut values = Vec::with_capacity(dims);
                for i in 0..dims {
                    let v: Option<String> = row.get(usize::from(query.by_hour) + i).map_err(sql_error)?;
                    values.push(v.unwrap_or_default());
                }
                for (i, slot) in ints.iter_mut().take(count).enumerate() {
                    *slot = row.get(first + i).map_err(sql_error)?;
                }
                groups.push(RollupGroup::from_columns(hour_ms, values, &ints));
            }
            Ok(groups)
        })
        .await
    }

    async fn rollup_rows(
        &self,
        from_ms: i64,
        to_ms: i64,
        project_id: Option<String>,
    ) -> StoreResult<Vec<(RollupKey, RollupValues)>> {
        self.read(move |conn| {
            let columns = store::rollup_columns();
            let (sql, args) = match project_id {
                Some(p) => (
                    format!(
                        "SELECT {columns} FROM usage_hourly WHERE project_id = ?3 AND hour_ms >= ?1 AND hour_ms < ?2 \
                         ORDER BY hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted"
                    ),
                    vec![Value::Integer(from_ms), Value::Integer(to_ms), Value::Text(p)],
                ),
                None => (
                    format!(
                        "SELECT {columns} FROM usage_hourly WHERE hour_ms >= ?1 AND hour_ms < ?2 \
                         ORDER BY hour_ms, project_id, key_id, model, provider, endpoint, status_class, cache, counted"
                    ),
                    vec![Value::Integer(from_ms), Value::Integer(to_ms)],
                ),
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let mut rows = stmt.query(params_from_iter(args)).map_err(sql_error)?;
            let mut out = Vec::new();
            let mut ints = [None; VALUE_COLUMNS];
            while let Some(row) = rows.next().map_err(sql_error)? {
                let strings: [String; 5] = [
                    row.get(1).map_err(sql_error)?,
                    row.get(2).map_err(sql_error)?,
                    row.get(3).map_err(sql_error)?,
                    row.get(4).map_err(sql_error)?,
                    row.get(5).map_err(sql_error)?,
                ];
                let cache: String = row.get(7).map_err(sql_error)?;
                let counted: i64 = row.get(8).map_err(sql_error)?;
                let key = store::key_from_columns(
                    row.get(0).map_err(sql_error)?,
                    strings,
                    row.get(6).map_err(sql_error)?,
                    &cache,
                    counted != 0,
                )
                .ok_or_else(|| tollgate_store::StoreError::internal(format!("rollup row with cache '{cache}'")))?;
                for (i, slot) in ints.iter_mut().enumerate() {
                    *slot = row.get(9 + i).map_err(sql_error)?;
                }
                out.push((key, RollupGroup::from_columns(None, Vec::new(), &ints).values));
            }
            Ok(out)
        })
        .await
    }

    async fn delete_usage_before(&self, before_ms: i64, batch: usize) -> StoreResult<u64> {
        let direct = self.direct.clone();
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        tokio::task::spawn_blocking(move || {
            let conn = direct.lock().unwrap_or_else(PoisonError::into_inner);
            // Oldest first through the time index, at most `batch` rows per statement:
            // the write lock is held briefly and the ledger writer interleaves.
            let n = conn
                .execute(
                    "DELETE FROM usage WHERE rowid IN \
                     (SELECT rowid FROM usage INDEXED BY usage_ts WHERE ts_ms < ?1 ORDER BY ts_ms LIMIT ?2)",
                    params![before_ms, batch],
                )
                .map_err(sql_error)?;
            Ok(n as u64)
        })
        .await?
    }

    async fn delete_rollups_before(&self, before_ms: i64) -> StoreResult<u64> {
        let direct = self.direct.clone();
        tokio::task::spawn_blocking(move || {
            let conn = direct.lock().unwrap_or_else(PoisonError::into_inner);
            let n = conn.execute("DELETE FROM usage_hourly WHERE hour_ms < ?1", [before_ms]).map_err(sql_error)?;
            conn.execute("DELETE FROM usage_counted WHERE bucket_ms < ?1", [before_ms]).map_err(sql_error)?;
            // The projections go by whole UTC days, so their hours and days agree.
            for (table, _, _) in projection::tables() {
                conn.execute(&format!("DELETE FROM {table} WHERE hour_ms < ?1"), [day_of(before_ms)])
                    .map_err(sql_error)?;
            }
            Ok(n as u64)
        })
        .await?
    }
}
