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

mod channels;
mod outbox;
pub use channels::*;
pub use outbox::*;
