//! The outbox as the API shows it: events, deliveries, their attempts, redelivery.

#[allow(unused_imports)]
use super::*;

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

pub(crate) fn event_view(e: EventRecord) -> EventView {
    EventView {
        id: e.id,
        project: e.project_id,
        rule_id: e.rule_id,
        kind: e.kind,
        data: e.data,
        created_at: to_rfc3339(e.created_at_ms),
    }
}

pub(crate) fn delivery_view(
    d: DeliveryRecord,
    event: Option<EventRecord>,
    attempts: Option<Vec<AttemptRecord>>,
) -> DeliveryView {
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

pub(crate) fn outbox_query(admin: &Admin, p: OutboxParams) -> ApiResult<DeliveryQuery> {
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
pub(crate) async fn list_deliveries(
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
pub(crate) async fn list_events(
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

pub(crate) async fn load_delivery(state: &AppState, admin: &Admin, id: &str) -> ApiResult<DeliveryRecord> {
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
pub(crate) async fn get_delivery(
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
pub(crate) async fn redeliver(
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
