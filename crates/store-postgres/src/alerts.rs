//! The alert store on PostgreSQL ([`AlertStore`]), tables in
//! `migrations/0010_alerts.sql`. Claims are `UPDATE … WHERE id IN (SELECT … FOR
//! UPDATE SKIP LOCKED) RETURNING …`: of many instances polling at once, each due
//! delivery goes to exactly one, and none waits on another's locked rows.

use async_trait::async_trait;
use deadpool_postgres::Pool;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tollgate_alerts::{
    AlertStore, AttemptOutcome, AttemptRecord, ChannelRecord, DeliveryQuery, DeliveryRecord, DeliveryStatus,
    EventRecord, RuleRecord,
};
use tollgate_store::{StoreError, StoreResult};

use crate::{pool_error, sql_error};

/// The PostgreSQL alert store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresAlerts {
    pool: Pool,
}

impl std::fmt::Debug for PostgresAlerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresAlerts").finish_non_exhaustive()
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

fn delivery(row: &Row) -> DeliveryRecord {
    let status: String = row.get(4);
    let attempts: i64 = row.get(5);
    DeliveryRecord {
        id: row.get(0),
        event_id: row.get(1),
        channel_id: row.get(2),
        project_id: row.get(3),
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: u32::try_from(attempts).unwrap_or(0),
        next_attempt_ms: row.get(6),
        last_error: row.get(7),
        delivered_at_ms: row.get(8),
        created_at_ms: row.get(9),
    }
}

impl PostgresAlerts {
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    async fn put_body(
        &self,
        table: &str,
        id: &str,
        project: Option<&str>,
        body: &str,
        create: bool,
    ) -> StoreResult<()> {
        let client = self.client().await?;
        if create {
            let sql = format!("INSERT INTO {table} (id, project_id, body) VALUES ($1, $2, $3)");
            client.execute(&sql, &[&id, &project, &body]).await.map_err(|e| match sql_error(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("'{id}' exists")),
                other => other,
            })?;
        } else {
            let sql = format!("UPDATE {table} SET project_id = $2, body = $3 WHERE id = $1");
            if client.execute(&sql, &[&id, &project, &body]).await.map_err(sql_error)? == 0 {
                return Err(StoreError::not_found(if table == "alert_rules" { "rule" } else { "channel" }, id));
            }
        }
        Ok(())
    }

    async fn get_body<T: serde::de::DeserializeOwned>(&self, table: &str, id: &str) -> StoreResult<Option<T>> {
        let client = self.client().await?;
        let row =
            client.query_opt(&format!("SELECT body FROM {table} WHERE id = $1"), &[&id]).await.map_err(sql_error)?;
        row.map(|r| from_json(r.get::<_, &str>(0))).transpose()
    }

    async fn list_bodies<T: serde::de::DeserializeOwned>(
        &self,
        table: &str,
        project: Option<&str>,
    ) -> StoreResult<Vec<T>> {
        let client = self.client().await?;
        let rows = match project {
            Some(p) => client
                .query(&format!("SELECT body FROM {table} WHERE project_id = $1 ORDER BY id"), &[&p])
                .await
                .map_err(sql_error)?,
            None => client.query(&format!("SELECT body FROM {table} ORDER BY id"), &[]).await.map_err(sql_error)?,
        };
        rows.iter().map(|r| from_json(r.get::<_, &str>(0))).collect()
    }

    async fn delete(&self, table: &str, id: &str) -> StoreResult<bool> {
        let client = self.client().await?;
        Ok(client.execute(&format!("DELETE FROM {table} WHERE id = $1"), &[&id]).await.map_err(sql_error)? > 0)
    }
}

#[async_trait]
impl AlertStore for PostgresAlerts {
    async fn create_rule(&self, rule: RuleRecord) -> StoreResult<()> {
        self.put_body("alert_rules", &rule.id, rule.project_id.as_deref(), &to_json(&rule)?, true).await
    }
    async fn update_rule(&self, rule: RuleRecord) -> StoreResult<()> {
        self.put_body("alert_rules", &rule.id, rule.project_id.as_deref(), &to_json(&rule)?, false).await
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
        self.put_body("alert_channels", &channel.id, channel.project_id.as_deref(), &to_json(&channel)?, true).await
    }
    async fn update_channel(&self, channel: ChannelRecord) -> StoreResult<()> {
        self.put_body("alert_channels", &channel.id, channel.project_id.as_deref(), &to_json(&channel)?, false).await
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
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql_error)?;
        let n = tx
            .execute(
                "INSERT INTO alert_events (id, project_id, rule_id, kind, data, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                &[&event.id, &event.project_id, &event.rule_id, &event.kind, &data, &event.created_at_ms],
            )
            .await
            .map_err(sql_error)?;
        if n == 0 {
            return Ok(false);
        }
        for d in &deliveries {
            let attempts = i64::from(d.attempts);
            let params: [&(dyn ToSql + Sync); 10] = [
                &d.id,
                &d.event_id,
                &d.channel_id,
                &d.project_id,
                &d.status.as_str(),
                &attempts,
                &d.next_attempt_ms,
                &d.last_error,
                &d.delivered_at_ms,
                &d.created_at_ms,
            ];
            tx.execute(
                "INSERT INTO alert_deliveries (id, event_id, channel_id, project_id, status, attempts,
                     next_attempt_ms, last_error, delivered_at_ms, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
                &params,
            )
            .await
            .map_err(sql_error)?;
        }
        tx.commit().await.map_err(sql_error)?;
        Ok(true)
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, project_id, rule_id, kind, data, created_at_ms FROM alert_events WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(sql_error)?;
        row.map(|r| {
            Ok(EventRecord {
                id: r.get(0),
                project_id: r.get(1),
                rule_id: r.get(2),
                kind: r.get(3),
                data: from_json(r.get::<_, &str>(4))?,
                created_at_ms: r.get(5),
            })
        })
        .transpose()
    }

    async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<DeliveryRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let until = now_ms.saturating_add(lease_ms);
        let client = self.client().await?;
        let sql = format!(
            "UPDATE alert_deliveries SET claimed_until_ms = $2
             WHERE id IN (SELECT id FROM alert_deliveries
                          WHERE status = 'pending' AND next_attempt_ms <= $1
                            AND (claimed_until_ms IS NULL OR claimed_until_ms < $1)
                          ORDER BY next_attempt_ms, id LIMIT $3
                          FOR UPDATE SKIP LOCKED)
             RETURNING {DELIVERY_COLUMNS}"
        );
        let rows = client.query(&sql, &[&now_ms, &until, &limit]).await.map_err(sql_error)?;
        let mut out: Vec<DeliveryRecord> = rows.iter().map(delivery).collect();
        out.sort_by(|a, b| (a.next_attempt_ms, &a.id).cmp(&(b.next_attempt_ms, &b.id)));
        Ok(out)
    }

    async fn record_attempt(&self, attempt: AttemptRecord, outcome: AttemptOutcome) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(sql_error)?;
        let code = attempt.status_code.map(i64::from);
        // The delivery's row lock serialises attempts of one delivery, so the number
        // taken below is unique.
        tx.execute("SELECT 1 FROM alert_deliveries WHERE id = $1 FOR UPDATE", &[&attempt.delivery_id])
            .await
            .map_err(sql_error)?;
        tx.execute(
            "INSERT INTO alert_attempts (delivery_id, attempt, at_ms, ok, status_code, error)
             VALUES ($1, (SELECT COALESCE(MAX(attempt), 0) + 1 FROM alert_attempts WHERE delivery_id = $1),
                     $2, $3, $4, $5)",
            &[&attempt.delivery_id, &attempt.at_ms, &attempt.ok, &code, &attempt.error],
        )
        .await
        .map_err(sql_error)?;
        let (status, next, delivered): (&str, Option<i64>, Option<i64>) = match outcome {
            AttemptOutcome::Delivered => ("delivered", None, Some(attempt.at_ms)),
            AttemptOutcome::RetryAt(at) => ("pending", Some(at), None),
            AttemptOutcome::Dead => ("dead", None, None),
        };
        tx.execute(
            "UPDATE alert_deliveries SET status = $2, attempts = attempts + 1,
                 next_attempt_ms = COALESCE($3, next_attempt_ms), claimed_until_ms = NULL,
                 last_error = $4, delivered_at_ms = COALESCE($5, delivered_at_ms)
             WHERE id = $1",
            &[&attempt.delivery_id, &status, &next, &attempt.error, &delivered],
        )
        .await
        .map_err(sql_error)?;
        tx.commit().await.map_err(sql_error)
    }

    async fn get_delivery(&self, id: &str) -> StoreResult<Option<DeliveryRecord>> {
        let client = self.client().await?;
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM alert_deliveries WHERE id = $1");
        Ok(client.query_opt(&sql, &[&id]).await.map_err(sql_error)?.as_ref().map(delivery))
    }

    async fn list_deliveries(&self, query: DeliveryQuery) -> StoreResult<Vec<DeliveryRecord>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM alert_deliveries
             WHERE ($1::TEXT IS NULL OR project_id = $1) AND ($2::TEXT IS NULL OR status = $2)
               AND ($3::TEXT IS NULL OR event_id = $3)
             ORDER BY created_at_ms DESC, id DESC LIMIT $4"
        );
        let status = query.status.map(DeliveryStatus::as_str);
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let rows =
            client.query(&sql, &[&query.project_id, &status, &query.event_id, &limit]).await.map_err(sql_error)?;
        Ok(rows.iter().map(delivery).collect())
    }

    async fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<AttemptRecord>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT delivery_id, attempt, at_ms, ok, status_code, error FROM alert_attempts
                 WHERE delivery_id = $1 ORDER BY attempt",
                &[&delivery_id],
            )
            .await
            .map_err(sql_error)?;
        Ok(rows
            .iter()
            .map(|r| AttemptRecord {
                delivery_id: r.get(0),
                attempt: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                at_ms: r.get(2),
                ok: r.get(3),
                status_code: r.get::<_, Option<i64>>(4).and_then(|c| u16::try_from(c).ok()),
                error: r.get(5),
            })
            .collect())
    }

    async fn redeliver(&self, delivery_id: &str, now_ms: i64) -> StoreResult<bool> {
        let client = self.client().await?;
        let n = client
            .execute(
                "UPDATE alert_deliveries SET status = 'pending', attempts = 0, next_attempt_ms = $2,
                     claimed_until_ms = NULL WHERE id = $1",
                &[&delivery_id, &now_ms],
            )
            .await
            .map_err(sql_error)?;
        Ok(n > 0)
    }
}
