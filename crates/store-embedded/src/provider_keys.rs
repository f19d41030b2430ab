//! Projects' own provider keys on SQLite ([`ProviderKeyStore`]), the table in
//! `migrations_0012_provider_keys.sql`. Its own connection, used from the blocking
//! pool. Only sealed values reach it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_store::{ProviderKeyCursor, ProviderKeyRecord, ProviderKeyStore, StoreResult};

use crate::sql_error;

/// The SQLite provider key store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedProviderKeys {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedProviderKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedProviderKeys").finish_non_exhaustive()
    }
}

const COLUMNS: &str = "project_id, provider, sealed_key, hint, base_url, created_at_ms, updated_at_ms";

fn row_record(row: &Row) -> rusqlite::Result<ProviderKeyRecord> {
    Ok(ProviderKeyRecord {
        project_id: row.get(0)?,
        provider: row.get(1)?,
        sealed_key: row.get(2)?,
        hint: row.get(3)?,
        base_url: row.get(4)?,
        created_at_ms: row.get(5)?,
        updated_at_ms: row.get(6)?,
    })
}

impl EmbeddedProviderKeys {
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn: Arc::new(Mutex::new(conn)) }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        crate::run_blocking(&self.conn, f).await
    }
}

#[async_trait]
impl ProviderKeyStore for EmbeddedProviderKeys {
    async fn put_provider_key(&self, record: ProviderKeyRecord) -> StoreResult<ProviderKeyRecord> {
        self.run(move |conn| {
            conn.query_row(
                &format!(
                    "INSERT INTO provider_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (project_id, provider) DO UPDATE SET
                         sealed_key = excluded.sealed_key, hint = excluded.hint,
                         base_url = excluded.base_url, updated_at_ms = excluded.updated_at_ms
                     RETURNING {COLUMNS}"
                ),
                params![
                    record.project_id,
                    record.provider,
                    record.sealed_key,
                    record.hint,
                    record.base_url,
                    record.created_at_ms,
                    record.updated_at_ms
                ],
                row_record,
            )
            .map_err(sql_error)
        })
        .await
    }

    async fn get_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<Option<ProviderKeyRecord>> {
        let (project_id, provider) = (project_id.to_owned(), provider.to_owned());
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {COLUMNS} FROM provider_keys WHERE project_id = ?1 AND provider = ?2"),
                params![project_id, provider],
                row_record,
            )
            .optional()
            .map_err(sql_error)
        })
        .await
    }

    async fn list_provider_keys(&self, project_id: &str) -> StoreResult<Vec<ProviderKeyRecord>> {
        let project_id = project_id.to_owned();
        self.run(move |conn| {
            let mut statement = conn
                .prepare(&format!("SELECT {COLUMNS} FROM provider_keys WHERE project_id = ?1 ORDER BY provider"))
                .map_err(sql_error)?;
            let rows = statement.query_map(params![project_id], row_record).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
        })
        .await
    }

    async fn delete_provider_key(&self, project_id: &str, provider: &str) -> StoreResult<bool> {
        let (project_id, provider) = (project_id.to_owned(), provider.to_owned());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM provider_keys WHERE project_id = ?1 AND provider = ?2",
                params![project_id, provider],
            )
            .map(|n| n > 0)
            .map_err(sql_error)
        })
        .await
    }

    async fn provider_keys_page(
        &self,
        after: Option<&ProviderKeyCursor>,
        limit: usize,
    ) -> StoreResult<Vec<ProviderKeyRecord>> {
        let after = after.cloned().unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            // Row values compare lexicographically: the page resumes right after the cursor.
            let mut statement = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM provider_keys WHERE (project_id, provider) > (?1, ?2)
                     ORDER BY project_id, provider LIMIT ?3"
                ))
                .map_err(sql_error)?;
            let rows =
                statement.query_map(params![after.project_id, after.provider, limit], row_record).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(sql_error)
        })
        .await
    }

    async fn reseal_provider_key(
        &self,
        project_id: &str,
        provider: &str,
        expected: &str,
        sealed_key: &str,
    ) -> StoreResult<bool> {
        let args = (project_id.to_owned(), provider.to_owned(), expected.to_owned(), sealed_key.to_owned());
        self.run(move |conn| {
            let (project_id, provider, expected, sealed_key) = args;
            conn.execute(
                "UPDATE provider_keys SET sealed_key = ?4
                 WHERE project_id = ?1 AND provider = ?2 AND sealed_key = ?3",
                params![project_id, provider, expected, sealed_key],
            )
            .map(|n| n > 0)
            .map_err(sql_error)
        })
        .await
    }
}
