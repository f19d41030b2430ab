//! The events of the periodically evaluated rules: forecast rules (a quota projected
//! to run out before its window ends), anomaly rules (an hour far from its usual
//! level) and "resolved" notifications of threshold events whose window has ended.
//!
//! The server's evaluation job (`crates/server/src/alerts_evaluate.rs`) computes
//! the findings with the analytics code the `forecast` and `anomalies` endpoints use
//! and turns them into events here. Every id is deterministic — a forecast per
//! (rule, subject, limit, window), an anomaly per (rule, subject, metric, hour), a
//! resolution per earlier event — so evaluating again, on any instance, after a
//! restart, adds nothing.

use serde_json::{Value, json};
use tollgate_core::calendar::to_rfc3339;
use tollgate_core::{LimitSpec, Metric};

use crate::EventRecord;
use crate::outbox::{EventData, KIND_THRESHOLD, hash_id};

/// A quota projected to run out before its window ends.
pub const KIND_FORECAST: &str = "quota.forecast_exhausted";
/// An hour far from its usual level.
pub const KIND_ANOMALY: &str = "usage.anomaly";
/// An earlier threshold event whose window has ended.
pub const KIND_RESOLVED: &str = "alert.resolved";

/// A forecast that says a quota runs out before its window ends.
#[derive(Clone, Debug, PartialEq)]
pub struct ForecastFinding {
    pub rule_id: String,
    pub project_id: String,
    /// `key:<id>` or `project:<id>`.
    pub subject: String,
    pub spec: LimitSpec,
    pub used: u64,
    pub projected: u64,
    pub exhausts_at_ms: i64,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub time_zone: String,
    pub at_ms: i64,
}

/// The id of a forecast event: one per rule, subject, limit and window.
pub fn forecast_event_id(f: &ForecastFinding) -> String {
    let s = &f.spec;
    hash_id(
        "evt_",
        &[
            KIND_FORECAST,
            &f.rule_id,
            &f.subject,
            s.metric.as_str(),
            s.window.as_str(),
            s.subject.as_str(),
            s.provider.as_deref().unwrap_or(""),
            s.model.as_deref().unwrap_or(""),
            s.endpoint.as_deref().unwrap_or(""),
            &s.limit.to_string(),
            &f.window_start_ms.to_string(),
        ],
    )
}

pub fn forecast_event(f: &ForecastFinding) -> EventRecord {
    let s = &f.spec;
    EventRecord {
        id: forecast_event_id(f),
        project_id: Some(f.project_id.clone()),
        rule_id: Some(f.rule_id.clone()),
        kind: KIND_FORECAST.into(),
        data: json!({
            "project_id": f.project_id,
            "rule_id": f.rule_id,
            "subject": f.subject,
            "metric": s.metric.as_str(),
            "window": s.window.as_str(),
            "subject_kind": s.subject.as_str(),
            "provider": s.provider.as_deref(),
            "model": s.model.as_deref(),
            "endpoint": s.endpoint.as_deref(),
            "limit": s.limit,
            "used": f.used,
            "projected": f.projected,
            "exhausts_at": to_rfc3339(f.exhausts_at_ms),
            "window_start": to_rfc3339(f.window_start_ms),
            "window_end": to_rfc3339(f.window_end_ms),
            "time_zone": f.time_zone,
        }),
        created_at_ms: f.at_ms,
    }
}

/// An anomalous hour.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyFinding {
    pub rule_id: String,
    pub project_id: String,
    /// `key:<id>` or `project:<id>`.
    pub subject: String,
    pub metric: Metric,
    pub hour_ms: i64,
    pub observed: u64,
    pub baseline: f64,
    pub score: f64,
    pub at_ms: i64,
}

/// The id of an anomaly event: one per rule, subject, metric and hour.
pub fn anomaly_event_id(a: &AnomalyFinding) -> String {
    hash_id("evt_", &[KIND_ANOMALY, &a.rule_id, &a.subject, a.metric.as_str(), &a.hour_ms.to_string()])
}

pub fn anomaly_event(a: &AnomalyFinding) -> EventRecord {
    EventRecord {
        id: anomaly_event_id(a),
        project_id: Some(a.project_id.clone()),
        rule_id: Some(a.rule_id.clone()),
        kind: KIND_ANOMALY.into(),
        data: json!({
            "project_id": a.project_id,
            "rule_id": a.rule_id,
            "subject": a.subject,
            "metric": a.metric.as_str(),
            "hour": to_rfc3339(a.hour_ms),
            "observed": a.observed,
            "baseline": a.baseline,
            "score": a.score,
        }),
        created_at_ms: a.at_ms,
    }
}

/// The id of the event that resolves `event_id`: one per earlier event.
pub fn resolved_event_id(event_id: &str) -> String {
    hash_id("evt_", &[KIND_RESOLVED, event_id])
}

/// The end of a threshold event's window (Unix ms), if it has one.
pub fn window_end_ms(event: &EventRecord) -> Option<i64> {
    tollgate_core::calendar::parse_timestamp(event.data["window_end"].as_str()?)
}

/// The "resolved" event of a threshold event whose window ended (`reason`:
/// `window_ended`).
pub fn resolved_event(original: &EventRecord, reason: &str, at_ms: i64) -> EventRecord {
    let mut data = original.data.clone();
    if let Value::Object(map) = &mut data {
        map.insert("resolves_event_id".into(), json!(original.id));
        map.insert("resolves_type".into(), json!(original.kind));
        map.insert("reason".into(), json!(reason));
    }
    EventRecord {
        id: resolved_event_id(&original.id),
        project_id: original.project_id.clone(),
        rule_id: original.rule_id.clone(),
        kind: KIND_RESOLVED.into(),
        data,
        created_at_ms: at_ms,
    }
}

fn text(d: &Value, name: &str) -> String {
    match &d[name] {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        other => other.to_string(),
    }
}

/// The title of a forecast, anomaly or resolved event (`None`: another kind).
pub fn title(e: &EventData) -> Option<String> {
    let d = &e.data;
    match e.kind.as_str() {
        KIND_FORECAST => Some(format!(
            "Quota projected to run out: {} {} {} {} (projected {} of {})",
            text(d, "project_id"),
            text(d, "subject"),
            text(d, "metric"),
            text(d, "window"),
            text(d, "projected"),
            text(d, "limit"),
        )),
        KIND_ANOMALY => Some(format!(
            "Unusual usage: {} {} {} at {} ({} against a usual {})",
            text(d, "project_id"),
            text(d, "subject"),
            text(d, "metric"),
            text(d, "hour"),
            text(d, "observed"),
            text(d, "baseline"),
        )),
        KIND_RESOLVED => {
            let was = EventData {
                kind: d["resolves_type"].as_str().unwrap_or(KIND_THRESHOLD).to_owned(),
                timestamp: e.timestamp.clone(),
                event_id: text(d, "resolves_event_id"),
                data: d.clone(),
            };
            Some(format!("Resolved: {}", was.title()))
        }
        _ => None,
    }
}

/// The figures of a forecast, anomaly or resolved event (`None`: another kind).
pub fn figures(e: &EventData, field: &dyn Fn(&str) -> String) -> Option<Vec<(String, String)>> {
    let pairs = match e.kind.as_str() {
        KIND_FORECAST => vec![
            ("Project".into(), field("project_id")),
            ("Subject".into(), field("subject")),
            ("Limit".into(), format!("{} per {}", field("metric"), field("window"))),
            ("Used".into(), format!("{} of {}", field("used"), field("limit"))),
            ("Projected".into(), format!("{} by {}", field("projected"), field("window_end"))),
            ("Runs out at".into(), field("exhausts_at")),
            ("Window".into(), format!("{} to {}", field("window_start"), field("window_end"))),
            ("Rule".into(), field("rule_id")),
        ],
        KIND_ANOMALY => vec![
            ("Project".into(), field("project_id")),
            ("Subject".into(), field("subject")),
            ("Metric".into(), field("metric")),
            ("Hour".into(), field("hour")),
            ("Observed".into(), field("observed")),
            ("Usual".into(), field("baseline")),
            ("Score".into(), field("score")),
            ("Rule".into(), field("rule_id")),
        ],
        KIND_RESOLVED => vec![
            ("Project".into(), field("project_id")),
            ("Subject".into(), field("subject")),
            ("Limit".into(), format!("{} per {}", field("metric"), field("window"))),
            ("Threshold".into(), format!("{}%", field("threshold_percent"))),
            ("Reason".into(), field("reason")),
            ("Window".into(), format!("{} to {}", field("window_start"), field("window_end"))),
            ("Resolves".into(), field("resolves_event_id")),
            ("Rule".into(), field("rule_id")),
        ],
        _ => return None,
    };
    Some(pairs)
}

#[cfg(test)]
mod tests {
    use tollgate_core::Window;

    use super::*;
    use crate::outbox::event_data;

    #[test]
    fn ids_are_deterministic_and_titles_clear() {
        let f = ForecastFinding {
            rule_id: "r".into(),
            project_id: "p".into(),
            subject: "key:k".into(),
            spec: LimitSpec::new(Metric::Requests, Window::Month, 100),
            used: 40,
            projected: 150,
            exhausts_at_ms: 2_000,
            window_start_ms: 0,
            window_end_ms: 10_000,
            time_zone: "UTC".into(),
            at_ms: 1_000,
        };
        let e = forecast_event(&f);
        assert_eq!(e.id, forecast_event(&ForecastFinding { at_ms: 5_000, used: 50, ..f.clone() }).id);
        assert_ne!(e.id, forecast_event(&ForecastFinding { window_start_ms: 10_000, ..f }).id);
        assert!(event_data(&e).title().starts_with("Quota projected to run out: p key:k requests month"));
        let r = resolved_event(&e, "window_ended", 3_000);
        assert_eq!(r.id, resolved_event_id(&e.id));
        assert!(event_data(&r).title().starts_with("Resolved: "), "{}", event_data(&r).title());
    }
}
