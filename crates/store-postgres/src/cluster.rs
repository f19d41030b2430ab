//! What many instances share besides the catalog and the ledger: leases (one holder
//! of a named job at a time, taken over when the holder stops renewing) and the
//! registry of running instances. Both read PostgreSQL's clock, never an instance's,
//! so skewed clocks cannot give a lease to two holders.

use std::time::Duration;

use deadpool_postgres::Pool;
use tollgate_store::StoreResult;

use crate::{pool_error, sql_error};

/// PostgreSQL's "now" in Unix milliseconds, as SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// One holder's handle on a named lease in `tollgate_leases`.
#[derive(Clone)]
pub struct PgLease {
    pool: Pool,
    name: String,
    holder: String,
    ttl: Duration,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease").field("name", &self.name).field("holder", &self.holder).finish_non_exhaustive()
    }
}

impl PgLease {
    /// The lease `name`, held as `holder` (unique per instance) for `ttl` after each
    /// renewal.
    pub fn new(pool: Pool, name: impl Into<String>, holder: impl Into<String>, ttl: Duration) -> Self {
        Self { pool, name: name.into(), holder: holder.into(), ttl }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes the lease if it is free or expired, or renews it if this holder has it:
    /// one statement, so two instances never both get it. True while this holder has
    /// it.
    pub async fn acquire_or_renew(&self) -> StoreResult<bool> {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let client = self.pool.get().await.map_err(pool_error)?;
        let sql = format!(
            "INSERT INTO tollgate_leases (name, holder, expires_at_ms) VALUES ($1, $2, {NOW_MS} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE tollgate_leases.holder = excluded.holder OR tollgate_leases.expires_at_ms < {NOW_MS} \
             RETURNING holder"
        );
        let rows = client.query(&sql, &[&self.name, &self.holder, &ttl_ms]).await.map_err(sql_error)?;
        Ok(!rows.is_empty())
    }

    /// Gives the lease up if this holder has it, so another takes it at once.
    pub async fn release(&self) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute("DELETE FROM tollgate_leases WHERE name = $1 AND holder = $2", &[&self.name, &self.holder])
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    /// Who holds the lease now, if anyone (an expired one counts as free).
    pub async fn current_holder(&self) -> StoreResult<Option<String>> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let sql = format!("SELECT holder FROM tollgate_leases WHERE name = $1 AND expires_at_ms >= {NOW_MS}");
        let row = client.query_opt(&sql, &[&self.name]).await.map_err(sql_error)?;
        Ok(row.map(|r| r.get(0)))
    }
}

/// A running instance, as it registered itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstanceInfo {
    pub id: String,
    pub version: String,
    pub hostname: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
}

/// The registry of running instances (`tollgate_instances`).
#[derive(Clone)]
pub struct InstanceRegistry {
    pool: Pool,
}

impl std::fmt::Debug for InstanceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstanceRegistry")
    }
}

impl InstanceRegistry {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Registers `id` (or refreshes it): its version, host and start, seen now.
    pub async fn heartbeat(&self, id: &str, version: &str, hostname: &str, started_at_ms: i64) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let sql = format!(
            "INSERT INTO tollgate_instances (id, version, hostname, started_at_ms, last_seen_ms) \
             VALUES ($1, $2, $3, $4, {NOW_MS}) ON CONFLICT (id) DO UPDATE SET last_seen_ms = {NOW_MS}, \
             version = excluded.version, hostname = excluded.hostname"
        );
        client.execute(&sql, &[&id, &version, &hostname, &started_at_ms]).await.map_err(sql_error)?;
        Ok(())
    }

    /// The instances seen within `alive`, oldest first; rows older than a day are
    /// removed on the way (instances that died without deregistering).
    pub async fn list(&self, alive: Duration) -> StoreResult<Vec<InstanceInfo>> {
        let alive_ms = i64::try_from(alive.as_millis()).unwrap_or(i64::MAX);
        let client = self.pool.get().await.map_err(pool_error)?;
        client
            .execute(&format!("DELETE FROM tollgate_instances WHERE last_seen_ms < {NOW_MS} - 86400000"), &[])
            .await
            .map_err(sql_error)?;
        let sql = format!(
            "SELECT id, version, hostname, started_at_ms, last_seen_ms FROM tollgate_instances \
             WHERE last_seen_ms >= {NOW_MS} - $1 ORDER BY started_at_ms, id"
        );
        let rows = client.query(&sql, &[&alive_ms]).await.map_err(sql_error)?;
        Ok(rows
            .iter()
            .map(|r| InstanceInfo {
                id: r.get(0),
                version: r.get(1),
                hostname: r.get(2),
                started_at_ms: r.get(3),
                last_seen_ms: r.get(4),
            })
            .collect())
    }

    /// Removes `id` (a graceful shutdown).
    pub async fn deregister(&self, id: &str) -> StoreResult<()> {
        let client = self.pool.get().await.map_err(pool_error)?;
        client.execute("DELETE FROM tollgate_instances WHERE id = $1", &[&id]).await.map_err(sql_error)?;
        Ok(())
    }
}
