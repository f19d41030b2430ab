//! The checks of alert rule kinds beyond limit thresholds — `forecast` and
//! `anomaly` rules, and `notify_resolved` — for `routes/alerts.rs`. Each refusal is a
//! 400 naming the field.

use tollgate_alerts::{LimitMatcher, RuleKind};
use tollgate_core::{SubjectKind, Window};

use crate::app::AppState;
use crate::http::error::ApiError;

/// The kind-specific fields of a new rule, as given.
pub struct KindFields {
    pub kind: Option<String>,
    pub key: Option<String>,
    pub thresholds_given: bool,
    pub threshold: Option<f64>,
    pub min_volume: Option<u64>,
    pub notify_resolved: Option<bool>,
}

/// The kind-specific fields of a rule, checked.
pub struct CheckedKind {
    pub kind: RuleKind,
    pub key_id: Option<String>,
    pub score_threshold: Option<f64>,
    pub min_volume: Option<u64>,
    pub notify_resolved: bool,
}

fn only_for(field: &str, kinds: &str) -> ApiError {
    ApiError::invalid_field(field, format!("is for {kinds} rules only"))
}

/// Checks a new rule's kind and its fields against the rule's project and matcher.
pub async fn check_kind(
    state: &AppState,
    project: &Option<String>,
    matcher: &LimitMatcher,
    f: KindFields,
) -> Result<CheckedKind, ApiError> {
    let kind = match f.kind.as_deref() {
        None | Some("limit_threshold") => RuleKind::LimitThreshold,
        Some("forecast") => RuleKind::Forecast,
        Some("anomaly") => RuleKind::Anomaly,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "kind",
                format!("unknown rule kind '{other}' (one of limit_threshold, forecast, anomaly)"),
            ));
        }
    };
    let periodic = matches!(kind, RuleKind::Forecast | RuleKind::Anomaly);
    if periodic {
        if project.is_none() {
            return Err(ApiError::invalid_field("project", "forecast and anomaly rules belong to a project"));
        }
        if f.thresholds_given {
            return Err(only_for("thresholds", "limit_threshold"));
        }
        if f.notify_resolved == Some(true) {
            return Err(only_for("notify_resolved", "limit_threshold"));
        }
        if matcher.subject.is_some_and(|s| !matches!(s, SubjectKind::Key | SubjectKind::Project)) {
            return Err(ApiError::invalid_field("subject", "forecast and anomaly rules watch a key or a project"));
        }
    } else if f.key.is_some() {
        return Err(only_for("key", "forecast and anomaly"));
    }
    if kind != RuleKind::Anomaly {
        if f.threshold.is_some() {
            return Err(only_for("threshold", "anomaly"));
        }
        if f.min_volume.is_some() {
            return Err(only_for("min_volume", "anomaly"));
        }
    }
    match kind {
        RuleKind::Forecast => {
            if matcher.window.is_some_and(|w| !matches!(w, Window::Day | Window::Month)) {
                return Err(ApiError::invalid_field("window", "forecast rules watch day and month quotas"));
            }
        }
        RuleKind::Anomaly => {
            if matcher.window.is_some() {
                return Err(ApiError::invalid_field("window", "anomaly rules compare hours: give no window"));
            }
            if let Some(t) = f.threshold
                && !(t.is_finite() && t > 0.0 && t <= 1_000.0)
            {
                return Err(ApiError::invalid_field("threshold", "must be a number above 0 (at most 1000)"));
            }
        }
        RuleKind::LimitThreshold => {}
    }
    if let Some(key_id) = &f.key {
        let found = state.catalog.get_key(key_id).await?;
        if found.is_none_or(|k| Some(&k.project_id) != project.as_ref()) {
            return Err(ApiError::invalid_field("key", format!("no key '{key_id}' in this project")));
        }
    }
    Ok(CheckedKind {
        kind,
        key_id: f.key,
        score_threshold: f.threshold,
        min_volume: f.min_volume,
        notify_resolved: f.notify_resolved.unwrap_or(false),
    })
}
