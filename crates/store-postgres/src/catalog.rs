//! The catalog in PostgreSQL, with the hot path (`lookup_key`) served from an
//! in-process cache ([`crate::key_cache`]): a change made through this instance
//! invalidates the key locally once committed, before the call returns, then is
//! announced to the other instances ([`ChangePublisher`]); an announcement received
//! drops entries older than the version it names.
//!
//! Admin tokens and plans are not cached here (the admin API is not a hot path; the
//! server keeps its own plan cache and refreshes it on plan announcements).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use tokio_postgres::Row;
use tollgate_core::{KeyHash, KeyRecord, LimitSpec, Plan, Project};
use tollgate_store::columns;
use tollgate_store::{AdminTokenRecord, Catalog, KeyQuery, StoreError, StoreResult};

use crate::changes::{CatalogChange, ChangePublisher};
use crate::key_cache::{Found, KeyCache, MAX_ENTRIES, MAX_UNKNOWN};
use crate::{pool_error, sql_error, sql_error_or_conflict, u64_column};

/// The PostgreSQL catalog. Obtain it from [`PostgresStore::catalog`](crate::PostgresStore::catalog).
pub struct PostgresCatalog {
    pool: Pool,
    cache: KeyCache,
    publisher: OnceLock<Arc<dyn ChangePublisher>>,
}

impl std::fmt::Debug for PostgresCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresCatalog").field("cached_secrets", &self.cache.len()).finish_non_exhaustive()
    }
}

const KEY_COLUMNS: &str = "id, project_id, name, plan, metadata::text, limit_overrides::text, created_at_ms, \
                           expires_at_ms, revoked_at_ms, version";

fn json_column<T: serde::de::DeserializeOwned>(row: &Row, index: usize) -> StoreResult<T> {
    let text: String = row.try_get(index).map_err(sql_error)?;
    Ok(columns::json_from_sql(index, &text)?)
}

fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
    Ok(KeyRecord {
        id: row.try_get(0).map_err(sql_error)?,
        project_id: row.try_get(1).map_err(sql_error)?,
        name: row.try_get(2).map_err(sql_error)?,
        plan: row.try_get(3).map_err(sql_error)?,
        metadata: json_column(row, 4)?,
        limit_overrides: json_column(row, 5)?,
        created_at_ms: row.try_get(6).map_err(sql_error)?,
        expires_at_ms: row.try_get(7).map_err(sql_error)?,
        revoked_at_ms: row.try_get(8).map_err(sql_error)?,
        version: u64_column(row, 9)?,
    })
}

fn plan_from_row(row: &Row) -> StoreResult<Plan> {
    Ok(Plan {
        name: row.try_get(0).map_err(sql_error)?,
        description: row.try_get(1).map_err(sql_error)?,
        limits: json_column::<Vec<LimitSpec>>(row, 2)?,
        time_zone: row
            .try_get::<_, Option<String>>(3)
            .map_err(sql_error)?
            .map(|name| {
                tollgate_core::Zone::parse(&name)
                    .map_err(|e| StoreError::internal(format!("plans.time_zone of a stored plan: {e}")))
            })
            .transpose()?,
    })
}

const PROJECT_COLUMNS: &str = "id, name, created_at_ms, settings::text";

fn project_from_row(row: &Row) -> StoreResult<Project> {
    Ok(Project {
        id: row.try_get(0).map_err(sql_error)?,
        name: row.try_get(1).map_err(sql_error)?,
        created_at_ms: row.try_get(2).map_err(sql_error)?,
        settings: json_column(row, 3)?,
    })
}

const TOKEN_COLUMNS: &str = "id, project_id, name, prefix, created_at_ms, expires_at_ms, revoked_at_ms";

fn token_from_row(row: &Row) -> StoreResult<AdminTokenRecord> {
    Ok(AdminTokenRecord {
        id: row.try_get(0).map_err(sql_error)?,
        project_id: row.try_get(1).map_err(sql_error)?,
        name: row.try_get(2).map_err(sql_error)?,
        prefix: row.try_get(3).map_err(sql_error)?,
        created_at_ms: row.try_get(4).map_err(sql_error)?,
        expires_at_ms: row.try_get(5).map_err(sql_error)?,
        revoked_at_ms: row.try_get(6).map_err(sql_error)?,
    })
}

async fn get_key_on(client: &tokio_postgres::Client, id: &str) -> StoreResult<Option<KeyRecord>> {
    let row =
        client.query_opt(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"), &[&id]).await.map_err(sql_error)?;
    row.as_ref().map(key_from_row).transpose()
}

impl PostgresCatalog {
    pub(crate) fn new(pool: Pool, key_cache_ttl: Duration) -> Self {
        Self { pool, cache: KeyCache::new(key_cache_ttl, MAX_ENTRIES, MAX_UNKNOWN), publisher: OnceLock::new() }
    }

    /// Where committed changes are announced. Set once, before serving; without one,
    /// other instances rely on the cache TTL.
    pub fn set_publisher(&self, publisher: Arc<dyn ChangePublisher>) {
        if self.publisher.set(publisher).is_err() {
            tracing::warn!("catalog change publisher already set; keeping the first");
        }
    }

    /// Applies a change announced by another instance (or this one) to the cache.
    pub fn apply_change(&self, change: &CatalogChange) {
        if let CatalogChange::Key { id, version } = change {
            self.cache.invalidate_key(id, Some(*version));
        }
    }

    /// While change notices cannot arrive (the subscription is down), serve cached
    /// keys for at most `ttl`; `None` restores the configured TTL.
    pub fn set_short_ttl(&self, ttl: Option<Duration>) {
        self.cache.set_degraded_ttl(ttl);
    }

    /// Forgets every cached lookup (after the change feed was lost: announcements
    /// may have been missed).
    pub fn clear_cache(&self) {
        self.cache.clear();
    }

    /// Known secrets currently cached.
    pub fn cached_secrets(&self) -> usize {
        self.cache.len()
    }

    /// Unknown secrets currently remembered.
    pub fn cached_unknown_secrets(&self) -> usize {
        self.cache.unknown_len()
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Invalidates locally, then tells the others.
    async fn changed(&self, change: CatalogChange) {
        if let CatalogChange::Key { id, .. } = &change {
            // Locally, drop every version: the committed one is read back next time.
            self.cache.invalidate_key(id, None);
        }
        if let Some(publisher) = self.publisher.get() {
            publisher.publish(change).await;
        }
    }
}

#[async_trait]
impl Catalog for PostgresCatalog {
    async fn create_project(&self, project: Project) -> StoreResult<Project> {
        let settings = columns::json_text(&project.settings)?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO projects (id, name, created_at_ms, settings) VALUES ($1, $2, $3, $4::text::jsonb)",
                &[&project.id, &project.name, &project.created_at_ms, &settings],
            )
            .await
            .map_err(sql_error_or_conflict(|_| format!("project '{}' already exists", project.id)))?;
        drop(client);
        self.changed(CatalogChange::Project { id: project.id.clone() }).await;
        Ok(project)
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"), &[&id])
            .await
            .map_err(sql_error)?;
        row.as_ref().map(project_from_row).transpose()
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        let client = self.client().await?;
        let rows = client
            .query(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"), &[])
            .await
            .map_err(sql_error)?;
        rows.iter().map(project_from_row).collect()
    }

    async fn update_project(&self, project: Project) -> StoreResult<Project> {
        let settings = columns::json_text(&project.settings)?;
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE projects SET name = $2, settings = $3::text::jsonb WHERE id = $1 RETURNING {PROJECT_COLUMNS}"
                ),
                &[&project.id, &project.name, &settings],
            )
            .await
            .map_err(sql_error)?;
        drop(client);
        let Some(row) = row else { return Err(StoreError::not_found("project", project.id)) };
        let stored = project_from_row(&row)?;
        self.changed(CatalogChange::Project { id: stored.id.clone() }).await;
        Ok(stored)
    }

    async fn put_plan(&self, plan: Plan) -> StoreResult<()> {
        let limits = columns::json_text(&plan.limits)?;
        let zone = plan.time_zone.as_ref().map(|z| z.name().to_owned());
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO plans (name, description, limits, time_zone) VALUES ($1, $2, $3::text::jsonb, $4)
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description, limits = excluded.limits,
                     time_zone = excluded.time_zone",
                &[&plan.name, &plan.description, &limits, &zone],
            )
            .await
            .map_err(sql_error)?;
        drop(client);
        self.changed(CatalogChange::Plan { name: plan.name }).await;
        Ok(())
    }

    async fn insert_plan_if_absent(&self, plan: Plan) -> StoreResult<bool> {
        let limits = columns::json_text(&plan.limits)?;
        let zone = plan.time_zone.as_ref().map(|z| z.name().to_owned());
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO plans (name, description, limits, time_zone) VALUES ($1, $2, $3::text::jsonb, $4)
                 ON CONFLICT (name) DO NOTHING",
                &[&plan.name, &plan.description, &limits, &zone],
            )
            .await
            .map_err(sql_error)?
            == 1;
        drop(client);
        if inserted {
            self.changed(CatalogChange::Plan { name: plan.name }).await;
        }
        Ok(inserted)
    }

    async fn get_plan(&self, name: &str) -> StoreResult<Option<Plan>> {
        let client = self.client().await?;
        let row = client
            .query_opt("SELECT name, description, limits::text, time_zone FROM plans WHERE name = $1", &[&name])
            .await
            .map_err(sql_error)?;
        row.as_ref().map(plan_from_row).transpose()
    }

    async fn list_plans(&self) -> StoreResult<Vec<Plan>> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT name, description, limits::text, time_zone FROM plans ORDER BY name", &[])
            .await
            .map_err(sql_error)?;
        rows.iter().map(plan_from_row).collect()
    }

    async fn delete_plan(&self, name: &str) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql_error)?;
        // No key may take the plan between the check and the delete: block key
        // writes for the length of this (short, rare) transaction.
        tx.batch_execute("LOCK TABLE keys IN SHARE MODE").await.map_err(sql_error)?;
        let users: i64 = tx
            .query_one("SELECT COUNT(*) FROM keys WHERE plan = $1", &[&name])
            .await
            .map_err(sql_error)?
            .try_get(0)
            .map_err(sql_error)?;
        if users > 0 {
            return Err(StoreError::Conflict(format!("plan '{name}' is used by {users} key(s)")));
        }
        let deleted = tx.execute("DELETE FROM plans WHERE name = $1", &[&name]).await.map_err(sql_error)?;
        tx.commit().await.map_err(sql_error)?;
        drop(client);
        if deleted > 0 {
            self.changed(CatalogChange::Plan { name: name.to_owned() }).await;
        }
        Ok(deleted > 0)
    }

    async fn create_key(&self, record: KeyRecord, secret_hash: KeyHash) -> StoreResult<KeyRecord> {
        let metadata = columns::json_text(&record.metadata)?;
        let overrides = columns::json_text(&record.limit_overrides)?;
        let version = columns::version_param(record.version)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql_error)?;
        tx.execute(
            &format!(
                "INSERT INTO keys ({}) VALUES ($1, $2, $3, $4, $5::text::jsonb, $6::text::jsonb, $7, $8, $9, $10)",
                KEY_COLUMNS.replace("::text", "")
            ),
            &[
                &record.id,
                &record.project_id,
                &record.name,
                &record.plan,
                &metadata,
                &overrides,
                &record.created_at_ms,
                &record.expires_at_ms,
                &record.revoked_at_ms,
                &version,
            ],
        )
        .await
        .map_err(sql_error_or_conflict(|_| format!("key '{}' already exists", record.id)))?;
        tx.execute(
            "INSERT INTO key_secrets (hash, key_id, valid_until_ms) VALUES ($1, $2, NULL)",
            &[&secret_hash.to_hex(), &record.id],
        )
        .await
        .map_err(sql_error_or_conflict(|_| "the key's secret hash is already in use".to_owned()))?;
        tx.commit().await.map_err(sql_error)?;
        drop(client);
        self.changed(CatalogChange::Key { id: record.id.clone(), version: record.version }).await;
        Ok(record)
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let client = self.client().await?;
        get_key_on(&client, id).await
    }

    async fn list_keys(&self, query: KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM keys
                     WHERE ($1::text IS NULL OR project_id = $1) AND ($2::text IS NULL OR id > $2)
                     ORDER BY id LIMIT $3"
                ),
                &[&query.project_id, &query.after_id, &limit],
            )
            .await
            .map_err(sql_error)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn update_key(&self, record: KeyRecord) -> StoreResult<KeyRecord> {
        let metadata = columns::json_text(&record.metadata)?;
        let overrides = columns::json_text(&record.limit_overrides)?;
        let expected = columns::version_param(record.version)?;
        let bumped = record
            .version
            .checked_add(1)
            .ok_or_else(|| StoreError::internal(format!("key '{}' version overflow", record.id)))?;
        let new_version = columns::version_param(bumped)?;
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE keys SET project_id = $2, name = $3, plan = $4, metadata = $5::text::jsonb,
                     limit_overrides = $6::text::jsonb, created_at_ms = $7, expires_at_ms = $8,
                     revoked_at_ms = $9, version = $10
                 WHERE id = $1 AND version = $11",
                &[
                    &record.id,
                    &record.project_id,
                    &record.name,
                    &record.plan,
                    &metadata,
                    &overrides,
                    &record.created_at_ms,
                    &record.expires_at_ms,
                    &record.revoked_at_ms,
                    &new_version,
                    &expected,
                ],
            )
            .await
            .map_err(sql_error)?;
        if changed == 0 {
            return match get_key_on(&client, &record.id).await? {
                Some(current) => Err(StoreError::Conflict(format!(
                    "key '{}' changed meanwhile (version {} is stale, current is {})",
                    record.id, record.version, current.version
                ))),
                None => Err(StoreError::not_found("key", record.id)),
            };
        }
        drop(client);
        let updated = KeyRecord { version: bumped, ..record };
        self.changed(CatalogChange::Key { id: updated.id.clone(), version: bumped }).await;
        Ok(updated)
    }

    async fn rotate_key_secret(
        &self,
        id: &str,
        new_hash: KeyHash,
        old_valid_until_ms: Option<i64>,
    ) -> StoreResult<KeyRecord> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql_error)?;
        let row = tx
            .query_opt(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1 FOR UPDATE"), &[&id])
            .await
            .map_err(sql_error)?;
        let mut record = match row {
            Some(row) => key_from_row(&row)?,
            None => return Err(StoreError::not_found("key", id)),
        };
        match old_valid_until_ms {
            None => {
                tx.execute("DELETE FROM key_secrets WHERE key_id = $1", &[&id]).await.map_err(sql_error)?;
            }
            // A secret already retiring keeps its earlier end: a new rotation never
            // extends the life of an older secret.
            Some(until) => {
                tx.execute(
                    "UPDATE key_secrets SET valid_until_ms = LEAST(COALESCE(valid_until_ms, $2), $2)
                     WHERE key_id = $1",
                    &[&id, &until],
                )
                .await
                .map_err(sql_error)?;
            }
        }
        tx.execute(
            "INSERT INTO key_secrets (hash, key_id, valid_until_ms) VALUES ($1, $2, NULL)",
            &[&new_hash.to_hex(), &id],
        )
        .await
        .map_err(sql_error_or_conflict(|_| "the new secret hash is already in use".to_owned()))?;
        record.version = record
            .version
            .checked_add(1)
            .ok_or_else(|| StoreError::internal(format!("key '{id}' version overflow")))?;
        tx.execute("UPDATE keys SET version = $2 WHERE id = $1", &[&id, &columns::version_param(record.version)?])
            .await
            .map_err(sql_error)?;
        tx.commit().await.map_err(sql_error)?;
        drop(client);
        self.changed(CatalogChange::Key { id: id.to_owned(), version: record.version }).await;
        Ok(record)
    }

    async fn lookup_key(&self, hash: &KeyHash, now_ms: i64) -> StoreResult<Option<Arc<KeyRecord>>> {
        let usable = |found: Found| {
            found.filter(|(_, valid_until)| valid_until.is_none_or(|until| now_ms < until)).map(|(record, _)| record)
        };
        if let Some(found) = self.cache.get(hash) {
            return Ok(usable(found));
        }
        let epoch = self.cache.epoch();
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {}, s.valid_until_ms FROM key_secrets s JOIN keys k ON k.id = s.key_id WHERE s.hash = $1",
                    KEY_COLUMNS.split(", ").map(|c| format!("k.{c}")).collect::<Vec<_>>().join(", ")
                ),
                &[&hash.to_hex()],
            )
            .await
            .map_err(sql_error)?;
        drop(client);
        let found = match row {
            Some(row) => {
                let valid_until: Option<i64> = row.try_get(10).map_err(sql_error)?;
                Some((Arc::new(key_from_row(&row)?), valid_until))
            }
            None => None,
        };
        self.cache.insert(*hash, found.clone(), epoch);
        Ok(usable(found))
    }

    async fn create_admin_token(&self, record: AdminTokenRecord, hash: KeyHash) -> StoreResult<AdminTokenRecord> {
        let client = self.client().await?;
        client
            .execute(
                &format!("INSERT INTO admin_tokens (hash, {TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
                &[
                    &hash.to_hex(),
                    &record.id,
                    &record.project_id,
                    &record.name,
                    &record.prefix,
                    &record.created_at_ms,
                    &record.expires_at_ms,
                    &record.revoked_at_ms,
                ],
            )
            .await
            .map_err(sql_error_or_conflict(|_| "the admin token's hash is already in use".to_owned()))?;
        drop(client);
        self.changed(CatalogChange::AdminToken).await;
        Ok(record)
    }

    async fn lookup_admin_token(&self, hash: &KeyHash) -> StoreResult<Option<AdminTokenRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE hash = $1"), &[&hash.to_hex()])
            .await
            .map_err(sql_error)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn get_admin_token(&self, id: &str) -> StoreResult<Option<AdminTokenRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(&format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE id = $1"), &[&id])
            .await
            .map_err(sql_error)?;
        row.as_ref().map(token_from_row).transpose()
    }

    async fn list_admin_tokens(&self, project_id: Option<&str>) -> StoreResult<Vec<AdminTokenRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE $1::text IS NULL OR project_id = $1 ORDER BY id"
                ),
                &[&project_id],
            )
            .await
            .map_err(sql_error)?;
        rows.iter().map(token_from_row).collect()
    }

    async fn revoke_admin_token(&self, id: &str, at_ms: i64) -> StoreResult<Option<AdminTokenRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE admin_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE id = $1
                     RETURNING {TOKEN_COLUMNS}"
                ),
                &[&id, &at_ms],
            )
            .await
            .map_err(sql_error)?;
        drop(client);
        let record = row.as_ref().map(token_from_row).transpose()?;
        if record.is_some() {
            self.changed(CatalogChange::AdminToken).await;
        }
        Ok(record)
    }

    async fn has_operator_token(&self, now_ms: i64) -> StoreResult<bool> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM admin_tokens WHERE project_id IS NULL AND revoked_at_ms IS NULL
                                AND (expires_at_ms IS NULL OR expires_at_ms > $1))",
                &[&now_ms],
            )
            .await
            .map_err(sql_error)?;
        row.try_get(0).map_err(sql_error)
    }
}
