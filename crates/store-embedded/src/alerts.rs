//! The alert store on SQLite ([`AlertStore`]): rules and channels as JSON bodies,
//! the outbox as rows (tables in `migrations_0010_alerts.sql`). Its own connection,
//! used from the blocking pool; a claim is one `UPDATE … RETURNING`, so two workers
//! (there is one per process, but tests run several) never hold the same delivery.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use tollgate_alerts::{
    AlertStore, AttemptOutcome, AttemptRecord, ChannelRecord, DeliveryQuery, DeliveryRecord, DeliveryStatus,
    EventRecord, RuleRecord,
};
use tollgate_store::{StoreError, StoreResult};

use crate::sql_error;

/// The SQLite alert store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedAlerts {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for EmbeddedAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedAlerts").finish_non_exhaustive()
    }
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::internal_with_source(format!("alert store JSON: {e}"), e)
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(json_error)
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(json_error)
}

const DELIVERY_COLUMNS: &str = "id, event_id, channel_id, project_id, status, attempts, next_attempt_ms, \
                                last_error, delivered_at_ms, created_at_ms";

fn delivery(row: &Row) -> rusqlite::Result<DeliveryRecord> {
    let status: String = row.get(4)?;
    let attempts: i64 = row.get(5)?;
    Ok(DeliveryRecord {
        id: row.get(0)?,
        event_id: row.get(1)?,
        channel_id: row.get(2)?,
        project_id: row.get(3)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_ms: row.get(6)?,
        last_error: row.get(7)?,
        delivered_at_ms: row.get(8)?,
        created_at_ms: row.get(9)?,
    })
}

impl EmbeddedAlerts {
    pub(crate) fn new(conn: Connection) -> Self {
        Self { conn: Arc::new(Mutex::new(conn)) }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        crate::run_blocking(&self.conn, f).await
    }

    async fn put_body(
        &self,
        table: &'static str,
        id: String,
        project: Option<String>,
        body: String,
        create: bool,
    ) -> StoreResult<()> {
        self.run(move |conn| {
            if create {
                let sql = format!("INSERT INTO {table} (id, project_id, body) VALUES (?1, ?2, ?3)");
                conn.execute(&sql, params![id, project, body]).map_err(|e| match sql_error(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("'{id}' exists")),
                    other => other,
                })?;
            } else {
                let sql = format!("UPDATE {table} SET project_id = ?2, body = ?3 WHERE id = ?1");
                let n = conn.execute(&sql, params![id, project, body]).map_err(sql_error)?;
                if n == 0 {
                    return Err(StoreError::not_found(if table == "alert_rules" { "rule" } else { "channel" }, id));
                }
            }
            Ok(())
        })
        .await
    }

    async fn get_body<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        id: &str,
    ) -> StoreResult<Option<T>> {
        let id = id.to_owned();
        self.run(move |conn| {
            let sql = format!("SELECT body FROM {table} WHERE id = ?1");
            let body: Option<String> = conn.query_row(&sql, [id], |r| r.get(0)).optional().map_err(sql_error)?;
            body.map(|b| from_json(&b)).transpose()
        })
        .await
    }

    async fn list_bodies<T: serde::de::DeserializeOwned + Send + 'static>(
        &self,
        table: &'static str,
        project: Option<&str>,
    ) -> StoreResult<Vec<T>> {
        let project = project.map(str::to_owned);
        self.run(move |conn| {
            let (sql, bind): (String, Vec<String>) = match project {
                Some(p) => (format!("SELECT body FROM {table} WHERE project_id = ?1 ORDER BY id"), vec![p]),
                None => (format!("SELECT body FROM {table} ORDER BY id"), vec![]),
            };
            let mut stmt = conn.prepare(&sql).map_err(sql_error)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(bind), |r| r.get::<_, String>(0))
                .map_err(sql_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_error)?;
            rows.iter().map(|b| from_json(b)).collect()
        })
        .await
    }

    async fn delete(&self, table: &'static str, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.run(move |conn| {
            let sql = format!("DELETE FROM {table} WHERE id = ?1");
            Ok(conn.execute(&sql, [id]).map_err(sql_error)? > 0)
        })
        .await
    }
}

#[async_trait]
impl AlertStore for EmbeddedAlerts {
    async fn create_rule(&self, rule: RuleRecord) -> StoreResult<()> {
        let body = to_json(&rule)?;
        self.put_body("alert_rules", rule.id, rule.project_id, body, true).await
    }
    async fn update_rule(&self, rule: RuleRecord) -> StoreResult<()> {
        let body = to_json(&rule)?;
        self.put_body("alert_rules", rule.id, rule.project_id, body, false).await
    }
    async fn get_rule(&self, id: &str) -> StoreResult<Option<RuleRecord>> {
        self.get_body("alert_rules", id).await
    }
    async fn list_rules(&self, project_id: Option<&str>) -> StoreResult<Vec<RuleRecord>> {
        self.list_bodies("alert_rules", project_id).await
    }
    async fn delete_rule(&self, id: &str) -> StoreResult<bool> {
        self.delete("alert_rules", id).await
    }

    async fn create_channel(&self, channel: ChannelRecord) -> StoreResult<()> {
        let body = to_json(&channel)?;
        self.put_body("alert_channels", channel.id, channel.project_id, body, true).await
    }
    async fn update_channel(&self, channel: ChannelRecord) -> StoreResult<()> {
        let body = to_json(&channel)?;
        self.put_body("alert_channels", channel.id, channel.project_id, body, false).await
    }
    async fn get_channel(&self, id: &str) -> StoreResult<Option<ChannelRecord>> {
        self.get_body("alert_channels", id).await
    }
    async fn list_channels(&self, project_id: Option<&str>) -> StoreResult<Vec<ChannelRecord>> {
        self.list_bodies("alert_channels", project_id).await
    }
    async fn delete_channel(&self, id: &str) -> StoreResult<bool> {
        self.delete("alert_channels", id).await
    }

    async fn enqueue(&self, event: EventRecord, deliveries: Vec<DeliveryRecord>) -> StoreResult<bool> {
        let data = to_json(&event.data)?;
        self.run(move |conn| {
            let tx = conn.transaction().map_err(sql_error)?;
            let n = tx
                .execute(
                    "INSERT INTO alert_events (id, project_id, rule_id, kind, data, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
                    params![event.id, event.project_id, event.rule_id, event.kind, data, event.created_at_ms],
                )
                .map_err(sql_error)?;
            if n == 0 {
                return Ok(false);
            }
            for d in &deliveries {
                tx.execute(
                    "INSERT INTO alert_deliveries (id, event_id, channel_id, project_id, status, attempts,
                         next_attempt_ms, last_error, delivered_at_ms, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (id) DO NOTHING",
                    params![
                        d.id,
                        d.event_id,
                        d.channel_id,
                        d.project_id,
                        d.status.as_str(),
                        i64::from(d.attempts),
                        d.next_attempt_ms,
                        d.last_error,
                        d.delivered_at_ms,
                        d.created_at_ms
                    ],
                )
                .map_err(sql_error)?;
            }
            tx.commit().map_err(sql_error)?;
            Ok(true)
        })
        .await
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>> {
        let id = id.to_owned();
        self.run(move |conn| {
            let row = conn
                .query_row(
                    "SELECT id, project_id, rule_id, kind, data, created_at_ms FROM alert_events WHERE id = ?1",
                    [id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, i64>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(sql_error)?;
            row.map(|(id, project_id, rule_id, kind, data, created_at_ms)| {
                Ok(EventRecord { id, project_id, rule_id, kind, data: from_json(&data)?, created_at_ms })
            })
            .transpose()
        })
        .await
    }

    async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<DeliveryRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let sql = format!(
                "UPDATE alert_deliveries SET claimed_until_ms = ?1 + ?2
                 WHERE id IN (SELECT id FROM alert_deliveries
                              WHERE status = 'pending' AND next_attempt_ms <= ?1
                                AND (claimed_until_ms IS NULL OR claimed_until_ms < ?1)
                              ORDER BY next_attempt_ms, id LIMIT ?3)
                 RETURNING {DELIVERY_COLUMNS}"
            );
            let mut stmt = conn.prepare(&sql).map_err(sql_error)?;
            let mut rows = stmt
                .query_map(params![now_ms, lease_ms, limit], delivery)
                .map_err(sql_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_error)?;
            rows.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
            Ok(rows)
        })
        .await
    }

    async fn record_attempt(&self, attempt: AttemptRecord, outcome: AttemptOutcome) -> StoreResult<()> {
        self.run(move |conn| {
            let tx = conn.transaction().map_err(sql_error)?;
            tx.execute(
                "INSERT INTO alert_attempts (delivery_id, attempt, at_ms, ok, status_code, error)
                 VALUES (?1, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM alert_attempts WHERE delivery_id = ?1),
                         ?2, ?3, ?4, ?5)",
                params![attempt.delivery_id, attempt.at_ms, attempt.ok, attempt.status_code, attempt.error],
            )
            .map_err(sql_error)?;
            let (status, next, delivered) = match outcome {
                AttemptOutcome::Delivered => ("delivered", None, Some(attempt.at_ms)),
                AttemptOutcome::RetryAt(at) => ("pending", Some(at), None),
                AttemptOutcome::Dead => ("dead", None, None),
            };
            tx.execute(
                "UPDATE alert_deliveries SET status = ?2, attempts = attempts + 1,
                     next_attempt_ms = COALESCE(?3, next_attempt_ms), claimed_until_ms = NULL,
                     last_error = ?4, delivered_at_ms = COALESCE(?5, delivered_at_ms)
                 WHERE id = ?1",
                params![attempt.delivery_id, status, next, attempt.error, delivered],
            )
            .map_err(sql_error)?;
            tx.commit().map_err(sql_error)
        })
        .await
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<Option<DeliveryRecord>> {
        let id = id.to_owned();
        self.run(move |conn| {
            let sql = format!("SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = ?1");
            conn.query_row(&sql, [id], delivery).optional().map_err(sql_error)
        })
        .await
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> StoreResult<Vec<DeliveryRecord>> {
        self.run(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries
                 WHERE (?1 IS NULL OR project_id = ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR event_id = ?3)
                 ORDER BY created_at_ms DESC, id DESC LIMIT ?4"
            );
            let mut stmt = conn.prepare(&sql).map_err(sql_error)?;
            let status = query.status.map(DeliveryStatus::as_str);
            let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
            stmt.query_map(params![query.project_id, status, query.event_id, limit], delivery)
                .map_err(sql_error)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql_error)
        })
        .await
    }

    async fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<AttemptRecord>> {
        let id = delivery_id.to_owned();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT delivery_id, attempt, at_ms, ok, status_code, error FROM alert_attempts
                     WHERE delivery_id = ?1 ORDER BY attempt",
                )
                .map_err(sql_error)?;
            stmt.query_map([id], |r| {
                Ok(AttemptRecord {
                    delivery_id: r.get(0)?,
                    attempt: u32::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    at_ms: r.get(2)?,
                    ok: r.get(3)?,
                    status_code: r.get::<_, Option<i64>>(4)?.and_then(|c| u16::try_from(c).ok()),
                    error: r.get(5)?,
                })
            })
            .map_err(sql_error)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_error)
        })
        .await
    }

    async fn redeliver(&self, delivery_id: &str, now_ms: i64) -> StoreResult<bool> {
        let id = delivery_id.to_owned();
        self.run(move |conn| {
            let n = conn
                .execute(
                    "UPDATE alert_deliveries SET status = 'pending', attempts = 0, next_attempt_ms = ?2,
                         claimed_until_ms = NULL WHERE id = ?1",
                    params![id, now_ms],
                )
                .map_err(sql_error)?;
            Ok(n > 0)
        })
        .await
    }
}
