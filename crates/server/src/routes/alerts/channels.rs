//! Alert channels: webhook, Slack and e-mail targets, their sealed secrets, test-send.

#[allow(unused_imports)]
use super::*;

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

pub(crate) fn channel_view(c: ChannelRecord) -> ChannelView {
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

pub(crate) fn seal(state: &AppState, kind: ChannelKind, secret: &str) -> ApiResult<String> {
    let sealer = state.alerts.sealer.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "this channel needs a secret sealed at rest, and no alerts master key is configured \
             (alerts.master_key or alerts.master_key_file)",
        )
    })?;
    sealer.seal(seal_purpose(kind), secret).map_err(ApiError::internal)
}

pub(crate) async fn checked_url(state: &AppState, url: &str) -> ApiResult<()> {
    if url.len() > 2048 {
        return Err(ApiError::invalid_field("url", "at most 2048 characters"));
    }
    check_url(url, state.config.alerts.allow_private_targets)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::invalid_field("url", e))
}

pub(crate) fn checked_recipients(to: &[String]) -> ApiResult<()> {
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
pub(crate) async fn create_channel(
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
pub(crate) async fn list_channels(
    State(state): State<AppState>,
    admin: Admin,
    Query(p): Query<ProjectParams>,
) -> ApiResult<AxumJson<AlertList<ChannelView>>> {
    let project = admin.project_filter(p.project)?;
    let channels = state.alerts.store.list_channels(project.as_deref()).await?;
    Ok(list(channels.into_iter().map(channel_view).collect()))
}

pub(crate) async fn load_channel(state: &AppState, admin: &Admin, id: &str) -> ApiResult<ChannelRecord> {
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
pub(crate) async fn get_channel(
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
pub(crate) async fn update_channel(
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
pub(crate) async fn delete_channel(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<String>,
) -> ApiResult<Response> {
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
pub(crate) async fn test_channel(
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
