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
use crate::http::error::{ApiError, ErrorBody};
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

/// Schemas of the alerts crate's types as the API shows them (that crate has no
/// OpenAPI dependency): used as `#[schema(value_type = ...)]` of the fields that hold them.
pub mod schema {
    use serde::Serialize;

    /// How a channel sends: `webhook` (a signed `POST` of the event as JSON, Standard
    /// Webhooks), `slack` (an incoming webhook message) or `email` (through SMTP).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum ChannelKind {
        Webhook,
        Slack,
        Email,
    }

    /// How an SMTP connection is secured: `starttls` (required; port 587 by default),
    /// `implicit` (TLS from the first byte; 465) or `none` (a local relay only; 25).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum SmtpTls {
        Starttls,
        Implicit,
        None,
    }

    /// Where a delivery stands: `pending` (to be sent or retried), `delivered`, or
    /// `dead` (every attempt failed; redeliverable).
    #[derive(Serialize, utoipa::ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum DeliveryStatus {
        Pending,
        Delivered,
        Dead,
    }
}

/// The `object` member of a list answer: always `list`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListObject {
    List,
}

/// A list answer: `{"object": "list", "data": [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList<T: utoipa::ToSchema> {
    pub object: ListObject,
    pub data: Vec<T>,
}

fn list<T: utoipa::ToSchema>(data: Vec<T>) -> AxumJson<AlertList<T>> {
    AxumJson(AlertList { object: ListObject::List, data })
}

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

/// `POST /api/v1/alerts/rules`: which limits to watch, at which percentages, and where
/// to send the alerts.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    /// The project whose limits are watched (a project token: its own, the default).
    /// With the operator token and no project, the rule is an operator default: it
    /// applies to every project that has no enabled rule of its own.
    #[serde(default)]
    pub project: Option<String>,
    /// 1-200 characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
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
    /// Only limits scoped to this provider (1-200 characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub provider: Option<String>,
    /// Only limits scoped to this model (1-200 characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
    /// Only limits scoped to this endpoint (1-200 characters).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub endpoint: Option<String>,
    /// 1 to 10 percentages of the limit, each 1-1000 (default `[80, 90, 100]`).
    #[serde(default)]
    #[schema(min_items = 1, max_items = 10)]
    pub thresholds: Option<Vec<u32>>,
    /// 1 to 10 channel ids of the rule's project (operator channels for an operator rule).
    #[schema(min_items = 1, max_items = 10)]
    pub channels: Vec<String>,
    /// `false` keeps the rule but stops it (default `true`).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /api/v1/alerts/rules/{id}`: absent fields are left as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRule {
    /// 1-200 characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// 1 to 10 percentages of the limit, each 1-1000.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 10)]
    pub thresholds: Option<Vec<u32>>,
    /// 1 to 10 channel ids of the rule's project; replaces the rule's channels.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 10)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub notify_resolved: Option<bool>,
}

/// What a rule watches for: a limit's usage crossing a threshold, a quota projected
/// to run out before its window ends, or an unusual hour (docs/alerts.md).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    LimitThreshold,
    Forecast,
    Anomaly,
}

impl RuleKind {
    fn of(kind: tollgate_alerts::RuleKind) -> Self {
        match kind {
            tollgate_alerts::RuleKind::LimitThreshold => RuleKind::LimitThreshold,
            tollgate_alerts::RuleKind::Forecast => RuleKind::Forecast,
            tollgate_alerts::RuleKind::Anomaly => RuleKind::Anomaly,
        }
    }
}

/// A rule as the API shows it. The limit filters (`metric`, `window`, `subject`,
/// `provider`, `model`, `endpoint`) are present only when set: absent matches any.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RuleView {
    pub id: String,
    /// The project (null: an operator default rule).
    pub project: Option<String>,
    pub name: Option<String>,
    pub kind: RuleKind,
    /// Forecast and anomaly rules: only this key of the project.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<SubjectKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Percentages of the limit, ascending (threshold rules).
    pub thresholds: Vec<u32>,
    /// Anomaly rules: the score an hour must reach.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Anomaly rules: the least volume worth an alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_volume: Option<u64>,
    /// Threshold rules: also send `alert.resolved` when a crossed window ends or the
    /// limit is raised.
    pub notify_resolved: bool,
    /// The channel ids alerts go to.
    pub channels: Vec<String>,
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

fn rule_view(r: RuleRecord) -> RuleView {
    let LimitMatcher { metric, window, subject, provider, model, endpoint } = r.matcher;
    RuleView {
        id: r.id,
        project: r.project_id,
        name: r.name,
        kind: RuleKind::of(r.kind),
        key: r.key_id,
        metric,
        window,
        subject,
        provider,
        model,
        endpoint,
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

/// `POST /api/v1/alerts/rules`.
#[utoipa::path(post, path = "/api/v1/alerts/rules", tag = "alerts", request_body = CreateRule,
    responses(
        (status = 201, description = "The rule was created", body = RuleView),
        (status = 400, description = "A malformed rule (`param` names the field): bad thresholds, a channel \
            not of this project, a project that does not exist", body = ErrorBody),
        (status = 404, description = "A project token named another project", body = ErrorBody),
        (status = 409, description = "The project (or the operator's defaults) already has 100 rules", body = ErrorBody)))]
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProjectParams {
    /// Only this project's (a project token: its own; naming another is a 404).
    #[serde(default)]
    pub project: Option<String>,
}

/// `GET /api/v1/alerts/rules`.
#[utoipa::path(get, path = "/api/v1/alerts/rules", tag = "alerts", params(ProjectParams),
    responses(
        (status = 200, description = "The rules this token may see, by id", body = AlertList<RuleView>),
        (status = 404, description = "A project token named another project", body = ErrorBody)))]
async fn list_rules(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ProjectParams>,
) -> ApiResult<AxumJson<AlertList<RuleView>>> {
    let project = admin.project_filter(p.project)?;
    let rules = state.alerts.store.list_rules(project.as_deref()).await?;
    Ok(list(rules.into_iter().map(rule_view).collect()))
}

async fn load_rule(state: &AppState, admin: &Admin, id: &str) -> ApiResult<RuleRecord> {
    let rule =
        state.alerts.store.get_rule(id).await?.ok_or_else(|| ApiError::NotFound { what: "rule", id: id.to_owned() })?;
    check_owner(admin, &rule.project_id, "rule", id)?;
    Ok(rule)
}

#[utoipa::path(get, path = "/api/v1/alerts/rules/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The rule's id (`rule_...`)")),
    responses(
        (status = 200, description = "The rule", body = RuleView),
        (status = 404, description = "No such rule, or one this token may not see", body = ErrorBody)))]
async fn get_rule(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<RuleView>> {
    Ok(AxumJson(rule_view(load_rule(&state, &admin, &id).await?)))
}

#[utoipa::path(patch, path = "/api/v1/alerts/rules/{id}", tag = "alerts", request_body = UpdateRule,
    params(("id" = String, Path, description = "The rule's id (`rule_...`)")),
    responses(
        (status = 200, description = "The rule, changed", body = RuleView),
        (status = 400, description = "A malformed change (`param` names the field)", body = ErrorBody),
        (status = 404, description = "No such rule, or one this token may not see", body = ErrorBody)))]
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

#[utoipa::path(delete, path = "/api/v1/alerts/rules/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The rule's id (`rule_...`)")),
    responses(
        (status = 204, description = "The rule was deleted"),
        (status = 404, description = "No such rule, or one this token may not see", body = ErrorBody)))]
async fn delete_rule(State(state): State<AppState>, admin: Admin, Path(id): Path<String>) -> ApiResult<Response> {
    load_rule(&state, &admin, &id).await?;
    state.alerts.store.delete_rule(&id).await?;
    reload(&state).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ----- channels -----

/// `POST /api/v1/alerts/channels`: a webhook (`url`), a Slack incoming webhook (`url`)
/// or an e-mail channel (`smtp_host`, `from`, `to`, ...).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChannel {
    /// The project (a project token: its own, the default). With the operator token
    /// and no project: an operator channel, for operator default rules.
    #[serde(default)]
    pub project: Option<String>,
    /// 1-200 characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[schema(value_type = schema::ChannelKind)]
    pub kind: ChannelKind,
    /// Webhook (required): where to POST. Slack (required): the incoming webhook URL
    /// (a secret: sealed, never shown). `http(s)`, no credentials, at most 2048
    /// characters, and a public address unless `alerts.allow_private_targets`.
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// E-mail (required): the SMTP relay's host.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub smtp_host: Option<String>,
    /// E-mail: default 587 (`starttls`), 465 (`implicit`) or 25 (`none`).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// E-mail: default `starttls`.
    #[serde(default)]
    #[schema(value_type = Option<schema::SmtpTls>)]
    pub smtp_tls: Option<SmtpTls>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub smtp_username: Option<String>,
    /// E-mail, with `smtp_username`: sealed, never shown.
    #[serde(default)]
    pub smtp_password: Option<String>,
    /// E-mail (required): the sender's mailbox (`name <address>` or an address).
    #[serde(default)]
    pub from: Option<String>,
    /// E-mail (required): 1 to 20 recipients.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 20)]
    pub to: Option<Vec<String>>,
    /// `false` keeps the channel but its deliveries fail (default `true`).
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /api/v1/alerts/channels/{id}`: absent fields are left as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateChannel {
    /// 1-200 characters, no control characters.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Webhook and Slack channels only (checked like on create).
    #[serde(default)]
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// E-mail channels only: 1 to 20 recipients.
    #[serde(default)]
    #[schema(min_items = 1, max_items = 20)]
    pub to: Option<Vec<String>>,
    /// E-mail channels only.
    #[serde(default)]
    pub from: Option<String>,
    /// E-mail channels with an `smtp_username` only: sealed, never shown.
    #[serde(default)]
    pub smtp_password: Option<String>,
}

/// A channel as the API shows it: never its secret (nor a Slack URL, which is one).
/// The settings (`url`, `smtp_*`, `from`, `to`) are present only when set.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelView {
    pub id: String,
    /// The project (null: an operator channel).
    pub project: Option<String>,
    pub name: Option<String>,
    #[schema(value_type = schema::ChannelKind)]
    pub kind: ChannelKind,
    /// Webhook: where it POSTs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<schema::SmtpTls>)]
    pub smtp_tls: Option<SmtpTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<String>,
    /// The secret's last four characters (`...abcd`), to tell secrets apart.
    pub secret_hint: Option<String>,
    pub enabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Only in the answer that creates a webhook: its signing secret (`whsec_...`),
    /// shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn channel_view(c: ChannelRecord) -> ChannelView {
    let ChannelConfig { url, smtp_host, smtp_port, smtp_tls, smtp_username, from, to } = c.config;
    ChannelView {
        id: c.id,
        project: c.project_id,
        name: c.name,
        kind: c.kind,
        url,
        smtp_host,
        smtp_port,
        smtp_tls,
        smtp_username,
        from,
        to,
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

/// `POST /api/v1/alerts/channels`.
#[utoipa::path(post, path = "/api/v1/alerts/channels", tag = "alerts", request_body = CreateChannel,
    responses(
        (status = 201, description = "The channel was created; a webhook's answer carries its signing secret \
            in `secret`, shown this once", body = ChannelView),
        (status = 400, description = "A malformed channel (`param` names the field): a URL refused (not \
            http(s), credentials, a loopback, private or link-local address), a field of another kind, a bad \
            mailbox; or a secret to seal and no alerts master key configured", body = ErrorBody),
        (status = 404, description = "A project token named another project", body = ErrorBody),
        (status = 409, description = "The project (or the operator) already has 100 channels", body = ErrorBody)))]
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

/// `GET /api/v1/alerts/channels`.
#[utoipa::path(get, path = "/api/v1/alerts/channels", tag = "alerts", params(ProjectParams),
    responses(
        (status = 200, description = "The channels this token may see: never a secret, only `secret_hint`",
            body = AlertList<ChannelView>),
        (status = 404, description = "A project token named another project", body = ErrorBody)))]
async fn list_channels(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ProjectParams>,
) -> ApiResult<AxumJson<AlertList<ChannelView>>> {
    let project = admin.project_filter(p.project)?;
    let channels = state.alerts.store.list_channels(project.as_deref()).await?;
    Ok(list(channels.into_iter().map(channel_view).collect()))
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

#[utoipa::path(get, path = "/api/v1/alerts/channels/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The channel's id (`ch_...`)")),
    responses(
        (status = 200, description = "The channel (never its secret)", body = ChannelView),
        (status = 404, description = "No such channel, or one this token may not see", body = ErrorBody)))]
async fn get_channel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<AxumJson<ChannelView>> {
    Ok(AxumJson(channel_view(load_channel(&state, &admin, &id).await?)))
}

#[utoipa::path(patch, path = "/api/v1/alerts/channels/{id}", tag = "alerts", request_body = UpdateChannel,
    params(("id" = String, Path, description = "The channel's id (`ch_...`)")),
    responses(
        (status = 200, description = "The channel, changed", body = ChannelView),
        (status = 400, description = "A malformed change, or a field of another kind of channel (`param` \
            names it)", body = ErrorBody),
        (status = 404, description = "No such channel, or one this token may not see", body = ErrorBody)))]
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

#[utoipa::path(delete, path = "/api/v1/alerts/channels/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The channel's id (`ch_...`)")),
    responses(
        (status = 204, description = "The channel was deleted"),
        (status = 404, description = "No such channel, or one this token may not see", body = ErrorBody),
        (status = 409, description = "A rule sends to this channel: change or delete it first (or disable \
            the channel)", body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/alerts/channels/{id}/test", tag = "alerts",
    params(("id" = String, Path, description = "The channel's id (`ch_...`)")),
    responses(
        (status = 200, description = "The test delivery (an `alert.test` event), once its first attempt was \
            made or the send timeout passed: its `status`, `attempts`, `last_error` and `attempt_log`",
            body = DeliveryView),
        (status = 404, description = "No such channel, or one this token may not see", body = ErrorBody)))]
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

/// A delivery (one event to one channel) as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// Also the `webhook-id` a receiver sees, the same on every attempt and redelivery.
    pub id: String,
    pub event_id: String,
    pub channel_id: String,
    /// The project (null: an operator channel's).
    pub project: Option<String>,
    #[schema(value_type = schema::DeliveryStatus)]
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending deliveries only).
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    /// What the last failed attempt met.
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub delivered_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Only on `GET /api/v1/alerts/deliveries/{id}`: the event delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventView>,
    /// Only on `GET /api/v1/alerts/deliveries/{id}` and test sends: every attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptView>>,
}

/// An event of the outbox: a threshold crossing or a test send.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub project: Option<String>,
    /// The rule that fired (null for a test send).
    pub rule_id: Option<String>,
    /// `limit.threshold_crossed` or `alert.test`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened: for a crossing the subject, the limit (metric, window, scope,
    /// value), the usage right after the crossing charge, the window's bounds and the
    /// threshold (docs/alerts.md).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// An event with its deliveries, as `GET /api/v1/alerts/events` lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventWithDeliveries {
    #[serde(flatten)]
    pub event: EventView,
    /// The event's deliveries that match the query (one per channel).
    pub deliveries: Vec<DeliveryView>,
}

/// One attempt to send a delivery.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// 1 for the first.
    pub attempt: u32,
    #[schema(format = DateTime)]
    pub at: String,
    pub ok: bool,
    /// The receiver's HTTP status, when it answered.
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OutboxParams {
    /// Only this project's (a project token: its own; naming another is a 404).
    #[serde(default)]
    pub project: Option<String>,
    /// Only deliveries in this state (`dead`: the dead letters).
    #[serde(default)]
    #[param(value_type = Option<schema::DeliveryStatus>)]
    pub status: Option<String>,
    /// Only this event's deliveries.
    #[serde(default)]
    pub event: Option<String>,
    /// At most this many deliveries, 1 to 1000 (default 100).
    #[serde(default)]
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
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

/// `GET /api/v1/alerts/deliveries`: deliveries, newest first.
#[utoipa::path(get, path = "/api/v1/alerts/deliveries", tag = "alerts", params(OutboxParams),
    responses(
        (status = 200, description = "The deliveries this token may see, newest first", body = AlertList<DeliveryView>),
        (status = 400, description = "A bad `status` or `limit` (`param` names it)", body = ErrorBody),
        (status = 404, description = "A project token named another project", body = ErrorBody)))]
async fn list_deliveries(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<OutboxParams>,
) -> ApiResult<AxumJson<AlertList<DeliveryView>>> {
    let query = outbox_query(&admin, p)?;
    let deliveries = state.alerts.store.list_deliveries(query).await?;
    Ok(list(deliveries.into_iter().map(|d| delivery_view(d, None, None)).collect()))
}

/// `GET /api/v1/alerts/events`: events, newest first, each with its deliveries.
#[utoipa::path(get, path = "/api/v1/alerts/events", tag = "alerts", params(OutboxParams),
    responses(
        (status = 200, description = "The events of the deliveries that match (`limit` counts deliveries), \
            newest first, each with those deliveries", body = AlertList<EventWithDeliveries>),
        (status = 400, description = "A bad `status` or `limit` (`param` names it)", body = ErrorBody),
        (status = 404, description = "A project token named another project", body = ErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<OutboxParams>,
) -> ApiResult<AxumJson<AlertList<EventWithDeliveries>>> {
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
        data.push(EventWithDeliveries {
            event: event_view(event),
            deliveries: by_event.remove(&id).unwrap_or_default(),
        });
    }
    Ok(list(data))
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

#[utoipa::path(get, path = "/api/v1/alerts/deliveries/{id}", tag = "alerts",
    params(("id" = String, Path, description = "The delivery's id (`msg_...`)")),
    responses(
        (status = 200, description = "The delivery with its `event` and `attempt_log`", body = DeliveryView),
        (status = 404, description = "No such delivery, or one this token may not see", body = ErrorBody)))]
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
#[utoipa::path(post, path = "/api/v1/alerts/deliveries/{id}/redeliver", tag = "alerts",
    params(("id" = String, Path, description = "The delivery's id (`msg_...`)")),
    responses(
        (status = 200, description = "The delivery, pending again and due now, with a fresh schedule of \
            attempts (a dead letter is retried; a delivered one is sent once more, with the same `webhook-id`)",
            body = DeliveryView),
        (status = 404, description = "No such delivery, or one this token may not see", body = ErrorBody)))]
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
