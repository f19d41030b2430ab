//! Projects' own provider keys on PostgreSQL ([`ProviderKeyStore`]), the table in
//! `migrations/0014_provider_keys.sql`. Only sealed values reach it.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tollgate_store::{ProviderKeyCursor, ProviderKeyRecord, ProviderKeyStore, StoreResult};

use crate::{pool_error, sql_error};

/// The PostgreSQL provider key store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresProviderKeys {
    pool: Pool,
}

impl std::fmt::Debug for PostgresProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresProviderKeys").finish_non_exhaustive()
    }
}

const COLUMNS: &str = "project_id, provider, sealed_key, hint, base_url, created_at_ms, updated_at_ms";

fn row_record(row: &Row) -> ProviderKeyRecord {
    ProviderKeyRecord {
        project_id: row.get(0),
        provider: row.get(1),
        sealed_key: row.get(2),
        hint: row.get(3),
        base_url: row.get(4),
        created_at_ms: row.get(5),
        updated_at_ms: row.get(6),
    }
}

impl PostgresProviderKeys {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

#[async_trait]
impl ProviderKeyStore for PostgresProviderKeys {
    async fn put_provider_key(&self, record: ProviderKeyRecord) -> StoreResult<ProviderKeyRecord> {
        let client = self.client().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO tollgate_provider_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (project_id, provider) DO UPDATE SET
                         sealed_key = EXCLUDED.sealed_key, hint = EXCLUDED.hint,
                         base_url = EXCLUDED.base_url, updated_at_ms = EXCLUDED.updated_at_ms
                     RETURNING {COLUMNS}"
                ),
                &[
                    &record.project_id,
                    &record.provider,
                    &record.sealed_key,
                    &record.hint,
                    &record.base_url,
                    &record.created_at_ms,
                    &record.updated_at_ms,
                ],
            )
            .await
            .map_err(sql_error)?;
        Ok(row_record(&row))
    }

    async fn get_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<Option<ProviderKeyRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!("SELECT {COLUMNS} FROM tollgate_provider_keys WHERE project_id = $1 AND provider = $2"),
                &[&project_id, &provider],
            )
            .await
            .map_err(sql_error)?;
        Ok(row.as_ref().map(row_record))
    }

    async fn list_provider_keys(&self, project_id: &str) -> StoreResult<Vec<ProviderKeyRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("SELECT {COLUMNS} FROM tollgate_provider_keys WHERE project_id = $1 ORDER BY provider"),
                &[&project_id],
            )
            .await
            .map_err(sql_error)?;
        Ok(rows.iter().map(row_record).collect())
    }

    async fn delete_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "DELETE FROM tollgate_provider_keys WHERE project_id = $1 AND provider = $2",
                &[&project_id, &provider],
            )
            .await
            .map_err(sql_error)?;
        Ok(n > 0)
    }

    async fn provider_keys_page(
        &self,
        after: Option<&ProviderKeyCursor>,
        limit: usize,
    ) -> StoreResult<Vec<ProviderKeyRecord>> {
        let after = after.cloned().unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        // COLLATE "C": the order is the bytes' order, as SQLite's, whatever the
        // database's collation.
        let rows = client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tollgate_provider_keys
                     WHERE (project_id COLLATE \"C\", provider COLLATE \"C\") > ($1::text COLLATE \"C\", $2::text COLLATE \"C\")
                     ORDER BY project_id COLLATE \"C\", provider COLLATE \"C\" LIMIT $3"
                ),
                &[&after.project_id, &after.provider, &limit],
            )
            .await
            .map_err(sql_error)?;
        Ok(rows.iter().map(row_record).collect())
    }

    async fn reseal_provider_key(
        &self,
        project_id: &str,
        provider: &str,
        expected: &str,
        sealed_key: &str,
    ) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE tollgate_provider_keys SET sealed_key = $4
                 WHERE project_id = $1 AND provider = $2 AND sealed_key = $3",
                &[&project_id, &provider, &expected, &sealed_key],
            )
            .await
            .map_err(sql_error)?;
        Ok(n > 0)
    }
}
