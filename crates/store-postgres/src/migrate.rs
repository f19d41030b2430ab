//! Versioned schema migrations, applied on open.
//!
//! `tollgate_migrations` records the versions applied. [`migrate`] takes a
//! transaction-scoped advisory lock (so two instances starting at once do not both
//! migrate), applies every missing migration in order and records it, all in one
//! transaction: a failure leaves the database as it was. A migration, once released,
//! is never edited: changes are new files.

use deadpool_postgres::Pool;
use tollgate_store::{StoreError, StoreResult};

use crate::{pool_error, sql_error};

/// Every migration, oldest first: (version, SQL).
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_init.sql")),
    (2, include_str!("../migrations/0002_price_estimated.sql")),
    (3, include_str!("../migrations/0003_project_settings_and_token_lifecycle.sql")),
    (4, include_str!("../migrations/0004_usage_anonymous.sql")),
    (5, include_str!("../migrations/0005_plan_time_zone.sql")),
    (6, include_str!("../migrations/0006_usage_hourly.sql")),
    (7, include_str!("../migrations/0007_usage_upstream_request_id.sql")),
    (8, include_str!("../migrations/0008_rollup_projections.sql")),
    (9, include_str!("../migrations/0009_usage_counted_and_partitions.sql")),
    (10, include_str!("../migrations/0010_leases_and_instances.sql")),
    (11, include_str!("../migrations/0011_alerts.sql")),
    (12, include_str!("../migrations/0012_usage_seq.sql")),
    (13, include_str!("../migrations/0013_semantic_cache.sql")),
    (14, include_str!("../migrations/0014_provider_keys.sql")),
    (15, include_str!("../migrations/0015_rollup_fillfactor.sql")),
    (16, include_str!("../migrations/0016_key_volume.sql")),
];

/// Serialises migrations across instances (an arbitrary constant: "tollgate" in hex).
const LOCK_ID: i64 = 0x746f_6c6c_6761_7465;

pub(crate) async fn migrate(pool: &Pool) -> StoreResult<()> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(sql_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID]).await.map_err(sql_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tollgate_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(sql_error)?;
    let applied: Option<i32> =
        tx.query_one("SELECT max(version) FROM tollgate_migrations", &[]).await.map_err(sql_error)?.get(0);
    let applied = applied.unwrap_or(0);
    let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if applied > latest {
        return Err(StoreError::internal(format!(
            "database schema version {applied} is newer than this build supports ({latest}): \
             refusing to run an older tollgate against it"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > applied) {
        tx.batch_execute(sql).await.map_err(sql_error)?;
        tx.execute("INSERT INTO tollgate_migrations (version) VALUES ($1)", &[version]).await.map_err(sql_error)?;
        tracing::info!(version, "applied PostgreSQL schema migration");
    }
    tx.commit().await.map_err(sql_error)
}
