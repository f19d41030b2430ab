//! The alerts API under `/api/v1/alerts`: rules, channels (with a test send), and the
//! outbox (events, deliveries with their attempts, redelivery of dead letters).
//!
//! Scoped like every admin route: a project token sees and touches only its
//! project's rules, channels and deliveries (anything else is a 404); rules and
//! channels without a project are the operator's defaults, for the operator token
//! only. A channel's secret (webhook signing secret, Slack URL, SMTP password) is
//! sealed before it is stored and never returned: a webhook's generated `whsec_`
//! secret is shown once, in the answer that creates the channel; later answers carry
//! only a hint (its last four characters).

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxumJson, Router};
use serde::{Deserialize, Serialize};
use tollgate_alerts::channels::{check_mailbox, check_url, generate_webhook_secret, seal_purpose};
use tollgate_alerts::seal::hint;
use tollgate_alerts::{
    AttemptRecord, ChannelConfig, ChannelKind, ChannelRecord, DEFAULT_THRESHOLDS, DeliveryQuery, DeliveryRecord,
    DeliveryStatus, EventRecord, LimitMatcher, RuleRecord, SmtpTls,
};
use tollgate_core::calendar::to_rfc3339;
use tollgate_core::{Metric, SubjectKind, Window};
use tollgate_gateway::now_ms;

use crate::app::AppState;
use crate::auth::Admin;
use crate::http::error::ApiError;
use crate::http::extract::{Json, Path, Query};

type ApiResult<T> = Result<T, ApiError>;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/alerts/rules", get(list_rules).post(create_rule))
        .route("/api/v1/alerts/rules/{id}", get(get_rule).patch(update_rule).delete(delete_rule))
        .route("/api/v1/alerts/channels", get(list_channels).post(create_channel))
        .route("/api/v1/alerts/channels/{id}", get(get_channel).patch(update_channel).delete(delete_channel))
        .route("/api/v1/alerts/channels/{id}/test", post(test_channel))
        .route("/api/v1/alerts/events", get(list_events))
        .route("/api/v1/alerts/deliveries", get(list_deliveries))
        .route("/api/v1/alerts/deliveries/{id}", get(get_delivery))
        .route("/api/v1/alerts/deliveries/{id}/redeliver", post(redeliver))
}

const MAX_THRESHOLDS: usize = 10;
const MAX_CHANNELS_PER_RULE: usize = 10;
const MAX_RECIPIENTS: usize = 20;
const MAX_TEXT: usize = 200;
/// Rules and channels one project (or the operator's defaults) may have.
const MAX_PER_PROJECT: usize = 100;

fn random_id(prefix: &str) -> ApiResult<String> {
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn check_text(field: &str, value: &Option<String>) -> ApiResult<()> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_TEXT || v.chars().any(char::is_control) => {
            Err(ApiError::invalid_field(field, format!("must be 1-{MAX_TEXT} characters without control characters")))
        }
        _ => Ok(()),
    }
}

/// The project a new rule or channel belongs to: a scoped token's own (naming another
/// is a 404), the operator's choice (`None`: an operator default). It must exist.
async fn owning_project(state: &AppState, admin: &Admin, asked: Option<String>) -> ApiResult<Option<String>> {
    let project = match (&admin.0.project_id, asked) {
        (Some(own), Some(asked)) if *own != asked => return Err(ApiError::NotFound { what: "project", id: asked }),
        (Some(own), _) => Some(own.clone()),
        (None, asked) => asked,
    };
    if let Some(p) = &project
        && state.catalog.get_project(p).await?.is_none()
    {
        return Err(ApiError::invalid_field("project", format!("no project named '{p}'")));
    }
    Ok(project)
}

/// Refuses records of another project (404), and operator records to scoped tokens.
fn check_owner(admin: &Admin, project: &Option<String>, what: &'static str, id: &str) -> ApiResult<()> {
    match (&admin.0.project_id, project) {
        (None, _) => Ok(()),
        (Some(own), Some(p)) if own == p => Ok(()),
        _ => Err(ApiError::NotFound { what, id: id.to_owned() }),
    }
}

// ----- rules -----

/// `POST /api/v1/alerts/rules`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// `limit_threshold` (default), `forecast` or `anomaly`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Forecast and anomaly rules: only this key of the project.
    #[serde(default)]
    pub key: Option<String>,
    /// Anomaly rules: the score an hour must reach (default 4).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Anomaly rules: the least volume worth an alert.
    #[serde(default)]
    pub min_volume: Option<u64>,
    /// Threshold rules: also send `alert.resolved` when a crossed window ends.
    #[serde(default)]
    pub notify_resolved: Option<bool>,
    /// The limits watched; absent fields match any.
    #[serde(default)]
    pub metric: Option<Metric>,
    #[serde(default)]
    pub window: Option<Window>,
    #[serde(default)]
    pub subject: Option<SubjectKind>,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Percentages of the limit; default 80, 90, 100.
    #[serde(default)]
    pub thresholds: Option<Vec<u32>>,
    pub channels: Vec<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /api/v1/alerts/rules/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub thresholds: Option<Vec<u32>>,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub notify_resolved: Option<bool>,
}

/// A rule as the API shows it.
#[derive(Debug, Serialize)]
pub struct RuleView {
    pub id: String,
    pub project: Option<String>,
    pub name: Option<String>,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(flatten)]
    pub matcher: LimitMatcher,
    pub thresholds: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_volume: Option<u64>,
    pub notify_resolved: bool,
    pub channels: Vec<String>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

fn rule_view(r: RuleRecord) -> RuleView {
    RuleView {
        id: r.id,
        project: r.project_id,
        name: r.name,
        kind: r.kind.as_str(),
        key: r.key_id,
        matcher: r.matcher,
        thresholds: r.thresholds,
        threshold: r.score_threshold,
        min_volume: r.min_volume,
        notify_resolved: r.notify_resolved,
        channels: r.channels,
        enabled: r.enabled,
        created_at: to_rfc3339(r.created_at_ms),
        updated_at: to_rfc3339(r.updated_at_ms),
    }
}

fn checked_thresholds(thresholds: Option<Vec<u32>>) -> ApiResult<Vec<u32>> {
    let mut t = thresholds.unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
    if t.is_empty() || t.len() > MAX_THRESHOLDS {
        return Err(ApiError::invalid_field("thresholds", format!("give 1 to {MAX_THRESHOLDS} percentages")));
    }
    if t.iter().any(|p| *p == 0 || *p > 1000) {
        return Err(ApiError::invalid_field("thresholds", "each threshold is a percentage from 1 to 1000"));
    }
    t.sort_unstable();
    t.dedup();
    Ok(t)
}

/// Every channel must exist and belong to the rule's project (operator channels only
/// for operator rules).
async fn check_channels(state: &AppState, project: &Option<String>, channels: &[String]) -> ApiResult<()> {
    if channels.is_empty() || channels.len() > MAX_CHANNELS_PER_RULE {
        return Err(ApiError::invalid_field("channels", format!("name 1 to {MAX_CHANNELS_PER_RULE} channels")));
    }
    for id in channels {
        let found = state.alerts.store.get_channel(id).await?;
        let usable = found.is_some_and(|c| c.project_id == *project);
        if !usable {
            return Err(ApiError::invalid_field("channels", format!("no channel '{id}' in this project")));
        }
    }
    Ok(())
}

async fn reload(state: &AppState) -> ApiResult<()> {
    Ok(state.alerts.reload_rules().await?)
}

async fn create_rule(State(state): State<AppState>, admin: Admin, Json(body): Json<CreateRule>) -> ApiResult<Response> {
    let project = owning_project(&state, &admin, body.project).await?;
    check_text("name", &body.name)?;
    for (field, value) in [("provider", &body.provider), ("model", &body.model), ("endpoint", &body.endpoint)] {
        check_text(field, value)?;
    }
    let matcher = LimitMatcher {
        metric: body.metric,
        window: body.window,
        subject: body.subject,
        provider: body.provider,
        model: body.model,
        endpoint: body.endpoint,
    };
    let fields = crate::routes::alert_kinds::KindFields {
        kind: body.kind,
        key: body.key,
        thresholds_given: body.thresholds.is_some(),
        threshold: body.threshold,
        min_volume: body.min_volume,
        notify_resolved: body.notify_resolved,
    };
    let checked = crate::routes::alert_kinds::check_kind(&state, &project, &matcher, fields).await?;
    let thresholds = match checked.kind {
        tollgate_alerts::RuleKind::LimitThreshold => checked_thresholds(body.thresholds)?,
        _ => Vec::new(),
    };
    check_channels(&state, &project, &body.channels).await?;
    let existing = state.alerts.store.list_rules(project.as_deref()).await?;
    if existing.iter().filter(|r| r.project_id == project).count() >= MAX_PER_PROJECT {
        return Err(ApiError::Conflict(format!("a project has at most {MAX_PER_PROJECT} alert rules")));
    }
    let now = now_ms();
    let rule = RuleRecord {
        id: random_id("rule_")?,
        project_id: project,
        name: body.name,
        kind: checked.kind,
        key_id: checked.key_id,
        matcher,
        thresholds,
        score_threshold: checked.score_threshold,
        min_volume: checked.min_volume,
        notify_resolved: checked.notify_resolved,
        channels: body.channels,
        enabled: body.enabled.unwrap_or(true),
        created_at_ms: now,
        updated_at_ms: now,
    };
    state.alerts.store.create_rule(rule.clone()).await?;
    reload(&state).await?;
    Ok((StatusCode::CREATED, AxumJson(rule_view(rule))).into_response())
}

/// `?project=` on lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectParams {
    #[serde(default)]
    pub project: Option<String>,
}

async fn list_rules(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ProjectParams>,
) -> ApiResult<AxumJson<serde_json::Value>> {
    let project = admin.project_filter(p.project)?;
    let rules = state.alerts.store.list_rules(project.as_deref()).await?;
    let data: Vec<RuleView> = rules.into_iter().map(rule_view).collect();
    Ok(AxumJson(serde_json::json!({ "object": "list", "data": data })))
}

async fn load_rule(state: &AppState, admin: &Admin, id: &str) -> ApiResult<RuleRecord> {
    let rule =
        state.alerts.store.get_rule(id).await?.ok_or_else(|| ApiError::NotFound { what: "rule", id: id.to_owned() })?;
    check_owner(admin, &rule.project_id, "rule", id)?;
    Ok(rule)
}

async fn get_rule(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<RuleView>> {
    Ok(AxumJson(rule_view(load_rule(&state, &admin, &id).await?)))
}

async fn update_rule(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<UpdateRule>,
) -> ApiResult<AxumJson<RuleView>> {
    let mut rule = load_rule(&state, &admin, &id).await?;
    if body.name.is_some() {
        check_text("name", &body.name)?;
        rule.name = body.name;
    }
    let threshold_rule = rule.kind == tollgate_alerts::RuleKind::LimitThreshold;
    if body.thresholds.is_some() {
        if !threshold_rule {
            return Err(ApiError::invalid_field("thresholds", "is for limit_threshold rules only"));
        }
        rule.thresholds = checked_thresholds(body.thresholds)?;
    }
    if let Some(notify) = body.notify_resolved {
        if !threshold_rule && notify {
            return Err(ApiError::invalid_field("notify_resolved", "is for limit_threshold rules only"));
        }
        rule.notify_resolved = notify;
    }
    if let Some(channels) = body.channels {
        check_channels(&state, &rule.project_id, &channels).await?;
        rule.channels = channels;
    }
    if let Some(enabled) = body.enabled {
        rule.enabled = enabled;
    }
    rule.updated_at_ms = now_ms();
    state.alerts.store.update_rule(rule.clone()).await?;
    reload(&state).await?;
    Ok(AxumJson(rule_view(rule)))
}

async fn delete_rule(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    load_rule(&state, &admin, &id).await?;
    state.alerts.store.delete_rule(&id).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- channels -----

/// `POST /api/v1/alerts/channels`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    pub kind: ChannelKind,
    /// Webhook: where to POST. Slack: the incoming webhook URL (sealed, never shown).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub smtp_host: Option<String>,
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default)]
    pub smtp_tls: Option<SmtpTls>,
    #[serde(default)]
    pub smtp_username: Option<String>,
    /// Sealed, never shown.
    #[serde(default)]
    pub smtp_password: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /api/v1/alerts/channels/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub to: Option<Vec<String>>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub smtp_password: Option<String>,
}

/// A channel as the API shows it: never its secret.
#[derive(Debug, Serialize)]
pub struct ChannelView {
    pub id: String,
    pub project: Option<String>,
    pub name: Option<String>,
    pub kind: ChannelKind,
    #[serde(flatten)]
    pub config: ChannelConfig,
    pub secret_hint: Option<String>,
    pub enabled: bool,
    pub created_at: String,
    /// Only in the answer that creates a webhook: its signing secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn channel_view(c: ChannelRecord) -> ChannelView {
    ChannelView {
        id: c.id,
        project: c.project_id,
        name: c.name,
        kind: c.kind,
        config: c.config,
        secret_hint: c.secret_hint,
        enabled: c.enabled,
        created_at: to_rfc3339(c.created_at_ms),
        secret: None,
    }
}

fn seal(state: &AppState, kind: ChannelKind, secret: &str) -> ApiResult<String> {
    let sealer = state.alerts.sealer.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "this channel needs a secret sealed at rest, and no alerts master key is configured \
             (alerts.master_key or alerts.master_key_file)",
        )
    })?;
    sealer.seal(seal_purpose(kind), secret).map_err(ApiError::internal)
}

async fn checked_url(state: &AppState, url: &str) -> ApiResult<()> {
    if url.len() > 2048 {
        return Err(ApiError::invalid_field("url", "at most 2048 characters"));
    }
    check_url(url, state.config.alerts.allow_private_targets)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::invalid_field("url", e))
}

fn checked_recipients(to: &[String]) -> ApiResult<()> {
    if to.is_empty() || to.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid_field("to", format!("give 1 to {MAX_RECIPIENTS} addresses")));
    }
    for address in to {
        check_mailbox(address).map_err(|e| ApiError::invalid_field("to", e))?;
    }
    Ok(())
}

async fn create_channel(
    State(state): State<AppState>,
    admin: Admin,
    Json(body): Json<CreateChannel>,
) -> ApiResult<Response> {
    let project = owning_project(&state, &admin, body.project).await?;
    check_text("name", &body.name)?;
    let existing = state.alerts.store.list_channels(project.as_deref()).await?;
    if existing.iter().filter(|c| c.project_id == project).count() >= MAX_PER_PROJECT {
        return Err(ApiError::Conflict(format!("a project has at most {MAX_PER_PROJECT} alert channels")));
    }
    let mut config = ChannelConfig {
        url: None,
        smtp_host: None,
        smtp_port: None,
        smtp_tls: None,
        smtp_username: None,
        from: None,
        to: Vec::new(),
    };
    let email_fields = body.smtp_host.is_some()
        || body.smtp_port.is_some()
        || body.smtp_tls.is_some()
        || body.smtp_username.is_some()
        || body.smtp_password.is_some()
        || body.from.is_some()
        || body.to.is_some();
    let (secret, shown) = match body.kind {
        ChannelKind::Webhook | ChannelKind::Slack => {
            if email_fields {
                return Err(ApiError::bad_request("smtp_* and from/to are for e-mail channels only"));
            }
            let url = body.url.ok_or_else(|| ApiError::invalid_field("url", "is required"))?;
            checked_url(&state, &url).await?;
            if body.kind == ChannelKind::Webhook {
                config.url = Some(url);
                let secret = generate_webhook_secret().map_err(ApiError::internal)?;
                (Some(secret.clone()), Some(secret))
            } else {
                (Some(url), None)
            }
        }
        ChannelKind::Email => {
            if body.url.is_some() {
                return Err(ApiError::invalid_field("url", "is for webhook and Slack channels"));
            }
            let host = body.smtp_host.ok_or_else(|| ApiError::invalid_field("smtp_host", "is required"))?;
            check_text("smtp_host", &Some(host.clone()))?;
            check_text("smtp_username", &body.smtp_username)?;
            let from = body.from.ok_or_else(|| ApiError::invalid_field("from", "is required"))?;
            check_mailbox(&from).map_err(|e| ApiError::invalid_field("from", e))?;
            let to = body.to.unwrap_or_default();
            checked_recipients(&to)?;
            if body.smtp_password.is_some() && body.smtp_username.is_none() {
                return Err(ApiError::invalid_field("smtp_username", "is required with smtp_password"));
            }
            config.smtp_host = Some(host);
            config.smtp_port = body.smtp_port;
            config.smtp_tls = Some(body.smtp_tls.unwrap_or_default());
            config.smtp_username = body.smtp_username;
            config.from = Some(from);
            config.to = to;
            (body.smtp_password, None)
        }
    };
    let sealed_secret = secret.as_deref().map(|s| seal(&state, body.kind, s)).transpose()?;
    let channel = ChannelRecord {
        id: random_id("ch_")?,
        project_id: project,
        name: body.name,
        kind: body.kind,
        config,
        sealed_secret,
        secret_hint: secret.as_deref().map(hint),
        enabled: body.enabled.unwrap_or(true),
        created_at_ms: now_ms(),
    };
    state.alerts.store.create_channel(channel.clone()).await?;
    let mut view = channel_view(channel);
    view.secret = shown;
    Ok((StatusCode::CREATED, AxumJson(view)).into_response())
}

async fn list_channels(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ProjectParams>,
) -> ApiResult<AxumJson<serde_json::Value>> {
    let project = admin.project_filter(p.project)?;
    let channels = state.alerts.store.list_channels(project.as_deref()).await?;
    let data: Vec<ChannelView> = channels.into_iter().map(channel_view).collect();
    Ok(AxumJson(serde_json::json!({ "object": "list", "data": data })))
}

async fn load_channel(state: &AppState, admin: &Admin, id: &str) -> ApiResult<ChannelRecord> {
    let channel = state
        .alerts
        .store
        .get_channel(id)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: "channel", id: id.to_owned() })?;
    check_owner(admin, &channel.project_id, "channel", id)?;
    Ok(channel)
}

async fn get_channel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<ChannelView>> {
    Ok(AxumJson(channel_view(load_channel(&state, &admin, &id).await?)))
}

async fn update_channel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
    Json(body): Json<UpdateChannel>,
) -> ApiResult<AxumJson<ChannelView>> {
    let mut channel = load_channel(&state, &admin, &id).await?;
    if body.name.is_some() {
        check_text("name", &body.name)?;
        channel.name = body.name;
    }
    if let Some(enabled) = body.enabled {
        channel.enabled = enabled;
    }
    if let Some(url) = body.url {
        match channel.kind {
            ChannelKind::Webhook => {
                checked_url(&state, &url).await?;
                channel.config.url = Some(url);
            }
            ChannelKind::Slack => {
                checked_url(&state, &url).await?;
                channel.sealed_secret = Some(seal(&state, channel.kind, &url)?);
                channel.secret_hint = Some(hint(&url));
            }
            ChannelKind::Email => return Err(ApiError::invalid_field("url", "is for webhook and Slack channels")),
        }
    }
    let is_email = channel.kind == ChannelKind::Email;
    if let Some(to) = body.to {
        if !is_email {
            return Err(ApiError::invalid_field("to", "is for e-mail channels"));
        }
        checked_recipients(&to)?;
        channel.config.to = to;
    }
    if let Some(from) = body.from {
        if !is_email {
            return Err(ApiError::invalid_field("from", "is for e-mail channels"));
        }
        check_mailbox(&from).map_err(|e| ApiError::invalid_field("from", e))?;
        channel.config.from = Some(from);
    }
    if let Some(password) = body.smtp_password {
        if !is_email || channel.config.smtp_username.is_none() {
            return Err(ApiError::invalid_field("smtp_password", "is for e-mail channels with an smtp_username"));
        }
        channel.sealed_secret = Some(seal(&state, channel.kind, &password)?);
        channel.secret_hint = Some(hint(&password));
    }
    state.alerts.store.update_channel(channel.clone()).await?;
    Ok(AxumJson(channel_view(channel)))
}

async fn delete_channel(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    load_channel(&state, &admin, &id).await?;
    let rules = state.alerts.store.list_rules(None).await?;
    if let Some(rule) = rules.iter().find(|r| r.channels.contains(&id)) {
        return Err(ApiError::Conflict(format!("rule '{}' sends to this channel: change or delete it first", rule.id)));
    }
    state.alerts.store.delete_channel(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /api/v1/alerts/channels/{id}/test`: a test event through the outbox, like
/// any alert; answers once its first attempt is made (or after the send timeout).
async fn test_channel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<DeliveryView>> {
    let channel = load_channel(&state, &admin, &id).await?;
    let delivery = state.alerts.test_send(&channel).await?;
    let deadline = Instant::now() + state.config.alerts.send_timeout + Duration::from_secs(2);
    let mut current = delivery;
    while current.attempts == 0 && current.status == DeliveryStatus::Pending && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(d) = state.alerts.store.get_delivery(&current.id).await? {
            current = d;
        }
    }
    let attempts = state.alerts.store.list_attempts(&current.id).await?;
    Ok(AxumJson(delivery_view(current, None, Some(attempts))))
}

// ----- the outbox -----

/// A delivery as the API shows it.
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    pub id: String,
    pub event_id: String,
    pub channel_id: String,
    pub project: Option<String>,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<String>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptView>>,
}

#[derive(Debug, Serialize)]
pub struct EventView {
    pub id: String,
    pub project: Option<String>,
    pub rule_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: String,
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    pub attempt: u32,
    pub at: String,
    pub ok: bool,
    pub status_code: Option<u16>,
    pub error: Option<String>,
}

fn event_view(e: EventRecord) -> EventView {
    EventView {
        id: e.id,
        project: e.project_id,
        rule_id: e.rule_id,
        kind: e.kind,
        data: e.data,
        created_at: to_rfc3339(e.created_at_ms),
    }
}

fn delivery_view(d: DeliveryRecord, event: Option<EventRecord>, attempts: Option<Vec<AttemptRecord>>) -> DeliveryView {
    DeliveryView {
        next_attempt_at: (d.status == DeliveryStatus::Pending).then(|| to_rfc3339(d.next_attempt_ms)),
        id: d.id,
        event_id: d.event_id,
        channel_id: d.channel_id,
        project: d.project_id,
        status: d.status,
        attempts: d.attempts,
        last_error: d.last_error,
        delivered_at: d.delivered_at_ms.map(to_rfc3339),
        created_at: to_rfc3339(d.created_at_ms),
        event: event.map(event_view),
        attempt_log: attempts.map(|a| {
            a.into_iter()
                .map(|a| AttemptView {
                    attempt: a.attempt,
                    at: to_rfc3339(a.at_ms),
                    ok: a.ok,
                    status_code: a.status_code,
                    error: a.error,
                })
                .collect()
        }),
    }
}

/// `?project=&status=&event=&limit=` on the outbox lists.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxParams {
    #[serde(default)]
    pub project: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub limit: Option<String>,
}

fn outbox_query(admin: &Admin, p: OutboxParams) -> ApiResult<DeliveryQuery> {
    let status = p
        .status
        .map(|s| {
            DeliveryStatus::parse(&s)
                .ok_or_else(|| ApiError::invalid_field("status", "must be pending, delivered or dead"))
        })
        .transpose()?;
    let limit = match p.limit {
        None => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => return Err(ApiError::invalid_field("limit", "must be from 1 to 1000")),
        },
    };
    Ok(DeliveryQuery { project_id: admin.project_filter(p.project)?, status, event_id: p.event, limit })
}

async fn list_deliveries(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<OutboxParams>,
) -> ApiResult<AxumJson<serde_json::Value>> {
    let query = outbox_query(&admin, p)?;
    let deliveries = state.alerts.store.list_deliveries(query).await?;
    let data: Vec<DeliveryView> = deliveries.into_iter().map(|d| delivery_view(d, None, None)).collect();
    Ok(AxumJson(serde_json::json!({ "object": "list", "data": data })))
}

/// `GET /api/v1/alerts/events`: events, newest first, each with its deliveries.
async fn list_events(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<OutboxParams>,
) -> ApiResult<AxumJson<serde_json::Value>> {
    let query = outbox_query(&admin, p)?;
    let deliveries = state.alerts.store.list_deliveries(query).await?;
    let mut order: Vec<String> = Vec::new();
    let mut by_event: std::collections::HashMap<String, Vec<DeliveryView>> = std::collections::HashMap::new();
    for d in deliveries {
        if !by_event.contains_key(&d.event_id) {
            order.push(d.event_id.clone());
        }
        by_event.entry(d.event_id.clone()).or_default().push(delivery_view(d, None, None));
    }
    let mut data = Vec::new();
    for id in order {
        let Some(event) = state.alerts.store.get_event(&id).await? else { continue };
        let mut view = serde_json::to_value(event_view(event)).map_err(ApiError::internal)?;
        view["deliveries"] =
            serde_json::to_value(by_event.remove(&id).unwrap_or_default()).map_err(ApiError::internal)?;
        data.push(view);
    }
    Ok(AxumJson(serde_json::json!({ "object": "list", "data": data })))
}

async fn load_delivery(state: &AppState, admin: &Admin, id: &str) -> ApiResult<DeliveryRecord> {
    let delivery = state
        .alerts
        .store
        .get_delivery(id)
        .await?
        .ok_or_else(|| ApiError::NotFound { what: "delivery", id: id.to_owned() })?;
    check_owner(admin, &delivery.project_id, "delivery", id)?;
    Ok(delivery)
}

async fn get_delivery(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<DeliveryView>> {
    let delivery = load_delivery(&state, &admin, &id).await?;
    let event = state.alerts.store.get_event(&delivery.event_id).await?;
    let attempts = state.alerts.store.list_attempts(&id).await?;
    Ok(AxumJson(delivery_view(delivery, event, Some(attempts))))
}

/// `POST /api/v1/alerts/deliveries/{id}/redeliver`: pending again, due now, with a
/// fresh schedule of attempts (a delivered one is sent once more).
async fn redeliver(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<DeliveryView>> {
    load_delivery(&state, &admin, &id).await?;
    state.alerts.store.redeliver(&id, now_ms()).await?;
    state.alerts.wake();
    let delivery = load_delivery(&state, &admin, &id).await?;
    Ok(AxumJson(delivery_view(delivery, None, None)))
}
