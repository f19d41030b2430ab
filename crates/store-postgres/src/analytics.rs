//! The analytics store in PostgreSQL: the `usage_hourly` rollup table, written by
//! the ledger's batch transactions ([`upsert_rollups`], one `UNNEST` statement per
//! batch) and read with the shared grouped query; retention deletes ledger rows in
//! bounded batches.

use std::sync::LazyLock;

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;
use tollgate_analytics::projection::{self, Grain, Kind};
use tollgate_analytics::rollup::day_of;
use tollgate_analytics::store::{self, ROLLUP_KEY_COLUMNS, SqlParam, VALUE_COLUMNS};
use tollgate_analytics::{AnalyticsStore, RollupGroup, RollupKey, RollupQuery, RollupValues, Rollups};
use tollgate_store::{StoreError, StoreResult};

use crate::{PostgresLedger, pool_error, sql_error};

/// The upsert of every group of a batch: one array per column. Groups are distinct
/// within a batch, so no row is touched twice by the statement.
static UPSERT: LazyLock<String> = LazyLock::new(|| unnest_upsert("usage_hourly", true));

/// The same upsert into each projection table, with the table's kind and grain.
static PROJECTED: LazyLock<Vec<(String, Kind, Grain)>> =
    LazyLock::new(|| projection::tables().map(|(t, k, g)| (unnest_upsert(t, k.histogram), k, g)).collect());

/// The batch upsert into `table`, one array per column (the latency buckets' only
/// when it has them: `histogram`).
fn unnest_upsert(table: &str, histogram: bool) -> String {
    let mut arrays = vec![
        "$1::bigint[]".to_owned(),
        "$2::text[]".to_owned(),
        "$3::text[]".to_owned(),
        "$4::text[]".to_owned(),
        "$5::text[]".to_owned(),
        "$6::text[]".to_owned(),
        "$7::int[]".to_owned(),
        "$8::text[]".to_owned(),
        "$9::bool[]".to_owned(),
    ];
    for i in 0..store::rollup_params(histogram) - 9 {
        arrays.push(format!("${}::bigint[]", 10 + i));
    }
    let single = store::upsert_sql_for(table, histogram, |i| format!("${}", i + 1));
    // Reuse the shared ON CONFLICT clause; replace VALUES (...) by the arrays.
    let conflict = single.find(" ON CONFLICT").map_or("", |at| &single[at..]).to_owned();
    let columns = store::rollup_columns_for(histogram);
    format!("INSERT INTO {table} ({columns}) SELECT * FROM UNNEST({}){conflict}", arrays.join(", "))
}

/// Adds a batch's rollups inside the transaction that inserted its rows.
pub(crate) async fn upsert_rollups(tx: &Transaction<'_>, rollups: &Rollups<'_>) -> StoreResult<()> {
    if rollups.is_empty() {
        return Ok(());
    }
    upsert_into(tx, &UPSERT, rollups, true).await?;
    for (sql, kind, grain) in PROJECTED.iter() {
        upsert_into(tx, sql, &rollups.project(*kind, *grain), kind.histogram).await?;
    }
    Ok(())
}

async fn upsert_into(tx: &Transaction<'_>, sql: &str, rollups: &Rollups<'_>, histogram: bool) -> StoreResult<()> {
    let n = rollups.len();
    let mut hours = Vec::with_capacity(n);
    let mut projects = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut providers = Vec::with_capacity(n);
    let mut endpoints = Vec::with_capacity(n);
    let mut classes = Vec::with_capacity(n);
    let mut caches = Vec::with_capacity(n);
    let mut counted = Vec::with_capacity(n);
    let mut values: Vec<Vec<i64>> = (0..store::rollup_params(histogram) - 9).map(|_| Vec::with_capacity(n)).collect();
    // A fixed order, so concurrent writers lock shared rows alike (no deadlock).
    for (key, v) in rollups.sorted() {
        hours.push(key.hour_ms);
        projects.push(key.project_id);
        keys.push(key.key_id);
        models.push(key.model);
        providers.push(key.provider);
        endpoints.push(key.endpoint);
        classes.push(i32::from(key.status_class));
        caches.push(key.cache.as_str());
        counted.push(key.counted);
        for (column, value) in values.iter_mut().zip(store::value_params(v)) {
            column.push(value);
        }
    }
    let mut params: Vec<&(dyn ToSql + Sync)> =
        vec![&hours, &projects, &keys, &models, &providers, &endpoints, &classes, &caches, &counted];
    for column in &values {
        params.push(column);
    }
    let statement = tx.prepare_cached(sql).await.map_err(sql_error)?;
    tx.execute(&statement, &params).await.map_err(sql_error)?;
    Ok(())
}

fn boxed(param: SqlParam) -> Box<dyn ToSql + Sync + Send> {
    match param {
        SqlParam::Int(n) => Box::new(n),
        SqlParam::Text(s) => Box::new(s),
        SqlParam::Bool(b) => Box::new(b),
    }
}

fn ints(row: &tokio_postgres::Row, first: usize, count: usize) -> StoreResult<[Option<i64>; VALUE_COLUMNS]> {
    let mut out = [None; VALUE_COLUMNS];
    for (i, slot) in out.iter_mut().take(count).enumerate() {
        *slot = row.try_get(first + i).map_err(sql_error)?;
    }
    Ok(out)
}

#[async_trait]
impl AnalyticsStore for PostgresLedger {
    async fn rollup_groups(&self, query: RollupQuery) -> StoreResult<Vec<RollupGroup>> {
        // Read ungrouped where each row is its own group (`RollupQuery::sql_ungrouped`):
        // then only sorted here, the order the grouped statement has.
        let placeholder = |i: usize| format!("${}", i + 1);
        let (sql, ungrouped) = match query.sql_ungrouped(placeholder) {
            Some(sql) => (sql, true),
            None => (query.sql(placeholder), false),
        };
        let args: Vec<Box<dyn ToSql + Sync + Send>> = query.params().into_iter().map(boxed).collect();
        let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|a| &**a as &(dyn ToSql + Sync)).collect();
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(&sql).await.map_err(sql_error)?;
        let rows = client.query(&statement, &params).await.map_err(sql_error)?;
        let dims = query.group_by.len();
        let first = usize::from(query.by_hour) + dims;
        let group = |row: &tokio_postgres::Row| -> StoreResult<RollupGroup> {
            let hour_ms = if query.by_hour { Some(row.try_get(0).map_err(sql_error)?) } else { None };
            let mut values = Vec::with_capacity(dims);
            for i in 0..dims {
                let v: Option<String> = row.try_get(usize::from(query.by_hour) + i).map_err(sql_error)?;
                values.push(v.unwrap_or_default());
            }
            Ok(RollupGroup::from_columns(hour_ms, values, &ints(row, first, query.value_column_count())?))
        };
        let groups = rows.iter().map(group).collect::<StoreResult<Vec<_>>>()?;
        Ok(if ungrouped { store::sort_groups(groups) } else { groups })
    }

    async fn rollup_rows(
        &self,
        from_ms: i64,
        to_ms: i64,
        project_id: Option<String>,
    ) -> StoreResult<Vec<(RollupKey, RollupValues)>> {
        let columns = store::rollup_columns();
        let order = format!("ORDER BY hour_ms, {ROLLUP_KEY_COLUMNS}");
        let client = self.pool.get().await.map_err(pool_error)?;
        let rows = match project_id {
            Some(p) => {
                let sql = format!(
                    "SELECT {columns} FROM usage_hourly WHERE project_id = $3 AND hour_ms >= $1 AND hour_ms < $2 {order}"
                );
                client.query(&sql, &[&from_ms, &to_ms, &p]).await
            }
            None => {
                let sql = format!("SELECT {columns} FROM usage_hourly WHERE hour_ms >= $1 AND hour_ms < $2 {order}");
                client.query(&sql, &[&from_ms, &to_ms]).await
            }
        }
        .map_err(sql_error)?;
        rows.iter()
            .map(|row| {
                let get = |i: usize| row.try_get::<_, String>(i).map_err(sql_error);
                let strings = [get(1)?, get(2)?, get(3)?, get(4)?, get(5)?];
                let cache = get(7)?;
                let class: i32 = row.try_get(6).map_err(sql_error)?;
                let key = store::key_from_columns(
                    row.try_get(0).map_err(sql_error)?,
                    strings,
                    i64::from(class),
                    &cache,
                    row.try_get(8).map_err(sql_error)?,
                )
                .ok_or_else(|| StoreError::internal(format!("rollup row with cache '{cache}'")))?;
                Ok((key, RollupGroup::from_columns(None, Vec::new(), &ints(row, 9, VALUE_COLUMNS)?).values))
            })
            .collect()
    }

    async fn delete_usage_before(&self, before_ms: i64, batch: usize) -> StoreResult<u64> {
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_error)?;
        // Whole months before the cutoff: their partitions are dropped (counted first).
        let mut deleted = 0u64;
        let parts = client
            .query(
                "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
                 JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'usage'::regclass",
                &[],
            )
            .await
            .map_err(sql_error)?;
        for part in &parts {
            let name: String = part.try_get(0).map_err(sql_error)?;
            let bound: Option<String> = part.try_get(1).map_err(sql_error)?;
            let Some(end) = bound.as_deref().and_then(partition_end) else { continue };
            if end <= before_ms {
                let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                let row = client.query_one(&format!("SELECT count(*) FROM {quoted}"), &[]).await.map_err(sql_error)?;
                let n: i64 = row.try_get(0).map_err(sql_error)?;
                client.execute(&format!("DROP TABLE {quoted}"), &[]).await.map_err(sql_error)?;
                deleted += u64::try_from(n).unwrap_or(0);
            }
        }
        // The rest oldest first, at most `batch` rows per statement, and their ids.
        let rows = client
            .execute(
                "DELETE FROM usage WHERE (ts_ms, id) IN \
                 (SELECT ts_ms, id FROM usage WHERE ts_ms < $1 ORDER BY ts_ms, id LIMIT $2)",
                &[&before_ms, &limit],
            )
            .await
            .map_err(sql_error)?;
        let ids = client
            .execute(
                "DELETE FROM usage_ids WHERE (ts_ms, id) IN \
                 (SELECT ts_ms, id FROM usage_ids WHERE ts_ms < $1 ORDER BY ts_ms, id LIMIT $2)",
                &[&before_ms, &limit],
            )
            .await
            .map_err(sql_error)?;
        // Until both are done, answer at least what the ids took (a dropped month
        // leaves its ids to delete in batches).
        Ok((deleted + rows).max(ids))
    }

    async fn delete_rollups_before(&self, before_ms: i64) -> StoreResult<u64> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let n =
            client.execute("DELETE FROM usage_hourly WHERE hour_ms < $1", &[&before_ms]).await.map_err(sql_error)?;
        client.execute("DELETE FROM usage_counted WHERE bucket_ms < $1", &[&before_ms]).await.map_err(sql_error)?;
        // The projections go by whole UTC days, so their hours and days agree.
        let day = day_of(before_ms);
        for (table, _, _) in projection::tables() {
            client.execute(&format!("DELETE FROM {table} WHERE hour_ms < $1"), &[&day]).await.map_err(sql_error)?;
        }
        Ok(n)
    }
}

/// The upper bound of a month partition, from its `FOR VALUES FROM ('a') TO ('b')`.
fn partition_end(bound: &str) -> Option<i64> {
    let to = &bound[bound.find(" TO (")? + 5..];
    to.trim_start_matches('\'').split(|c: char| !c.is_ascii_digit() && c != '-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_partition_bound_reads_its_end() {
        let bound = "FOR VALUES FROM ('1698796800000') TO ('1701388800000')";
        assert_eq!(super::partition_end(bound), Some(1_701_388_800_000));
        assert_eq!(super::partition_end("FOR VALUES FROM (1) TO (2)"), Some(2));
        assert_eq!(super::partition_end("DEFAULT"), None);
    }
}
