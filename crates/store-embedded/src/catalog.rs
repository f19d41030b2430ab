//! The catalog in SQLite: projects, plans, keys, key secrets and admin tokens.
//!
//! Writes and cold reads run on one connection behind a `std::sync::Mutex`, inside
//! `spawn_blocking` so SQLite never blocks a runtime thread. The hot path,
//! [`lookup_key`](Catalog::lookup_key), reads an in-memory index from secret hash to
//! key record instead: no SQL, no await, one read lock. The index is loaded at open
//! and written through after each committed change, while the connection mutex is
//! still held, so index updates happen in commit order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use tollgate_core::{KeyHash, KeyRecord, LimitSpec, Plan, Project};
use tollgate_store::columns;
use tollgate_store::{AdminTokenRecord, Catalog, KeyQuery, StoreError, StoreResult};

use crate::{DirLock, sql_error, sql_error_or_conflict};

/// One secret's entry: the key it opens and, during a rotation's grace period, when
/// it stops working (exclusive).
type SecretEntry = (Arc<KeyRecord>, Option<i64>);

/// Secret hash -> key, plus key id -> its secrets so a changed record replaces the
/// entry of every secret of the key (several during a rotation grace period).
#[derive(Default)]
struct KeyIndex {
    by_hash: HashMap<KeyHash, SecretEntry>,
    by_key: HashMap<String, Vec<KeyHash>>,
}

impl KeyIndex {
    /// Replaces everything known about `record.id` with `record` and `secrets`.
    fn replace_key(&mut self, record: KeyRecord, secrets: Vec<(KeyHash, Option<i64>)>) {
        let record = Arc::new(record);
        if let Some(old) = self.by_key.remove(&record.id) {
            for hash in old {
                self.by_hash.remove(&hash);
            }
        }
        let mut hashes = Vec::with_capacity(secrets.len());
        for (hash, valid_until) in secrets {
            self.by_hash.insert(hash, (record.clone(), valid_until));
            hashes.push(hash);
        }
        self.by_key.insert(record.id.clone(), hashes);
    }
}

struct Inner {
    conn: Mutex<Connection>,
    index: RwLock<KeyIndex>,
    /// The directory stays locked while the catalog (and its key index) lives.
    _lock: Arc<DirLock>,
}

/// The SQLite catalog. Obtain it from [`EmbeddedStore::catalog`](crate::EmbeddedStore::catalog).
pub struct EmbeddedCatalog {
    inner: Arc<Inner>,
}

impl EmbeddedCatalog {
    /// Wraps a migrated connection and loads the key index from it.
    pub(crate) fn open(conn: Connection, lock: Arc<DirLock>) -> StoreResult<Self> {
        let index = load_index(&conn)?;
        tracing::debug!(secrets = index.by_hash.len(), keys = index.by_key.len(), "key index loaded");
        Ok(Self { inner: Arc::new(Inner { conn: Mutex::new(conn), index: RwLock::new(index), _lock: lock }) })
    }

    /// Secrets in the in-memory index (current and retiring ones).
    pub fn indexed_secrets(&self) -> usize {
        self.read_index().by_hash.len()
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, KeyIndex> {
        // A panic while holding the lock cannot leave the maps half-updated in a way
        // that matters more than refusing every request would.
        self.inner.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the connection in a blocking task.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &RwLock<KeyIndex>) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn, &inner.index)
        })
        .await?
    }
}

fn write_index(index: &RwLock<KeyIndex>) -> std::sync::RwLockWriteGuard<'_, KeyIndex> {
    index.write().unwrap_or_else(PoisonError::into_inner)
}

const KEY_COLUMNS: &str = "id, project_id, name, plan, metadata, limit_overrides, created_at_ms, \
                           expires_at_ms, revoked_at_ms, version";

/// A JSON column that does not parse is corrupt data: report it as a conversion
/// failure so it maps to `Internal`.
fn json_column<T: serde::de::DeserializeOwned>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    columns::json_from_sql(index, &text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Text, Box::new(e)))
}

fn u64_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    columns::u64_from_sql(index, value)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, Type::Integer, Box::new(e)))
}

fn hash_column(row: &Row<'_>, index: usize) -> rusqlite::Result<KeyHash> {
    let hex: String = row.get(index)?;
    KeyHash::from_hex(&hex).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(index, Type::Text, format!("bad hash hex {hex:?}").into())
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    Ok(KeyRecord {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        plan: row.get(3)?,
        metadata: json_column(row, 4)?,
        limit_overrides: json_column(row, 5)?,
        created_at_ms: row.get(6)?,
        expires_at_ms: row.get(7)?,
        revoked_at_ms: row.get(8)?,
        version: u64_column(row, 9)?,
    })
}

fn plan_from_row(row: &Row<'_>) -> rusqlite::Result<Plan> {
    Ok(Plan {
        name: row.get(0)?,
        description: row.get(1)?,
        limits: json_column::<Vec<LimitSpec>>(row, 2)?,
        time_zone: zone_column(row, 3)?,
    })
}

/// A plan's `time_zone` column: NULL is none; a name this build does not know (a
/// database written by a newer tz database) reads as a conversion error.
fn zone_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<tollgate_core::Zone>> {
    let name: Option<String> = row.get(index)?;
    name.map(|n| {
        tollgate_core::Zone::parse(&n)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e)))
    })
    .transpose()
}

const PROJECT_COLUMNS: &str = "id, name, created_at_ms, settings";

fn project_from_row(row: &Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project { id: row.get(0)?, name: row.get(1)?, created_at_ms: row.get(2)?, settings: json_column(row, 3)? })
}

fn get_project_on(conn: &Connection, id: &str) -> StoreResult<Option<Project>> {
    conn.query_row(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"), [id], project_from_row)
        .optional()
        .map_err(sql_error)
}

const TOKEN_COLUMNS: &str = "id, project_id, name, prefix, created_at_ms, expires_at_ms, revoked_at_ms";

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<AdminTokenRecord> {
    Ok(AdminTokenRecord {
        id: row.get(0)?,
        project_id: row.get(1)?,
        name: row.get(2)?,
        prefix: row.get(3)?,
        created_at_ms: row.get(4)?,
        expires_at_ms: row.get(5)?,
        revoked_at_ms: row.get(6)?,
    })
}

fn get_token_on(conn: &Connection, column: &str, value: &str) -> StoreResult<Option<AdminTokenRecord>> {
    conn.query_row(&format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE {column} = ?1"), [value], token_from_row)
        .optional()
        .map_err(sql_error)
}

fn get_key_on(conn: &Connection, id: &str) -> StoreResult<Option<KeyRecord>> {
    conn.query_row(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = ?1"), [id], key_from_row)
        .optional()
        .map_err(sql_error)
}

fn secrets_of(conn: &Connection, key_id: &str) -> StoreResult<Vec<(KeyHash, Option<i64>)>> {
    let mut stmt =
        conn.prepare_cached("SELECT hash, valid_until_ms FROM key_secrets WHERE key_id = ?1").map_err(sql_error)?;
    let rows = stmt.query_map([key_id], |row| Ok((hash_column(row, 0)?, row.get(1)?))).map_err(sql_error)?;
    rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
}

/// Builds the index from every stored secret. Secrets of a missing key (which no
/// code path writes) are skipped with a warning rather than failing the start.
fn load_index(conn: &Connection) -> StoreResult<KeyIndex> {
    let mut stmt = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM keys")).map_err(sql_error)?;
    let mut records: HashMap<String, KeyRecord> = stmt
        .query_map([], key_from_row)
        .map_err(sql_error)?
        .map(|r| r.map(|k| (k.id.clone(), k)))
        .collect::<rusqlite::Result<_>>()
        .map_err(sql_error)?;
    let mut secrets: HashMap<String, Vec<(KeyHash, Option<i64>)>> = HashMap::new();
    let mut stmt = conn.prepare("SELECT hash, key_id, valid_until_ms FROM key_secrets").map_err(sql_error)?;
    let rows = stmt
        .query_map([], |row| Ok((hash_column(row, 0)?, row.get::<_, String>(1)?, row.get(2)?)))
        .map_err(sql_error)?;
    for row in rows {
        let (hash, key_id, valid_until) = row.map_err(sql_error)?;
        secrets.entry(key_id).or_default().push((hash, valid_until));
    }
    let mut index = KeyIndex::default();
    for (key_id, key_secrets) in secrets {
        match records.remove(&key_id) {
            Some(record) => index.replace_key(record, key_secrets),
            None => tracing::warn!(key_id, "key secrets without a key record are ignored"),
        }
    }
    // Keys without a secret cannot be looked up; they are still listed through SQL.
    Ok(index)
}

#[async_trait]
impl Catalog for EmbeddedCatalog {
    async fn create_project(&self, project: Project) -> StoreResult<Project> {
        let settings = columns::json_text(&project.settings)?;
        self.run(move |conn, _| {
            conn.execute(
                &format!("INSERT INTO projects ({PROJECT_COLUMNS}) VALUES (?1, ?2, ?3, ?4)"),
                params![project.id, project.name, project.created_at_ms, settings],
            )
            .map_err(sql_error_or_conflict(|| format!("project '{}' already exists", project.id)))?;
            Ok(project)
        })
        .await
    }

    async fn get_project(&self, id: &str) -> StoreResult<Option<Project>> {
        let id = id.to_owned();
        self.run(move |conn, _| get_project_on(conn, &id)).await
    }

    async fn list_projects(&self) -> StoreResult<Vec<Project>> {
        self.run(|conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"))
                .map_err(sql_error)?;
            let rows = stmt.query_map([], project_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn update_project(&self, project: Project) -> StoreResult<Project> {
        let settings = columns::json_text(&project.settings)?;
        self.run(move |conn, _| {
            let changed = conn
                .execute(
                    "UPDATE projects SET name = ?2, settings = ?3 WHERE id = ?1",
                    params![project.id, project.name, settings],
                )
                .map_err(sql_error)?;
            if changed == 0 {
                return Err(StoreError::not_found("project", project.id));
            }
            get_project_on(conn, &project.id)?.ok_or_else(|| StoreError::not_found("project", project.id))
        })
        .await
    }

    async fn put_plan(&self, plan: Plan) -> StoreResult<()> {
        let limits = columns::json_text(&plan.limits)?;
        let zone = plan.time_zone.as_ref().map(|z| z.name().to_owned());
        self.run(move |conn, _| {
            conn.execute(
                "INSERT INTO plans (name, description, limits, time_zone) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET description = excluded.description, limits = excluded.limits,
                     time_zone = excluded.time_zone",
                params![plan.name, plan.description, limits, zone],
            )
            .map_err(sql_error)?;
            Ok(())
        })
        .await
    }

    async fn insert_plan_if_absent(&self, plan: Plan) -> StoreResult<bool> {
        let limits = columns::json_text(&plan.limits)?;
        let zone = plan.time_zone.as_ref().map(|z| z.name().to_owned());
        self.run(move |conn, _| {
            let inserted = conn
                .execute(
                    "INSERT INTO plans (name, description, limits, time_zone) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO NOTHING",
                    params![plan.name, plan.description, limits, zone],
                )
                .map_err(sql_error)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn get_plan(&self, name: &str) -> StoreResult<Option<Plan>> {
        let name = name.to_owned();
        self.run(move |conn, _| {
            conn.query_row(
                "SELECT name, description, limits, time_zone FROM plans WHERE name = ?1",
                [name],
                plan_from_row,
            )
            .optional()
            .map_err(sql_error)
        })
        .await
    }

    async fn list_plans(&self) -> StoreResult<Vec<Plan>> {
        self.run(|conn, _| {
            let mut stmt = conn
                .prepare_cached("SELECT name, description, limits, time_zone FROM plans ORDER BY name")
                .map_err(sql_error)?;
            let rows = stmt.query_map([], plan_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn delete_plan(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        self.run(move |conn, _| {
            // Check and delete in one transaction so no key can take the plan between.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
            let users: i64 = tx
                .query_row("SELECT COUNT(*) FROM keys WHERE plan = ?1", [&name], |row| row.get(0))
                .map_err(sql_error)?;
            if users > 0 {
                return Err(StoreError::Conflict(format!("plan '{name}' is used by {users} key(s)")));
            }
            let deleted = tx.execute("DELETE FROM plans WHERE name = ?1", [&name]).map_err(sql_error)?;
            tx.commit().map_err(sql_error)?;
            Ok(deleted > 0)
        })
        .await
    }

    async fn create_key(&self, record: KeyRecord, secret_hash: KeyHash) -> StoreResult<KeyRecord> {
        let metadata = columns::json_text(&record.metadata)?;
        let overrides = columns::json_text(&record.limit_overrides)?;
        let version = columns::version_param(record.version)?;
        self.run(move |conn, index| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
            tx.execute(
                &format!("INSERT INTO keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    record.id,
                    record.project_id,
                    record.name,
                    record.plan,
                    metadata,
                    overrides,
                    record.created_at_ms,
                    record.expires_at_ms,
                    record.revoked_at_ms,
                    version,
                ],
            )
            .map_err(sql_error_or_conflict(|| format!("key '{}' already exists", record.id)))?;
            tx.execute(
                "INSERT INTO key_secrets (hash, key_id, valid_until_ms) VALUES (?1, ?2, NULL)",
                params![secret_hash.to_hex(), record.id],
            )
            .map_err(sql_error_or_conflict(|| "the key's secret hash is already in use".to_owned()))?;
            tx.commit().map_err(sql_error)?;
            write_index(index).replace_key(record.clone(), vec![(secret_hash, None)]);
            Ok(record)
        })
        .await
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let id = id.to_owned();
        self.run(move |conn, _| get_key_on(conn, &id)).await
    }

    async fn list_keys(&self, query: KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        self.run(move |conn, _| {
            let mut sql = format!("SELECT {KEY_COLUMNS} FROM keys WHERE 1 = 1");
            let mut args = Vec::new();
            if let Some(project_id) = query.project_id {
                sql.push_str(" AND project_id = ?");
                args.push(Value::Text(project_id));
            }
            if let Some(after_id) = query.after_id {
                sql.push_str(" AND id > ?");
                args.push(Value::Text(after_id));
            }
            sql.push_str(" ORDER BY id LIMIT ?");
            args.push(Value::Integer(i64::try_from(query.limit).unwrap_or(i64::MAX)));
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let rows = stmt.query_map(params_from_iter(args), key_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
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
        self.run(move |conn, index| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
            let changed = tx
                .execute(
                    "UPDATE keys SET project_id = ?2, name = ?3, plan = ?4, metadata = ?5, limit_overrides = ?6,
                         created_at_ms = ?7, expires_at_ms = ?8, revoked_at_ms = ?9, version = ?10
                     WHERE id = ?1 AND version = ?11",
                    params![
                        record.id,
                        record.project_id,
                        record.name,
                        record.plan,
                        metadata,
                        overrides,
                        record.created_at_ms,
                        record.expires_at_ms,
                        record.revoked_at_ms,
                        new_version,
                        expected,
                    ],
                )
                .map_err(sql_error)?;
            if changed == 0 {
                return match get_key_on(&tx, &record.id)? {
                    Some(current) => Err(StoreError::Conflict(format!(
                        "key '{}' changed meanwhile (version {} is stale, current is {})",
                        record.id, record.version, current.version
                    ))),
                    None => Err(StoreError::not_found("key", record.id)),
                };
            }
            let secrets = secrets_of(&tx, &record.id)?;
            tx.commit().map_err(sql_error)?;
            let updated = KeyRecord { version: bumped, ..record };
            write_index(index).replace_key(updated.clone(), secrets);
            Ok(updated)
        })
        .await
    }

    async fn rotate_key_secret(
        &self,
        id: &str,
        new_hash: KeyHash,
        old_valid_until_ms: Option<i64>,
    ) -> StoreResult<KeyRecord> {
        let id = id.to_owned();
        self.run(move |conn, index| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql_error)?;
            let mut record = get_key_on(&tx, &id)?.ok_or_else(|| StoreError::not_found("key", id.clone()))?;
            match old_valid_until_ms {
                None => {
                    tx.execute("DELETE FROM key_secrets WHERE key_id = ?1", [&id]).map_err(sql_error)?;
                }
                // A secret already retiring keeps its earlier end: a new rotation
                // never extends the life of an older secret.
                Some(until) => {
                    tx.execute(
                        "UPDATE key_secrets SET valid_until_ms = MIN(COALESCE(valid_until_ms, ?2), ?2)
                         WHERE key_id = ?1",
                        params![id, until],
                    )
                    .map_err(sql_error)?;
                }
            }
            tx.execute(
                "INSERT INTO key_secrets (hash, key_id, valid_until_ms) VALUES (?1, ?2, NULL)",
                params![new_hash.to_hex(), id],
            )
            .map_err(sql_error_or_conflict(|| "the new secret hash is already in use".to_owned()))?;
            record.version = record
                .version
                .checked_add(1)
                .ok_or_else(|| StoreError::internal(format!("key '{id}' version overflow")))?;
            tx.execute(
                "UPDATE keys SET version = ?2 WHERE id = ?1",
                params![id, columns::version_param(record.version)?],
            )
            .map_err(sql_error)?;
            let secrets = secrets_of(&tx, &id)?;
            tx.commit().map_err(sql_error)?;
            write_index(index).replace_key(record.clone(), secrets);
            Ok(record)
        })
        .await
    }

    async fn lookup_key(&self, hash: &KeyHash, now_ms: i64) -> StoreResult<Option<Arc<KeyRecord>>> {
        let index = self.read_index();
        Ok(index
            .by_hash
            .get(hash)
            .filter(|(_, valid_until)| valid_until.is_none_or(|until| now_ms < until))
            .map(|(record, _)| record.clone()))
    }

    async fn create_admin_token(&self, record: AdminTokenRecord, hash: KeyHash) -> StoreResult<AdminTokenRecord> {
        self.run(move |conn, _| {
            conn.execute(
                &format!("INSERT INTO admin_tokens (hash, {TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    hash.to_hex(),
                    record.id,
                    record.project_id,
                    record.name,
                    record.prefix,
                    record.created_at_ms,
                    record.expires_at_ms,
                    record.revoked_at_ms,
                ],
            )
            .map_err(sql_error_or_conflict(|| "the admin token's hash is already in use".to_owned()))?;
            Ok(record)
        })
        .await
    }

    async fn lookup_admin_token(&self, hash: &KeyHash) -> StoreResult<Option<AdminTokenRecord>> {
        let hex = hash.to_hex();
        self.run(move |conn, _| get_token_on(conn, "hash", &hex)).await
    }

    async fn get_admin_token(&self, id: &str) -> StoreResult<Option<AdminTokenRecord>> {
        let id = id.to_owned();
        self.run(move |conn, _| get_token_on(conn, "id", &id)).await
    }

    async fn list_admin_tokens(&self, project_id: Option<&str>) -> StoreResult<Vec<AdminTokenRecord>> {
        let project_id = project_id.map(str::to_owned);
        self.run(move |conn, _| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE ?1 IS NULL OR project_id = ?1 ORDER BY id"
                ))
                .map_err(sql_error)?;
            let rows = stmt.query_map([project_id], token_from_row).map_err(sql_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql_error)
        })
        .await
    }

    async fn revoke_admin_token(&self, id: &str, at_ms: i64) -> StoreResult<Option<AdminTokenRecord>> {
        let id = id.to_owned();
        self.run(move |conn, _| {
            conn.execute(
                "UPDATE admin_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) WHERE id = ?1",
                params![id, at_ms],
            )
            .map_err(sql_error)?;
            get_token_on(conn, "id", &id)
        })
        .await
    }

    async fn has_operator_token(&self, now_ms: i64) -> StoreResult<bool> {
        self.run(move |conn, _| {
            conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM admin_tokens WHERE project_id IS NULL AND revoked_at_ms IS NULL
                                AND (expires_at_ms IS NULL OR expires_at_ms > ?1))",
                [now_ms],
                |row| row.get(0),
            )
            .map_err(sql_error)
        })
        .await
    }
}
