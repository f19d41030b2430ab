//! The semantic cache's durable rows ([`tollgate_cache::semantic::SemanticStore`]):
//! written by the instance that answered the miss, read by every instance at start
//! and on each catch-up. Each write also deletes up to [`PRUNE_BATCH`] expired rows,
//! so the table holds about what is still live (entries expire with their project's
//! TTL, at most 30 days).

use deadpool_postgres::Pool;
use tollgate_cache::semantic::{SemanticRow, SemanticStore};
use tollgate_cache::{CacheError, CacheKey};

use crate::{pool_error, sql_error};

/// Expired rows deleted with each write.
pub const PRUNE_BATCH: i64 = 100;

/// PostgreSQL's clock in Unix ms, in SQL.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::BIGINT";

#[derive(Clone)]
pub struct PostgresSemantic {
    pool: Pool,
}

impl std::fmt::Debug for PostgresSemantic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSemantic").finish_non_exhaustive()
    }
}

fn cache_error(e: impl std::fmt::Display) -> CacheError {
    CacheError(e.to_string())
}

fn key_of(bytes: &[u8]) -> Option<CacheKey> {
    <[u8; 32]>::try_from(bytes).ok().map(CacheKey)
}

impl PostgresSemantic {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    /// Rows in the table (tests).
    pub async fn count(&self) -> Result<i64, CacheError> {
        let client = self.pool.get().await.map_err(|e| cache_error(pool_error(e)))?;
        let row = client
            .query_one("SELECT count(*) FROM tollgate_semantic_cache", &[])
            .await
            .map_err(|e| cache_error(sql_error(e)))?;
        Ok(row.get(0))
    }
}

#[async_trait::async_trait]
impl SemanticStore for PostgresSemantic {
    async fn insert(&self, row: &SemanticRow) -> Result<(), CacheError> {
        let client = self.pool.get().await.map_err(|e| cache_error(pool_error(e)))?;
        let sql = format!(
            "INSERT INTO tollgate_semantic_cache
                 (project_id, key, partition_key, vector, entry, created_ms, expires_ms, stored_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, {NOW_MS})
             ON CONFLICT (project_id, key) DO UPDATE SET
                 partition_key = EXCLUDED.partition_key, vector = EXCLUDED.vector, entry = EXCLUDED.entry,
                 created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms, stored_ms = EXCLUDED.stored_ms"
        );
        client
            .execute(
                &sql,
                &[
                    &row.project,
                    &&row.key.0[..],
                    &&row.partition.0[..],
                    &row.vector,
                    &&row.entry[..],
                    &row.created_ms,
                    &row.expires_ms,
                ],
            )
            .await
            .map_err(|e| cache_error(sql_error(e)))?;
        let prune = format!(
            "DELETE FROM tollgate_semantic_cache WHERE ctid IN
                 (SELECT ctid FROM tollgate_semantic_cache WHERE expires_ms <= {NOW_MS} LIMIT $1)"
        );
        client.execute(&prune, &[&PRUNE_BATCH]).await.map_err(|e| cache_error(sql_error(e)))?;
        Ok(())
    }

    async fn since(&self, since_ms: i64, now_ms: i64, limit: usize) -> Result<Vec<SemanticRow>, CacheError> {
        let client = self.pool.get().await.map_err(|e| cache_error(pool_error(e)))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT project_id, key, partition_key, vector, entry, created_ms, expires_ms
                 FROM tollgate_semantic_cache
                 WHERE stored_ms >= $1 AND expires_ms > $2
                 ORDER BY stored_ms DESC LIMIT $3",
                &[&since_ms, &now_ms, &limit],
            )
            .await
            .map_err(|e| cache_error(sql_error(e)))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (Some(key), Some(partition)) = (key_of(r.get::<_, &[u8]>(1)), key_of(r.get::<_, &[u8]>(2))) else {
                tracing::warn!("skipping a semantic cache row whose keys are not 32 bytes");
                continue;
            };
            out.push(SemanticRow {
                key,
                project: r.get(0),
                partition,
                vector: r.get(3),
                entry: bytes::Bytes::from(r.get::<_, Vec<u8>>(4)),
                created_ms: r.get(5),
                expires_ms: r.get(6),
            });
        }
        Ok(out)
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}
