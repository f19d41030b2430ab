//! The alerts pages: rules and channels with create, delete and test-send (a new
//! webhook's signing secret shown once), and the event history with each delivery's
//! attempts, dead letters redelivered from there.
use pages::{AlertsData, ChannelForm, EventsData, RuleForm};

use super::*;

/// Events on the history page, and how many deliveries' attempt logs it reads.
const EVENTS_PAGE: &str = "100";
const ATTEMPT_LOGS: usize = 60;

#[derive(Default)]
pub(super) struct AlertsState {
    notice: Option<String>,
    test: Option<pages::TestResult>,
    rule_form: Option<RuleForm>,
    rule_errors: FieldErrors,
    channel_form: Option<ChannelForm>,
    channel_errors: FieldErrors,
    list_error: Option<String>,
}

fn list_of(v: &Value) -> Vec<Value> {
    v["data"].as_array().cloned().unwrap_or_default()
}

pub(super) async fn alerts_page(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let notice = match q.get("done") {
        "rule-created" => Some("Rule created: it watches from now on.".to_owned()),
        "rule-deleted" => Some("Rule deleted.".to_owned()),
        "channel-created" => Some("Channel created.".to_owned()),
        "channel-deleted" => Some("Channel deleted.".to_owned()),
        _ => None,
    };
    render_alerts(&d, &session, StatusCode::OK, AlertsState { notice, ..AlertsState::default() }).await
}

pub(super) async fn render_alerts(d: &Dashboard, session: &Session, status: StatusCode, s: AlertsState) -> Page {
    let rules = list_of(&d.read(session, "/api/v1/alerts/rules").await?);
    let channels = list_of(&d.read(session, "/api/v1/alerts/channels").await?);
    let projects = if session.is_operator() { d.project_ids(session).await } else { Vec::new() };
    let own = session.project.clone().unwrap_or_else(|| projects.first().cloned().unwrap_or_default());
    let rule_form = s.rule_form.unwrap_or_else(|| RuleForm {
        project: own.clone(),
        thresholds: "80, 90, 100".to_owned(),
        ..RuleForm::default()
    });
    let channel_form = s.channel_form.unwrap_or_else(|| ChannelForm {
        project: own.clone(),
        kind: "webhook".to_owned(),
        smtp_tls: "starttls".to_owned(),
        ..ChannelForm::default()
    });
    let layout = Layout::new("Alerts", "alerts", session.project.as_deref(), &session.csrf);
    let data = AlertsData {
        rules: &rules,
        channels: &channels,
        projects,
        notice: s.notice,
        test: s.test,
        rule_form,
        rule_errors: s.rule_errors,
        channel_form,
        channel_errors: s.channel_errors,
        list_error: s.list_error,
    };
    Ok(rendered(status, pages::alerts(layout, data)))
}

fn alert_uri(what: &str, id: &str, rest: &str) -> String {
    format!("/api/v1/alerts/{what}/{}{rest}", pages::query_escape(id))
}

/// `80, 90 100` as percentages, or the message shown beside the field.
fn parse_thresholds(text: &str) -> Result<Option<Vec<u32>>, FieldErrors> {
    let parts: Vec<&str> = text.split([',', ' ', '%']).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Ok(None);
    }
    parts
        .iter()
        .map(|p| p.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|_| FieldErrors::one(Some("thresholds"), "whole percentages separated by commas, e.g. 80, 90, 100"))
}

pub(super) async fn create_rule(State(d): State<Dashboard>, headers: HeaderMap, body: Bytes) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let form = RuleForm {
        project: scoped_project(&session, f.get("project")),
        name: f.get("name").to_owned(),
        metric: f.get("metric").to_owned(),
        window: f.get("window").to_owned(),
        subject: f.get("subject").to_owned(),
        model: f.get("model").to_owned(),
        thresholds: f.get("thresholds").to_owned(),
        channels: f.all("channels").into_iter().filter(|c| !c.is_empty()).map(str::to_owned).collect(),
    };
    let mut request = Map::new();
    if !form.project.is_empty() {
        request.insert("project".into(), json!(form.project));
    }
    for (field, value) in [
        ("name", &form.name),
        ("metric", &form.metric),
        ("window", &form.window),
        ("subject", &form.subject),
        ("model", &form.model),
    ] {
        if !value.is_empty() {
            request.insert(field.into(), json!(value));
        }
    }
    request.insert("channels".into(), json!(form.channels));
    let (status, rule_errors) = match parse_thresholds(&form.thresholds) {
        Err(errors) => (StatusCode::BAD_REQUEST, errors),
        Ok(thresholds) => {
            if let Some(t) = thresholds {
                request.insert("thresholds".into(), json!(t));
            }
            match d.call(&session, Method::POST, "/api/v1/alerts/rules", Some(&Value::Object(request))).await {
                Ok(_) => return Ok(see_other("/dashboard/alerts?done=rule-created#rules")),
                Err(fail) if fail.status == StatusCode::UNAUTHORIZED => return Err(see_other("/dashboard/login")),
                Err(fail) => (fail.status, fail.errors()),
            }
        }
    };
    let s = AlertsState { rule_form: Some(form), rule_errors, ..AlertsState::default() };
    render_alerts(&d, &session, status, s).await
}

pub(super) async fn create_channel(State(d): State<Dashboard>, headers: HeaderMap, body: Bytes) -> Page {
    let (session, f) = d.form(&headers, &body)?;
    let form = ChannelForm {
        project: scoped_project(&session, f.get("project")),
        name: f.get("name").to_owned(),
        kind: f.get("kind").to_owned(),
        url: f.get("url").to_owned(),
        smtp_host: f.get("smtp_host").to_owned(),
        smtp_port: f.get("smtp_port").to_owned(),
        smtp_tls: f.get("smtp_tls").to_owned(),
        smtp_username: f.get("smtp_username").to_owned(),
        from: f.get("from").to_owned(),
        to: f.get("to").to_owned(),
    };
    let mut request = Map::new();
    if !form.project.is_empty() {
        request.insert("project".into(), json!(form.project));
    }
    if !form.name.is_empty() {
        request.insert("name".into(), json!(form.name));
    }
    request.insert("kind".into(), json!(form.kind));
    let mut errors = FieldErrors::default();
    if form.kind == "email" {
        for (field, value) in [
            ("smtp_host", &form.smtp_host),
            ("smtp_tls", &form.smtp_tls),
            ("smtp_username", &form.smtp_username),
            ("from", &form.from),
        ] {
            if !value.is_empty() {
                request.insert(field.into(), json!(value));
            }
        }
        if !f.raw("smtp_password").is_empty() {
            request.insert("smtp_password".into(), json!(f.raw("smtp_password")));
        }
        if !form.smtp_port.is_empty() {
            match form.smtp_port.parse::<u16>() {
                Ok(p) if p > 0 => {
                    request.insert("smtp_port".into(), json!(p));
                }
                _ => errors = FieldErrors::one(Some("smtp_port"), "a port from 1 to 65535"),
            }
        }
        let to: Vec<&str> = form.to.split([',', ' ', ';']).filter(|a| !a.is_empty()).collect();
        request.insert("to".into(), json!(to));
    } else if !form.url.is_empty() {
        request.insert("url".into(), json!(form.url));
    }
    let mut status = StatusCode::BAD_REQUEST;
    if errors.is_empty() {
        match d.call(&session, Method::POST, "/api/v1/alerts/channels", Some(&Value::Object(request))).await {
            Ok(created) if created["secret"].is_string() => {
                let layout = Layout::new("New channel", "alerts", session.project.as_deref(), &session.csrf);
                return Ok(rendered(StatusCode::CREATED, pages::channel_secret(layout, &created)));
            }
            Ok(_) => return Ok(see_other("/dashboard/alerts?done=channel-created#channels")),
            Err(fail) if fail.status == StatusCode::UNAUTHORIZED => return Err(see_other("/dashboard/login")),
            Err(fail) => {
                status = fail.status;
                errors = fail.errors();
            }
        }
    }
    let s = AlertsState { channel_form: Some(form), channel_errors: errors, ..AlertsState::default() };
    render_alerts(&d, &session, status, s).await
}

/// Deletes a rule or a channel; a refusal that is not a 404 (a channel a rule still
/// sends to) is shown above the lists.
async fn delete(d: &Dashboard, headers: &HeaderMap, body: &[u8], what: &str, id: &str, done: &str) -> Page {
    let (session, f) = d.form(headers, body)?;
    if f.get("confirm") != "yes" {
        let s = AlertsState { list_error: Some("Confirm to delete.".to_owned()), ..AlertsState::default() };
        return render_alerts(d, &session, StatusCode::BAD_REQUEST, s).await;
    }
    match d.call(&session, Method::DELETE, &alert_uri(what, id, ""), None).await {
        Ok(_) => Ok(see_other(&format!("/dashboard/alerts?done={done}"))),
        Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
            Err(d.fail_page(&session, fail))
        }
        Err(fail) => {
            let s = AlertsState { list_error: Some(fail.message), ..AlertsState::default() };
            render_alerts(d, &session, fail.status, s).await
        }
    }
}

pub(super) async fn delete_rule(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    delete(&d, &headers, &body, "rules", &id, "rule-deleted").await
}

pub(super) async fn delete_channel(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    delete(&d, &headers, &body, "channels", &id, "channel-deleted").await
}

pub(super) async fn test_channel(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let (session, _) = d.form(&headers, &body)?;
    match d.call(&session, Method::POST, &alert_uri("channels", &id, "/test"), None).await {
        Ok(delivery) => {
            let s = AlertsState { test: Some(pages::test_result(&id, &delivery)), ..AlertsState::default() };
            render_alerts(&d, &session, StatusCode::OK, s).await
        }
        Err(fail) if matches!(fail.status, StatusCode::NOT_FOUND | StatusCode::UNAUTHORIZED) => {
            Err(d.fail_page(&session, fail))
        }
        Err(fail) => {
            let s = AlertsState { list_error: Some(fail.message), ..AlertsState::default() };
            render_alerts(&d, &session, fail.status, s).await
        }
    }
}

pub(super) async fn events_page(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Page {
    let session = d.signed_in(&headers)?;
    let q = Fields::query(&raw);
    let status = match q.get("status") {
        s @ ("pending" | "delivered" | "dead") => s,
        _ => "",
    };
    let notice = match q.get("done") {
        "redelivered" => Some("Redelivery queued: it is sent again now, with a fresh schedule of retries.".to_owned()),
        _ => None,
    };
    let uri = format!("/api/v1/alerts/events{}", query_string(&[("status", status), ("limit", EVENTS_PAGE)]));
    let events = list_of(&d.read(&session, &uri).await?);
    let channels = d.read_optional(&session, "/api/v1/alerts/channels").await.map(|c| list_of(&c)).unwrap_or_default();
    let mut deliveries = Vec::new();
    let ids = events
        .iter()
        .flat_map(|e| e["deliveries"].as_array().into_iter().flatten())
        .filter_map(|dl| dl["id"].as_str())
        .take(ATTEMPT_LOGS);
    for id in ids {
        deliveries.extend(d.read_optional(&session, &alert_uri("deliveries", id, "")).await);
    }
    let layout = Layout::new("Alert events", "alerts", session.project.as_deref(), &session.csrf);
    let data = EventsData { events: &events, deliveries: &deliveries, channels: &channels, status, notice };
    Ok(rendered(StatusCode::OK, pages::events(layout, data)))
}

pub(super) async fn redeliver(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Page {
    let (session, _) = d.form(&headers, &body)?;
    match d.call(&session, Method::POST, &alert_uri("deliveries", &id, "/redeliver"), None).await {
        Ok(_) => Ok(see_other("/dashboard/alerts/events?done=redelivered")),
        Err(fail) => Err(d.fail_page(&session, fail)),
    }
}
