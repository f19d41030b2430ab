//! The SQLite schema, as an ordered list of migrations, and how connections are
//! opened and configured.
//!
//! `PRAGMA user_version` records how many migrations a database has had. Opening
//! applies the missing ones in order, each in its own transaction together with the
//! version bump, so a crash mid-migration leaves the previous version intact. A
//! migration, once released, is never edited: changes are new entries.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tollgate_store::{StoreError, StoreResult};

use crate::sql_error;

/// Every migration, oldest first. `user_version` = number applied.
///
/// Notes on the schema:
/// - secrets are never stored: `key_secrets.hash` and `admin_tokens.hash` are the
///   lowercase hex SHA-256 of the key or token;
/// - `valid_until_ms` is NULL for a current secret and set on a retiring one (the
///   grace period of a rotation);
/// - JSON columns (`plans.limits`, `keys.metadata`, `keys.limit_overrides`) are
///   written and read only by this crate through serde;
/// - no foreign keys: stores persist what they are given, the server validates;
///   `keys_plan` makes the "is this plan in use" check of `delete_plan` cheap;
/// - the usage indexes end in `id` so newest-first pages ordered by `(ts_ms, id)` walk
///   an index instead of sorting.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the catalog and the ledger.
    r#"
    CREATE TABLE projects (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE plans (
        name        TEXT PRIMARY KEY,
        description TEXT,
        limits      TEXT NOT NULL
    ) STRICT;

    CREATE TABLE keys (
        id              TEXT PRIMARY KEY,
        project_id      TEXT NOT NULL,
        name            TEXT,
        plan            TEXT NOT NULL,
        metadata        TEXT NOT NULL,
        limit_overrides TEXT NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        expires_at_ms   INTEGER,
        revoked_at_ms   INTEGER,
        version         INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX keys_project ON keys (project_id, id);
    CREATE INDEX keys_plan ON keys (plan);

    CREATE TABLE key_secrets (
        hash           TEXT PRIMARY KEY,
        key_id         TEXT NOT NULL,
        valid_until_ms INTEGER
    ) STRICT;
    CREATE INDEX key_secrets_key ON key_secrets (key_id);

    CREATE TABLE admin_tokens (
        hash          TEXT PRIMARY KEY,
        project_id    TEXT,
        created_at_ms INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE usage (
        id                TEXT PRIMARY KEY,
        ts_ms             INTEGER NOT NULL,
        project_id        TEXT NOT NULL,
        key_id            TEXT NOT NULL,
        endpoint          TEXT NOT NULL,
        model             TEXT,
        status            INTEGER NOT NULL,
        counted           INTEGER NOT NULL,
        requests          INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_micros       INTEGER NOT NULL,
        latency_ms        INTEGER NOT NULL,
        provider          TEXT NOT NULL,
        cached_tokens     INTEGER NOT NULL,
        uncached_cost_micros INTEGER NOT NULL,
        usage_source      TEXT NOT NULL,
        price_version     TEXT,
        client_ip         TEXT,
        anonymous_id      TEXT
    ) STRICT;
    CREATE INDEX usage_ts ON usage (ts_ms, id);
    CREATE INDEX usage_project_ts ON usage (project_id, ts_ms, id);
    CREATE INDEX usage_key_ts ON usage (key_id, ts_ms, id);
    "#,
    // 2: a record whose cost was estimated (a model without a known price).
    r#"
    ALTER TABLE usage ADD COLUMN price_estimated INTEGER NOT NULL DEFAULT 0;
    "#,
    // 3: project settings (JSON, '{}' reads as the defaults); admin tokens get an id
    // (the first 16 hex digits of their hash), a name, a prefix, expiry and revocation.
    r#"
    ALTER TABLE projects ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE admin_tokens ADD COLUMN id TEXT;
    ALTER TABLE admin_tokens ADD COLUMN name TEXT;
    ALTER TABLE admin_tokens ADD COLUMN prefix TEXT;
    ALTER TABLE admin_tokens ADD COLUMN expires_at_ms INTEGER;
    ALTER TABLE admin_tokens ADD COLUMN revoked_at_ms INTEGER;
    UPDATE admin_tokens SET id = substr(hash, 1, 16);
    CREATE UNIQUE INDEX admin_tokens_id ON admin_tokens (id);
    CREATE INDEX admin_tokens_project ON admin_tokens (project_id, id);
    "#,
    // 4: an anonymous visitor's records, for attaching them to a key without a scan.
    r#"
    CREATE INDEX usage_anonymous_ts ON usage (project_id, anonymous_id, ts_ms, id)
        WHERE anonymous_id IS NOT NULL;
    "#,
    // 5: a plan's time zone (an IANA name; NULL: the project's, else UTC).
    r#"
    ALTER TABLE plans ADD COLUMN time_zone TEXT;
    "#,
    // 6: hourly usage rollups (see crates/analytics), updated in the transaction that
    // inserts ledger rows; the rows already stored are rolled up once here.
    include_str!("migrations_0006_usage_hourly.sql"),
    // 7: the upstream's own request id (its `x-request-id`).
    "ALTER TABLE usage ADD COLUMN upstream_request_id TEXT;",
    // 8: projections of the hourly rollup, per hour and per UTC day
    // (crates/analytics/src/projection.rs), filled from the rollups stored.
    include_str!("migrations_0008_rollup_projections.sql"),
    // 9: the counted rollup the counter rebuild reads (tollgate_store::totals).
    include_str!("migrations_0009_usage_counted.sql"),
    // 10: alerts: rules, channels, the outbox (events, deliveries, attempts).
    include_str!("migrations_0010_alerts.sql"),
    // 11: `usage.seq`, the ledger in commit order, and the sinks' cursors
    // (tollgate_store::feed, the usage events sink).
    include_str!("migrations_0011_usage_seq.sql"),
    // 12: bring-your-own provider keys, sealed (tollgate_store::provider_keys).
    include_str!("migrations_0012_provider_keys.sql"),
    // 13: the keys' volumes, a narrow key projection (no counted flag, no latency
    // histogram) for the per-hour key series and the top keys.
    include_str!("migrations_0013_key_volume.sql"),
];

/// What a connection is for; readers cannot write by accident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Writer,
    /// Writes the ledger: many small commits that responses wait on.
    LedgerWriter,
    Reader,
}

/// How long a connection waits for another connection's write lock before failing
/// with "busy". The catalog and the ledger writer share the file; their transactions
/// are short, so this is only reached when something is badly wrong.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL's size after a checkpoint resets it, at most (`journal_size_limit`): a burst
/// of writes does not leave a file that large behind.
pub(crate) const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Opens a connection for the ledger writer: `synchronous = NORMAL`, or `FULL` with
/// `fsync` (`durability = "fsync"`: every commit survives a power cut).
pub(crate) fn open_ledger_writer(path: &Path, fsync: bool) -> StoreResult<Connection> {
    let conn = open_connection(path, Role::LedgerWriter)?;
    if fsync {
        conn.pragma_update(None, "synchronous", "FULL").map_err(sql_error)?;
    }
    Ok(conn)
}

/// Opens a connection to `path` in WAL mode with `synchronous = FULL`, or `NORMAL`
/// for the ledger writer (see the crate documentation for why, and
/// [`open_ledger_writer`] for `durability = "fsync"`).
/// Prepared statements each connection keeps (see [`open_connection`]).
const STATEMENT_CACHE: usize = 128;

pub(crate) fn open_connection(path: &Path, role: Role) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::unavailable_with_source(format!("cannot open database {}: {e}", path.display()), e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_error)?;
    // A ledger commit alone runs 15 distinct statements (the insert, the sequence, the
    // rollup and its ten projections, the counted sums); rusqlite's default cache of
    // 16, cycled through in order, let a few more evict each other every commit.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The journal mode is stored in the file: the first connection switches it and
    // the others find it set. WAL lets the ledger reader run beside the writers.
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(sql_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::internal(format!(
            "database {} refused WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    // The catalog (rare writes) fsyncs every commit: it survives power loss. The
    // ledger commits in WAL mode with NORMAL: a commit survives the process being
    // killed (the WAL is in the OS before `flush` returns) but not a power cut before
    // the next checkpoint; in exchange no response waits for an fsync.
    let synchronous = if role == Role::LedgerWriter { "NORMAL" } else { "FULL" };
    conn.pragma_update(None, "synchronous", synchronous).map_err(sql_error)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT).map_err(sql_error)?;
    if role == Role::LedgerWriter {
        // Four B-trees (the table and its indexes) outgrow SQLite's 2 MB default
        // cache quickly; a bigger cache keeps inserts from re-reading pages.
        conn.pragma_update(None, "cache_size", -32_000).map_err(sql_error)?;
        // Checkpoints run on the ledger's checkpointer thread instead (see ledger.rs).
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(sql_error)?;
    }
    if role == Role::Reader {
        conn.pragma_update(None, "query_only", true).map_err(sql_error)?;
    }
    Ok(conn)
}

/// Applies every migration the database has not had yet.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let applied: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sql_error)?;
    let applied = usize::try_from(applied)
        .map_err(|_| StoreError::internal(format!("database has a negative schema version {applied}")))?;
    if applied > MIGRATIONS.len() {
        return Err(StoreError::internal(format!(
            "database schema version {applied} is newer than this build supports ({}): \
             refusing to open it with an older tollgate",
            MIGRATIONS.len()
        )));
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        // IMMEDIATE takes the write lock up front, so two processes starting at once
        // cannot both apply the same migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
        let current: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(sql_error)?;
        if current > i64::try_from(done).unwrap_or(i64::MAX) {
            // Another process migrated meanwhile.
            continue;
        }
        tx.execute_batch(sql).map_err(sql_error)?;
        tx.pragma_update(None, "user_version", i64::try_from(done + 1).unwrap_or(i64::MAX)).map_err(sql_error)?;
        tx.commit().map_err(sql_error)?;
        tracing::info!(version = done + 1, "applied store schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_newer_databases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = open_connection(&path, Role::Writer).unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);

        conn.pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(migrate(&mut conn), Err(StoreError::Internal { .. })));
    }

    #[test]
    fn version_1_rows_get_default_settings_and_token_ids() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open_connection(&path, Role::Writer).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let hash = "ab".repeat(32);
        conn.execute("INSERT INTO admin_tokens (hash, project_id, created_at_ms) VALUES (?1, NULL, 1)", [&hash])
            .unwrap();
        conn.execute("INSERT INTO projects (id, name, created_at_ms) VALUES ('p', 'P', 1)", []).unwrap();
        drop(conn);
        let mut conn = open_connection(&path, Role::Writer).unwrap();
        migrate(&mut conn).unwrap();
        let id: String = conn.query_row("SELECT id FROM admin_tokens", [], |r| r.get(0)).unwrap();
        assert_eq!(id, hash[..16]);
        let settings: String = conn.query_row("SELECT settings FROM projects", [], |r| r.get(0)).unwrap();
        let settings: tollgate_core::ProjectSettings = serde_json::from_str(&settings).unwrap();
        assert_eq!(settings, tollgate_core::ProjectSettings::default());
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        migrate(&mut open_connection(&path, Role::Writer).unwrap()).unwrap();
        let reader = open_connection(&path, Role::Reader).unwrap();
        assert!(reader.execute("DELETE FROM usage", []).is_err());
    }
}
