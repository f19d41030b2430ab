//! The outbox and the delivery worker.
//!
//! A crossing becomes an [`EventRecord`] whose id is a hash of (rule, subject, limit
//! slot, window start, threshold), and one [`DeliveryRecord`] per channel whose id is
//! a hash of (event, channel): [`AlertStore::enqueue`] writes them in one transaction
//! unless the event exists, so detecting the same crossing twice (a refund and a
//! re-charge, a replay after a restart, two instances failing open) sends nothing
//! twice. The delivery id is the `webhook-id` receivers see, the same on every attempt.
//!
//! The worker claims due deliveries with a lease (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL: of many instances one sends each delivery), sends, records the attempt
//! and either marks the delivery delivered, schedules the next attempt (the retry
//! schedule, each delay ±20 % jitter), or after the last one marks it dead. A process
//! killed mid-send leaves the delivery claimed until its lease runs out; then any
//! worker retries it (at least once, never silently dropped; receivers dedupe on
//! `webhook-id`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tollgate_core::calendar::to_rfc3339;
use tollgate_store::{StoreError, StoreResult};

use crate::channels::{SendError, SendSettings};
use crate::detect::{Crossing, RuleSet, Watch};
use crate::seal::Sealer;
use crate::{AlertStore, AttemptOutcome, AttemptRecord, ChannelRecord, DeliveryRecord, DeliveryStatus, EventRecord};

pub const KIND_THRESHOLD: &str = "limit.threshold_crossed";
pub const KIND_TEST: &str = "alert.test";

/// What a webhook receives (Standard Webhooks' `{type, timestamp, data}` shape), and
/// what Slack and e-mail render.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    #[serde(rename = "type")]
    pub kind: String,
    pub timestamp: String,
    pub event_id: String,
    pub data: Value,
}

type Value = serde_json::Value;

impl EventData {
    pub fn title(&self) -> String {
        let d = &self.data;
        if self.kind == KIND_TEST {
            return format!("Test alert from tollgate ({})", d["channel_id"].as_str().unwrap_or("?"));
        }
        if let Some(title) = crate::evaluate::title(self) {
            return title;
        }
        format!(
            "{}: {} {} at {}% ({} of {})",
            d["project_id"].as_str().unwrap_or("?"),
            d["metric"].as_str().unwrap_or("?"),
            d["window"].as_str().unwrap_or("?"),
            d["threshold_percent"],
            d["used"],
            d["limit"]
        )
    }

    /// (label, value) pairs, in order.
    pub fn figures(&self) -> Vec<(String, String)> {
        let d = &self.data;
        let field = |name: &str| match &d[name] {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        if self.kind == KIND_TEST {
            return vec![("Channel".into(), field("channel_id"))];
        }
        if let Some(figures) = crate::evaluate::figures(self, &field) {
            return figures;
        }
        vec![
            ("Project".into(), field("project_id")),
            ("Subject".into(), field("subject")),
            ("Limit".into(), format!("{} per {}", field("metric"), field("window"))),
            ("Threshold".into(), format!("{}%", field("threshold_percent"))),
            ("Used".into(), format!("{} of {}", field("used"), field("limit"))),
            ("Window".into(), format!("{} to {}", field("window_start"), field("window_end"))),
            ("Rule".into(), field("rule_id")),
        ]
    }
}

pub(crate) fn hash_id(prefix: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// The id of a crossing's event: the same for the same rule, counter, window and
/// threshold, whoever detects it and however often.
pub fn event_id(c: &Crossing) -> String {
    let s = &c.spec;
    hash_id(
        "evt_",
        &[
            &c.rule_id,
            &c.subject,
            s.metric.as_str(),
            s.window.as_str(),
            s.subject.as_str(),
            s.provider.as_deref().unwrap_or(""),
            s.model.as_deref().unwrap_or(""),
            s.endpoint.as_deref().unwrap_or(""),
            &c.window_start_ms.to_string(),
            &c.threshold.to_string(),
        ],
    )
}

/// The id of one event's delivery to one channel: the `webhook-id`.
pub fn delivery_id(event_id: &str, channel_id: &str) -> String {
    hash_id("msg_", &[event_id, channel_id])
}

/// The event record of a crossing.
pub fn crossing_event(c: &Crossing) -> EventRecord {
    let id = event_id(c);
    let s = &c.spec;
    let data = serde_json::json!({
        "project_id": c.project_id,
        "rule_id": &*c.rule_id,
        "subject": &*c.subject,
        "metric": s.metric.as_str(),
        "window": s.window.as_str(),
        "subject_kind": s.subject.as_str(),
        "provider": s.provider.as_deref(),
        "model": s.model.as_deref(),
        "endpoint": s.endpoint.as_deref(),
        "threshold_percent": c.threshold,
        "limit": s.limit,
        "used": c.used,
        "window_start": to_rfc3339(c.window_start_ms),
        "window_end": to_rfc3339(c.window_end_ms),
    });
    EventRecord {
        id,
        project_id: Some(c.project_id.clone()),
        rule_id: Some(c.rule_id.to_string()),
        kind: KIND_THRESHOLD.into(),
        data,
        created_at_ms: c.at_ms,
    }
}

/// What the webhook body of an event is.
pub fn event_data(event: &EventRecord) -> EventData {
    EventData {
        kind: event.kind.clone(),
        timestamp: to_rfc3339(event.created_at_ms),
        event_id: event.id.clone(),
        data: event.data.clone(),
    }
}

/// Pending deliveries of `event`, one per channel, due at `now_ms`.
pub fn deliveries_for(event: &EventRecord, channels: &[String], now_ms: i64) -> Vec<DeliveryRecord> {
    channels
        .iter()
        .map(|channel_id| DeliveryRecord {
            id: delivery_id(&event.id, channel_id),
            event_id: event.id.clone(),
            channel_id: channel_id.clone(),
            project_id: event.project_id.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_ms: now_ms,
            last_error: None,
            delivered_at_ms: None,
            created_at_ms: now_ms,
        })
        .collect()
}

/// How deliveries are retried and how the worker runs.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// The delay before each retry; after the last, a delivery is dead. So there are
    /// `retry_schedule.len() + 1` attempts.
    pub retry_schedule: Vec<Duration>,
    /// How often the worker looks for due deliveries when not woken.
    pub poll_every: Duration,
    /// How long a claimed delivery is held by its worker.
    pub lease: Duration,
    /// How often rules are reloaded from the store (other instances' changes).
    pub rules_refresh: Duration,
    pub send: SendSettings,
}

/// The alerts machinery one server runs.
pub struct Alerts {
    pub store: Arc<dyn AlertStore>,
    pub watch: Arc<Watch>,
    pub sealer: Option<Sealer>,
    pub settings: DeliverySettings,
    wake: Notify,
}

fn now_ms() -> i64 {
    tollgate_store::clock::now_ms()
}

/// A random factor in [0.8, 1.2].
fn jitter() -> f64 {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) } else { 0.5 };
    0.8 + 0.4 * r
}

impl Alerts {
    pub fn new(
        store: Arc<dyn AlertStore>,
        sealer: Option<Sealer>,
        settings: DeliverySettings,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Crossing>) {
        let (watch, crossings) = Watch::new();
        (Arc::new(Self { store, watch, sealer, settings, wake: Notify::new() }), crossings)
    }

    /// Reloads the rules in force from the store.
    pub async fn reload_rules(&self) -> StoreResult<()> {
        let rules = self.store.list_rules(None).await?;
        self.watch.replace(RuleSet::from_records(&rules));
        Ok(())
    }

    /// Wakes the delivery worker (something became due).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Writes a crossing's event to the outbox once; true if it was new.
    pub async fn write_crossing(&self, crossing: &Crossing) -> StoreResult<bool> {
        let event = crossing_event(crossing);
        let deliveries = deliveries_for(&event, &crossing.channels, now_ms());
        let written = self.store.enqueue(event.clone(), deliveries).await?;
        if written {
            tracing::info!(event = %event.id, project = %crossing.project_id, threshold = crossing.threshold, "alert threshold crossed");
            self.wake();
        }
        Ok(written)
    }

    /// Writes an event and one delivery per channel to the outbox once (by its id);
    /// true if it was new.
    pub async fn write_event(&self, event: EventRecord, channels: &[String]) -> StoreResult<bool> {
        let deliveries = deliveries_for(&event, channels, now_ms());
        let (id, kind) = (event.id.clone(), event.kind.clone());
        let written = self.store.enqueue(event, deliveries).await?;
        if written {
            tracing::info!(event = %id, kind = %kind, "alert event written");
            self.wake();
        }
        Ok(written)
    }

    /// Writes a crossing's event to the outbox (retrying while the store is away).
    pub async fn record_crossing(&self, crossing: &Crossing) -> StoreResult<bool> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.write_crossing(crossing).await {
                Ok(written) => return Ok(written),
                Err(e @ StoreError::Unavailable { .. }) if delay < Duration::from_secs(30) => {
                    tracing::warn!(error = %e, "alert outbox unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes a test event for one channel and wakes the worker; returns the delivery.
    pub async fn test_send(&self, channel: &ChannelRecord) -> StoreResult<DeliveryRecord> {
        let now = now_ms();
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::internal(format!("no randomness: {e}")))?;
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let event = EventRecord {
            id: hash_id("evt_", &[KIND_TEST, &channel.id, &nonce]),
            project_id: channel.project_id.clone(),
            rule_id: None,
            kind: KIND_TEST.into(),
            data: serde_json::json!({ "channel_id": channel.id, "project_id": channel.project_id }),
            created_at_ms: now,
        };
        let deliveries = deliveries_for(&event, std::slice::from_ref(&channel.id), now);
        let delivery = deliveries[0].clone();
        self.store.enqueue(event, deliveries).await?;
        self.wake();
        Ok(delivery)
    }

    /// Writes every crossing the limiter reports to the outbox, until the sender side
    /// is gone or `cancel` fires (then what is queued is still written).
    pub async fn run_outbox(
        self: Arc<Self>,
        mut crossings: mpsc::UnboundedReceiver<Crossing>,
        cancel: CancellationToken,
    ) {
        loop {
            let crossing = tokio::select! {
                c = crossings.recv() => c,
                () = cancel.cancelled() => {
                    crossings.close();
                    crossings.recv().await
                }
            };
            let Some(crossing) = crossing else { return };
            if let Err(e) = self.record_crossing(&crossing).await {
                tracing::error!(error = %e, project = %crossing.project_id, "could not write an alert to the outbox");
            }
        }
    }

    /// Reloads rules periodically.
    pub async fn run_rule_refresh(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.settings.rules_refresh) => {}
            }
            if let Err(e) = self.reload_rules().await {
                tracing::warn!(error = %e, "reloading alert rules failed");
            }
        }
    }

    /// The delivery worker: claims, sends, records, until `cancel` fires.
    pub async fn run_deliveries(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let claimed = match self.deliver_due().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "alert delivery: store unavailable");
                    0
                }
            };
            if claimed > 0 {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_every) => {}
            }
        }
    }

    /// Claims and sends what is due now; returns how many were claimed.
    pub async fn deliver_due(&self) -> StoreResult<usize> {
        let lease = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let due = self.store.claim_due(now_ms(), lease, 16).await?;
        let n = due.len();
        for delivery in due {
            self.deliver_one(delivery).await?;
        }
        Ok(n)
    }

    async fn deliver_one(&self, delivery: DeliveryRecord) -> StoreResult<()> {
        let result = self.attempt(&delivery).await;
        let now = now_ms();
        let attempts = delivery.attempts + 1;
        let (ok, status_code, error) = match &result {
            Ok(code) => (true, *code, None),
            Err(e) => (false, e.status_code, Some(e.message.clone())),
        };
        let outcome = if ok {
            AttemptOutcome::Delivered
        } else {
            match self.settings.retry_schedule.get(attempts as usize - 1) {
                Some(delay) => {
                    let ms = (delay.as_millis() as f64 * jitter()) as i64;
                    AttemptOutcome::RetryAt(now.saturating_add(ms.max(1)))
                }
                None => AttemptOutcome::Dead,
            }
        };
        match (&outcome, &error) {
            (AttemptOutcome::Delivered, _) => {
                tracing::info!(delivery = %delivery.id, channel = %delivery.channel_id, attempts, "alert delivered");
            }
            (AttemptOutcome::Dead, Some(e)) => {
                tracing::warn!(delivery = %delivery.id, channel = %delivery.channel_id, attempts, error = %e, "alert delivery failed for the last time: dead letter");
            }
            (_, Some(e)) => {
                tracing::info!(delivery = %delivery.id, channel = %delivery.channel_id, attempts, error = %e, "alert delivery failed; will retry");
            }
            _ => {}
        }
        let attempt =
            AttemptRecord { delivery_id: delivery.id.clone(), attempt: attempts, at_ms: now, ok, status_code, error };
        self.store.record_attempt(attempt, outcome).await
    }

    async fn attempt(&self, delivery: &DeliveryRecord) -> Result<Option<u16>, SendError> {
        let store_error = |e: StoreError| SendError { status_code: None, message: format!("store: {e}") };
        let event = self
            .store
            .get_event(&delivery.event_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| SendError { status_code: None, message: "the event is gone".into() })?;
        let channel = self
            .store
            .get_channel(&delivery.channel_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| SendError { status_code: None, message: "the channel was deleted".into() })?;
        if !channel.enabled {
            return Err(SendError { status_code: None, message: "the channel is disabled".into() });
        }
        let data = event_data(&event);
        let body = serde_json::to_vec(&data).map_err(|e| SendError { status_code: None, message: e.to_string() })?;
        let now_secs = now_ms().div_euclid(1000);
        crate::channels::send(&channel, &data, &body, &delivery.id, now_secs, self.sealer.as_ref(), &self.settings.send)
            .await
    }
}
