//! The alerts pages: rules and channels (create, delete, test-send; a webhook's
//! signing secret shown once), and the event history with each delivery's attempts
//! (dead letters redelivered from there).
use super::*;

pub struct RuleRow {
    pub id: String,
    pub name: String,
    pub project: String,
    /// What the rule watches: "requests · day · key", "any limit" when nothing is set.
    pub watches: String,
    pub thresholds: String,
    /// The channels sent to: id and label (name and kind, or the id of a missing one).
    pub channels: Vec<(String, String)>,
    pub enabled: bool,
    pub created: Time,
}

pub struct ChannelRow {
    pub id: String,
    pub name: String,
    pub project: String,
    pub kind: String,
    /// Where it sends: the webhook URL, the Slack hint, the e-mail recipients.
    pub target: String,
    pub enabled: bool,
    pub created: Time,
}

fn channel_label(c: &Value) -> String {
    let name = str_of(c, "name");
    let kind = str_of(c, "kind");
    if name.is_empty() { format!("{} ({kind})", str_of(c, "id")) } else { format!("{name} ({kind})") }
}

pub fn rule_row(r: &Value, channels: &[Value]) -> RuleRow {
    let name = str_of(r, "name");
    let mut watches: Vec<String> = ["metric", "window", "subject"]
        .iter()
        .filter_map(|f| r.get(*f).and_then(Value::as_str).map(|v| v.replace('_', " ")))
        .collect();
    for f in ["provider", "model", "endpoint"] {
        if let Some(v) = r.get(f).and_then(Value::as_str) {
            watches.push(format!("{f} {v}"));
        }
    }
    let thresholds: Vec<String> = r["thresholds"]
        .as_array()
        .map(|ts| ts.iter().filter_map(Value::as_u64).map(|t| format!("{t}%")).collect())
        .unwrap_or_default();
    RuleRow {
        id: str_of(r, "id").to_owned(),
        name: if name.is_empty() { "(unnamed)".to_owned() } else { name.to_owned() },
        project: r.get("project").and_then(Value::as_str).unwrap_or("(operator)").to_owned(),
        watches: if watches.is_empty() { "any limit".to_owned() } else { watches.join(" · ") },
        thresholds: thresholds.join(", "),
        channels: r["channels"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(Value::as_str)
                    .map(|id| {
                        let label = channels
                            .iter()
                            .find(|c| c["id"].as_str() == Some(id))
                            .map(channel_label)
                            .unwrap_or_else(|| id.to_owned());
                        (id.to_owned(), label)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        enabled: r["enabled"].as_bool().unwrap_or(true),
        created: time_of(r, "created_at").unwrap_or_default(),
    }
}

pub fn channel_row(c: &Value) -> ChannelRow {
    let name = str_of(c, "name");
    let kind = str_of(c, "kind");
    let target = match kind {
        "webhook" => str_of(c, "url").to_owned(),
        "slack" => format!("Slack webhook …{}", str_of(c, "secret_hint")),
        "email" => {
            let to: Vec<&str> =
                c["to"].as_array().map(|t| t.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            format!("{} via {}", to.join(", "), str_of(c, "smtp_host"))
        }
        _ => String::new(),
    };
    ChannelRow {
        id: str_of(c, "id").to_owned(),
        name: if name.is_empty() { "(unnamed)".to_owned() } else { name.to_owned() },
        project: c.get("project").and_then(Value::as_str).unwrap_or("(operator)").to_owned(),
        kind: kind.to_owned(),
        target,
        enabled: c["enabled"].as_bool().unwrap_or(true),
        created: time_of(c, "created_at").unwrap_or_default(),
    }
}

/// The create-rule form as typed.
#[derive(Clone, Debug, Default)]
pub struct RuleForm {
    pub project: String,
    pub name: String,
    pub metric: String,
    pub window: String,
    pub subject: String,
    pub model: String,
    pub thresholds: String,
    pub channels: Vec<String>,
}

/// The create-channel form as typed (never a secret).
#[derive(Clone, Debug, Default)]
pub struct ChannelForm {
    pub project: String,
    pub name: String,
    pub kind: String,
    pub url: String,
    pub smtp_host: String,
    pub smtp_port: String,
    pub smtp_tls: String,
    pub smtp_username: String,
    pub from: String,
    pub to: String,
}

/// The answer of a test-send, as the page shows it.
pub struct TestResult {
    pub channel: String,
    pub ok: bool,
    pub status: String,
    pub detail: String,
}

/// `POST /api/v1/alerts/channels/{id}/test`'s answer (a delivery with its attempts).
pub fn test_result(channel: &str, delivery: &Value) -> TestResult {
    let status = str_of(delivery, "status").to_owned();
    let last = delivery["attempt_log"].as_array().and_then(|a| a.last());
    let detail = match last {
        Some(a) if status == "pending" => {
            format!("{}; retried on the schedule until delivered or dead", attempt_line(a))
        }
        Some(a) => attempt_line(a),
        None => "no attempt yet: it is still pending".to_owned(),
    };
    TestResult { channel: channel.to_owned(), ok: status == "delivered", status, detail }
}

fn attempt_line(a: &Value) -> String {
    let code = a.get("status_code").and_then(Value::as_u64).map(|c| format!("HTTP {c}"));
    let error = a.get("error").and_then(Value::as_str).map(str::to_owned);
    let ok = if a["ok"].as_bool() == Some(true) { "sent" } else { "failed" };
    [Some(ok.to_owned()), code, error].into_iter().flatten().collect::<Vec<_>>().join(" · ")
}

pub const METRICS: &[&str] = &["requests", "input_tokens", "output_tokens", "total_tokens", "cost_micros"];
pub const WINDOWS: &[&str] = &["minute", "hour", "day", "month"];
pub const SUBJECTS: &[&str] = &["key", "project", "ip", "anonymous"];

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    layout: Layout,
    notice: Option<String>,
    test: Option<TestResult>,
    rules: Vec<RuleRow>,
    channels: Vec<ChannelRow>,
    /// Channels a new rule may send to: id and label.
    channel_choices: Vec<(String, String)>,
    projects: Vec<String>,
    metrics: &'static [&'static str],
    windows: &'static [&'static str],
    subjects: &'static [&'static str],
    rule_form: RuleForm,
    rule_errors: FieldErrors,
    channel_form: ChannelForm,
    channel_errors: FieldErrors,
    /// A refusal of a delete or test-send (a channel a rule still sends to).
    list_error: Option<String>,
}

impl AlertsPage {
    fn rule_general(&self) -> Option<String> {
        self.rule_errors.general_for(&[
            "project",
            "name",
            "metric",
            "window",
            "subject",
            "model",
            "thresholds",
            "channels",
        ])
    }

    fn channel_general(&self) -> Option<String> {
        self.channel_errors.general_for(&[
            "project",
            "name",
            "kind",
            "url",
            "smtp_host",
            "smtp_port",
            "smtp_tls",
            "smtp_username",
            "smtp_password",
            "from",
            "to",
        ])
    }

    fn chosen(&self, id: &str) -> bool {
        self.rule_form.channels.iter().any(|c| c == id)
    }
}

pub struct AlertsData<'a> {
    pub rules: &'a [Value],
    pub channels: &'a [Value],
    pub projects: Vec<String>,
    pub notice: Option<String>,
    pub test: Option<TestResult>,
    pub rule_form: RuleForm,
    pub rule_errors: FieldErrors,
    pub channel_form: ChannelForm,
    pub channel_errors: FieldErrors,
    pub list_error: Option<String>,
}

pub fn alerts(layout: Layout, d: AlertsData<'_>) -> Rendered {
    // A new rule sends to channels of its own project (the API checks): the operator
    // sees every project's, labelled with it.
    let channel_choices = d
        .channels
        .iter()
        .map(|c| {
            let label = match (layout.is_operator, c.get("project").and_then(Value::as_str)) {
                (true, Some(p)) => format!("{} · {p}", channel_label(c)),
                (true, None) => format!("{} · operator", channel_label(c)),
                (false, _) => channel_label(c),
            };
            (str_of(c, "id").to_owned(), label)
        })
        .collect();
    AlertsPage {
        layout,
        notice: d.notice,
        test: d.test,
        rules: d.rules.iter().map(|r| rule_row(r, d.channels)).collect(),
        channels: d.channels.iter().map(channel_row).collect(),
        channel_choices,
        projects: d.projects,
        metrics: METRICS,
        windows: WINDOWS,
        subjects: SUBJECTS,
        rule_form: d.rule_form,
        rule_errors: d.rule_errors,
        channel_form: d.channel_form,
        channel_errors: d.channel_errors,
        list_error: d.list_error,
    }
    .render()
}

#[derive(Template)]
#[template(path = "channel_secret.html")]
struct ChannelSecretPage<'a> {
    layout: Layout,
    id: &'a str,
    name: &'a str,
    url: &'a str,
    secret: &'a str,
}

/// The page that shows a new webhook channel's signing secret, once.
pub fn channel_secret(layout: Layout, created: &Value) -> Rendered {
    ChannelSecretPage {
        layout,
        id: str_of(created, "id"),
        name: str_of(created, "name"),
        url: str_of(created, "url"),
        secret: str_of(created, "secret"),
    }
    .render()
}

pub struct AttemptRow {
    pub attempt: u64,
    pub at: Time,
    pub ok: bool,
    pub line: String,
}

pub struct DeliveryRow {
    pub id: String,
    pub channel: String,
    pub status: String,
    pub attempts: u64,
    pub last_error: String,
    pub next_attempt: Option<Time>,
    pub delivered: Option<Time>,
    pub log: Vec<AttemptRow>,
}

pub struct EventRow {
    pub id: String,
    pub kind: String,
    pub project: String,
    pub rule: String,
    pub summary: String,
    pub created: Time,
    pub deliveries: Vec<DeliveryRow>,
}

/// One line about an event's data: the limit, the threshold and how far it got.
fn event_summary(data: &Value) -> String {
    let Some(obj) = data.as_object() else { return String::new() };
    let mut parts = Vec::new();
    for (k, v) in obj {
        let v = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        parts.push(format!("{}: {v}", k.replace('_', " ")));
    }
    parts.join(" · ")
}

#[derive(Template)]
#[template(path = "alert_events.html")]
struct EventsPage<'a> {
    layout: Layout,
    notice: Option<String>,
    status: &'a str,
    events: Vec<EventRow>,
}

pub struct EventsData<'a> {
    /// `GET /api/v1/alerts/events`'s `data`.
    pub events: &'a [Value],
    /// `GET /api/v1/alerts/deliveries/{id}` answers (with `attempt_log`).
    pub deliveries: &'a [Value],
    pub channels: &'a [Value],
    pub status: &'a str,
    pub notice: Option<String>,
}

pub fn events(layout: Layout, d: EventsData<'_>) -> Rendered {
    let events = d
        .events
        .iter()
        .map(|e| EventRow {
            id: str_of(e, "id").to_owned(),
            kind: str_of(e, "type").to_owned(),
            project: e.get("project").and_then(Value::as_str).unwrap_or("(operator)").to_owned(),
            rule: str_of(e, "rule_id").to_owned(),
            summary: event_summary(&e["data"]),
            created: time_of(e, "created_at").unwrap_or_default(),
            deliveries: e["deliveries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|dl| {
                    let id = str_of(dl, "id");
                    let full = d.deliveries.iter().find(|f| f["id"].as_str() == Some(id)).unwrap_or(dl);
                    let channel_id = str_of(dl, "channel_id");
                    DeliveryRow {
                        id: id.to_owned(),
                        channel: d
                            .channels
                            .iter()
                            .find(|c| c["id"].as_str() == Some(channel_id))
                            .map(channel_label)
                            .unwrap_or_else(|| channel_id.to_owned()),
                        status: str_of(full, "status").to_owned(),
                        attempts: u64_of(full, "attempts"),
                        last_error: str_of(full, "last_error").to_owned(),
                        next_attempt: time_of(full, "next_attempt_at"),
                        delivered: time_of(full, "delivered_at"),
                        log: full["attempt_log"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| AttemptRow {
                                attempt: u64_of(a, "attempt"),
                                at: time_of(a, "at").unwrap_or_default(),
                                ok: a["ok"].as_bool() == Some(true),
                                line: attempt_line(a),
                            })
                            .collect(),
                    }
                })
                .collect(),
        })
        .collect();
    EventsPage { layout, notice: d.notice, status: d.status, events }.render()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn layout() -> Layout {
        Layout::new("Alerts", "alerts", None, "csrf-token")
    }

    #[test]
    fn rules_show_what_they_watch_their_thresholds_and_channel_names() {
        let channels = [json!({ "id": "ch_1", "name": "ops", "kind": "webhook" })];
        let row = rule_row(
            &json!({ "id": "rule_1", "project": "acme", "metric": "cost_micros", "window": "month",
                "thresholds": [80, 100], "channels": ["ch_1", "ch_gone"], "enabled": true,
                "created_at": "2026-12-02T10:00:00Z" }),
            &channels,
        );
        assert_eq!(row.watches, "cost micros · month");
        assert_eq!(row.thresholds, "80%, 100%");
        assert_eq!(row.channels, vec![("ch_1".into(), "ops (webhook)".into()), ("ch_gone".into(), "ch_gone".into())]);
        assert_eq!(rule_row(&json!({ "id": "r" }), &[]).watches, "any limit");
    }

    #[test]
    fn a_test_send_reports_its_last_attempt() {
        let ok = test_result(
            "ch_1",
            &json!({ "status": "delivered", "attempt_log": [{ "attempt": 1, "ok": true, "status_code": 200 }] }),
        );
        assert!(ok.ok);
        assert_eq!(ok.detail, "sent · HTTP 200");
        let failing = test_result(
            "ch_1",
            &json!({ "status": "pending", "attempt_log": [{ "attempt": 1, "ok": false, "status_code": 500 }] }),
        );
        assert!(!failing.ok);
        assert!(failing.detail.starts_with("failed · HTTP 500; retried"), "{}", failing.detail);
    }

    #[test]
    fn pages_escape_what_the_api_returns_and_carry_the_csrf_token() {
        let channels =
            [json!({ "id": "ch_1", "name": "<script>x</script>", "kind": "webhook", "url": "https://a/\"b" })];
        let data = AlertsData {
            rules: &[],
            channels: &channels,
            projects: vec!["acme".into()],
            notice: None,
            test: None,
            rule_form: RuleForm::default(),
            rule_errors: FieldErrors::one(Some("thresholds"), "each threshold is a percentage from 1 to 1000"),
            channel_form: ChannelForm::default(),
            channel_errors: FieldErrors::one(Some("smtp_region"), "unknown field"),
            list_error: None,
        };
        let html = alerts(layout(), data).expect("renders");
        assert!(!html.contains("<script>x"), "escaped");
        assert!(html.contains("id=\"rthresholds-error\""));
        assert!(html.contains("unknown field"), "an error of a field the form lacks is shown at its top");
        assert!(html.contains("data-testid=\"rules-empty\""));
        assert_eq!(
            html.matches("name=\"csrf\" value=\"csrf-token\"").count(),
            5,
            "every form: two creates, test send, delete, sign-out"
        );

        let events = [json!({ "id": "evt_1", "type": "alert.test", "project": "acme", "data": { "percent": 90 },
            "created_at": "2026-12-02T10:00:00Z",
            "deliveries": [{ "id": "msg_1", "channel_id": "ch_1", "status": "dead", "attempts": 4 }] })];
        let full = [json!({ "id": "msg_1", "status": "dead", "attempts": 4, "last_error": "HTTP 500",
            "attempt_log": [{ "attempt": 1, "at": "2026-12-02T10:00:01Z", "ok": false, "status_code": 500 }] })];
        let html = super::events(
            layout(),
            EventsData { events: &events, deliveries: &full, channels: &channels, status: "", notice: None },
        )
        .expect("renders");
        assert!(html.contains("data-status=\"dead\"") && html.contains("dead letter"));
        assert!(html.contains("/dashboard/alerts/deliveries/msg_1/redeliver"));
        assert!(html.contains("failed · HTTP 500"));
        assert!(html.contains("<time datetime=\"2026-12-02T10:00:01Z\""));
    }
}
