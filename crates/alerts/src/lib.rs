//! Alerts: rules over limits, crossing detection on the limiter's atomic decisions, a
//! durable outbox, and delivery by Standard Webhooks, Slack and SMTP e-mail.
//!
//! - [`AlertStore`]: rules, channels and the outbox (events, their deliveries and
//!   every attempt), implemented by the embedded (SQLite) and PostgreSQL stores and
//!   checked by one [`conformance`] suite.
//! - [`detect`]: the rules in memory ([`detect::RuleSet`]) and
//!   [`detect::AlertingLimiter`], which wraps the limiter and compares each admitted
//!   decision's usage before and after its charge with the rules' thresholds. Those
//!   two numbers are taken inside the limiter's atomic step (the embedded shard lock,
//!   the Redis decision script), so concurrent charges see disjoint intervals and
//!   exactly one of them contains a threshold: one crossing is seen by one request on
//!   one instance. Nothing is allocated unless a threshold is crossed.
//! - [`outbox`]: a crossing becomes an event with a deterministic id per (rule,
//!   counter, window, threshold) and one delivery per channel, inserted once (a
//!   re-detection after a restart or a refund adds nothing); the delivery worker
//!   claims due deliveries (`FOR UPDATE SKIP LOCKED` on PostgreSQL), sends, and
//!   retries with exponential backoff and jitter until the last attempt, then marks
//!   the delivery dead (listed, and redeliverable).
//! - [`channels`]: Standard Webhooks signatures, Slack blocks, e-mail with lettre,
//!   and the outbound URL check.
//! - [`seal`] (the `tollgate-seal` crate, shared with BYOK provider keys): AES-256-GCM
//!   for the secrets channels need later (webhook signing secrets, Slack URLs, SMTP
//!   passwords), with a key id in every ciphertext.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tollgate_core::{Metric, SubjectKind, Window};
use tollgate_store::StoreResult;

pub mod channels;
pub mod conformance;
pub mod detect;
pub mod evaluate;
pub mod outbox;
/// Sealing of channel secrets: the `tollgate-seal` crate.
pub use tollgate_seal as seal;

/// The thresholds a limit rule gets when it names none.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [80, 90, 100];

/// Which limits a rule watches: every field `None` is "any".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl LimitMatcher {
    pub fn matches(&self, spec: &tollgate_core::LimitSpec) -> bool {
        self.metric.is_none_or(|m| m == spec.metric)
            && self.window.is_none_or(|w| w == spec.window)
            && self.subject.is_none_or(|s| s == spec.subject)
            && scope_matches(self.provider.as_deref(), spec.provider.as_deref())
            && scope_matches(self.model.as_deref(), spec.model.as_deref())
            && scope_matches(self.endpoint.as_deref(), spec.endpoint.as_deref())
    }
}

fn scope_matches(wanted: Option<&str>, actual: Option<&str>) -> bool {
    wanted.is_none_or(|w| actual == Some(w))
}

/// What a rule watches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// A limit crossing thresholds, detected on the limiter's decision.
    #[default]
    LimitThreshold,
    /// A day or month quota projected (analytics forecast) to run out before its
    /// window ends; evaluated periodically.
    Forecast,
    /// An hour far from its usual level (analytics anomalies); evaluated periodically.
    Anomaly,
}

impl RuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::LimitThreshold => "limit_threshold",
            RuleKind::Forecast => "forecast",
            RuleKind::Anomaly => "anomaly",
        }
    }
}

/// An alert rule: a project's (`project_id`), or an operator default (`None`) that
/// applies to every project with no enabled rule of its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub id: String,
    pub project_id: Option<String>,
    pub name: Option<String>,
    /// What kind of rule (older records: a limit threshold rule).
    #[serde(default)]
    pub kind: RuleKind,
    /// Forecast and anomaly rules: only this key (of the rule's project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Which limits (threshold and forecast rules); an anomaly rule's `metric` is the
    /// metric watched and its `subject` (`key` or `project`) what is compared.
    pub matcher: LimitMatcher,
    /// Percentages of the limit, ascending, 1 to 1000 (threshold rules; empty for
    /// the others).
    pub thresholds: Vec<u32>,
    /// Anomaly rules: the robust z-score an hour must reach (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_threshold: Option<f64>,
    /// Anomaly rules: the least volume (observed or baseline) worth an alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_volume: Option<u64>,
    /// Threshold rules: also send a `resolved` event when a crossed threshold's
    /// window has ended.
    #[serde(default)]
    pub notify_resolved: bool,
    /// Channel ids (of the rule's project, or operator channels).
    pub channels: Vec<String>,
    pub enabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// How a channel sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Webhook,
    Slack,
    Email,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }
}

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// STARTTLS on a plain connection (port 587), required.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only for a relay on the local host or network.
    None,
}

/// What a channel keeps in clear (nothing secret: the secret is sealed beside it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// Webhook: where to POST. (A Slack URL is a secret: sealed, never here.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// E-mail: the SMTP relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_tls: Option<SmtpTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
}

/// A channel: where alerts go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    pub id: String,
    pub project_id: Option<String>,
    pub name: Option<String>,
    pub kind: ChannelKind,
    pub config: ChannelConfig,
    /// The channel's secret (webhook signing secret, Slack URL, SMTP password),
    /// sealed by [`seal::Sealer`]; never in clear.
    pub sealed_secret: Option<String>,
    /// The secret's last four characters, to tell secrets apart.
    pub secret_hint: Option<String>,
    pub enabled: bool,
    pub created_at_ms: i64,
}

/// An alert event: one crossing (or a test), written to the outbox once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Deterministic for a crossing: the same (rule, counter, window, threshold)
    /// always gives the same id.
    pub id: String,
    pub project_id: Option<String>,
    pub rule_id: Option<String>,
    /// `limit.threshold_crossed`, or `alert.test`.
    pub kind: String,
    /// The event as every channel renders it ([`outbox::EventData`]).
    pub data: serde_json::Value,
    pub created_at_ms: i64,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Every attempt failed: kept, listed, and redeliverable.
    Dead,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One event to one channel. Its id is the `webhook-id` a receiver sees, the same on
/// every attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: String,
    pub event_id: String,
    pub channel_id: String,
    pub project_id: Option<String>,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub delivered_at_ms: Option<i64>,
    pub created_at_ms: i64,
}

/// One attempt at a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub delivery_id: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub at_ms: i64,
    pub ok: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

/// What happens to a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(i64),
    Dead,
}

/// A page of deliveries, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// `None`: every project (and operator events).
    pub project_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub event_id: Option<String>,
    pub limit: usize,
}

/// Rules, channels and the outbox, durable.
#[async_trait]
pub trait AlertStore: Send + Sync + 'static {
    /// `Conflict` when the id is taken.
    async fn create_rule(&self, rule: RuleRecord) -> StoreResult<()>;
    /// `NotFound` when there is no such rule.
    async fn update_rule(&self, rule: RuleRecord) -> StoreResult<()>;
    async fn get_rule(&self, id: &str) -> StoreResult<Option<RuleRecord>>;
    /// A project's rules (`Some`), or every rule, operator defaults included (`None`),
    /// ordered by id.
    async fn list_rules(&self, project_id: Option<&str>) -> StoreResult<Vec<RuleRecord>>;
    async fn delete_rule(&self, id: &str) -> StoreResult<bool>;

    async fn create_channel(&self, channel: ChannelRecord) -> StoreResult<()>;
    async fn update_channel(&self, channel: ChannelRecord) -> StoreResult<()>;
    async fn get_channel(&self, id: &str) -> StoreResult<Option<ChannelRecord>>;
    async fn list_channels(&self, project_id: Option<&str>) -> StoreResult<Vec<ChannelRecord>>;
    async fn delete_channel(&self, id: &str) -> StoreResult<bool>;

    /// Writes an event and its deliveries in one transaction, unless an event with
    /// its id exists (then nothing changes). True if written.
    async fn enqueue(&self, event: EventRecord, deliveries: Vec<DeliveryRecord>) -> StoreResult<bool>;
    async fn get_event(&self, id: &str) -> StoreResult<Option<EventRecord>>;
    /// Claims up to `limit` pending deliveries due at `now_ms` that nobody holds (or
    /// whose holder's lease ran out), for `lease_ms`. Two workers never get the same
    /// delivery while its lease runs.
    async fn claim_due(&self, now_ms: i64, lease_ms: i64, limit: usize) -> StoreResult<Vec<DeliveryRecord>>;
    /// Records an attempt, sets the delivery's status, counts and next time, and
    /// releases its claim.
    async fn record_attempt(&self, attempt: AttemptRecord, outcome: AttemptOutcome) -> StoreResult<()>;
    async fn get_delivery(&self, id: &str) -> StoreResult<Option<DeliveryRecord>>;
    async fn list_deliveries(&self, query: DeliveryQuery) -> StoreResult<Vec<DeliveryRecord>>;
    /// Every attempt of a delivery, oldest first.
    async fn list_attempts(&self, delivery_id: &str) -> StoreResult<Vec<AttemptRecord>>;
    /// Makes a delivery pending again, due now, with a fresh schedule of attempts
    /// (its past attempts stay recorded). False if there is no such delivery.
    async fn redeliver(&self, delivery_id: &str, now_ms: i64) -> StoreResult<bool>;
}
