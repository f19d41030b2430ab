//! The periodic evaluation of the alert rules the limiter's decision cannot see:
//! forecast rules (a day or month quota projected to run out before its window
//! ends), anomaly rules (an hour far from its usual level) and "resolved"
//! notifications of threshold events whose window has ended or whose limit was raised.
//!
//! Every `alerts.evaluate_every_secs` (in distributed mode only on the holder of the
//! `alerts-evaluate` lease) [`evaluate_once`] computes the findings with the code the
//! analytics `forecast` and `anomalies` endpoints use
//! ([`crate::routes::analytics::quota_forecasts`],
//! [`crate::routes::analytics::hourly_anomalies`]) and writes each as an event with a
//! deterministic id (`tollgate_alerts::evaluate`): evaluating again adds nothing.

use std::collections::{HashMap, HashSet};

use tokio_util::sync::CancellationToken;
use tollgate_alerts::evaluate::{
    AnomalyFinding, ForecastFinding, anomaly_event, forecast_event, resolved_event, resolved_event_id, window_end_ms,
};
use tollgate_alerts::outbox::KIND_THRESHOLD;
use tollgate_alerts::{DeliveryQuery, RuleKind, RuleRecord};
use tollgate_analytics::anomaly::AnomalySettings;
use tollgate_analytics::rollup::hour_of;
use tollgate_analytics::store::{Dimension, RollupFilter};
use tollgate_core::calendar::MS_PER_HOUR;
use tollgate_core::{LimitSpec, Metric, SubjectKind, Zone};
use tollgate_gateway::now_ms;

use crate::app::AppState;
use crate::http::error::ApiError;
use crate::routes::analytics::{
    DEFAULT_ANOMALY_THRESHOLD, default_min_volume, hourly_anomalies, key_quota_specs, project_quota_specs,
    quota_forecasts,
};

/// How far back anomaly rules look: the complete hours of the last day (a new rule
/// also reports what it finds there; each hour once).
pub const ANOMALY_LOOKBACK_MS: i64 = 24 * MS_PER_HOUR;
/// How many recent deliveries per project are looked at for events to resolve.
pub const RESOLVE_SCAN: usize = 500;
/// Keys of a project a forecast rule without a key looks at.
const MAX_KEYS: usize = 1000;

/// Quotas with the zone each counts in.
type Quotas = Vec<(LimitSpec, Zone)>;

/// What one evaluation wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvaluateRun {
    pub forecast_events: usize,
    pub anomaly_events: usize,
    pub resolved_events: usize,
}

/// Evaluates every enabled forecast, anomaly and resolving rule once, at `now`.
pub async fn evaluate_once(state: &AppState, now: i64) -> Result<EvaluateRun, ApiError> {
    let rules = state.alerts.store.list_rules(None).await?;
    let mut run = EvaluateRun::default();
    for rule in rules.iter().filter(|r| r.enabled) {
        let outcome = match rule.kind {
            RuleKind::Forecast => evaluate_forecast(state, rule, now).await.map(|n| run.forecast_events += n),
            RuleKind::Anomaly => evaluate_anomaly(state, rule, now).await.map(|n| run.anomaly_events += n),
            RuleKind::LimitThreshold => Ok(()),
        };
        if let Err(error) = outcome {
            tracing::warn!(rule = %rule.id, %error, "evaluating an alert rule failed");
        }
    }
    run.resolved_events = resolve(state, &rules, now).await?;
    Ok(run)
}

fn subject_of(spec: &LimitSpec, project: &str, key: Option<&str>) -> Option<String> {
    match spec.subject {
        SubjectKind::Key => key.map(|k| format!("key:{k}")),
        SubjectKind::Project => Some(format!("project:{project}")),
        _ => None,
    }
}

async fn evaluate_forecast(state: &AppState, rule: &RuleRecord, now: i64) -> Result<usize, ApiError> {
    let Some(project) = rule.project_id.as_deref() else { return Ok(0) };
    // (key, quotas): the rule's key (its key and project quotas), or the project's
    // project-wide quotas and each key's own.
    let mut sets: Vec<(Option<String>, Quotas)> = Vec::new();
    if let Some(key_id) = &rule.key_id {
        let Some(key) = state.catalog.get_key(key_id).await? else { return Ok(0) };
        if key.project_id != project {
            return Ok(0);
        }
        sets.push((Some(key.id.clone()), key_quota_specs(state, &key).await?));
    } else {
        let zone = state.catalog.get_project(project).await?.and_then(|p| p.settings.time_zone).unwrap_or_default();
        sets.push((None, project_quota_specs(state, project, &zone).await?));
        let keys = state
            .catalog
            .list_keys(tollgate_store::KeyQuery {
                project_id: Some(project.to_owned()),
                after_id: None,
                limit: MAX_KEYS,
            })
            .await?;
        for key in keys {
            let Ok(specs) = key_quota_specs(state, &key).await else { continue };
            let own = specs.into_iter().filter(|(s, _)| s.subject == SubjectKind::Key).collect();
            sets.push((Some(key.id.clone()), own));
        }
    }
    let mut written = 0;
    for (key, specs) in sets {
        let specs: Vec<_> = specs.into_iter().filter(|(s, _)| rule.matcher.matches(s)).collect();
        if specs.is_empty() {
            continue;
        }
        for q in quota_forecasts(state, project, key.as_deref(), specs, now).await? {
            let Some(exhausts_at_ms) = q.forecast.exhausts_at_ms else { continue };
            if q.spec.limit == 0 || exhausts_at_ms >= q.window_end_ms {
                continue;
            }
            let Some(subject) = subject_of(&q.spec, project, key.as_deref()) else { continue };
            let finding = ForecastFinding {
                rule_id: rule.id.clone(),
                project_id: project.to_owned(),
                subject,
                used: q.forecast.used,
                projected: q.forecast.projected,
                exhausts_at_ms,
                window_start_ms: q.window_start_ms,
                window_end_ms: q.window_end_ms,
                time_zone: q.zone.name().to_owned(),
                spec: q.spec,
                at_ms: now,
            };
            if state.alerts.write_event(forecast_event(&finding), &rule.channels).await? {
                written += 1;
            }
        }
    }
    Ok(written)
}

async fn evaluate_anomaly(state: &AppState, rule: &RuleRecord, now: i64) -> Result<usize, ApiError> {
    let Some(project) = rule.project_id.as_deref() else { return Ok(0) };
    let metric = rule.matcher.metric.unwrap_or(Metric::Requests);
    let by_key = rule.key_id.is_some() || rule.matcher.subject == Some(SubjectKind::Key);
    let by = if by_key { Dimension::Key } else { Dimension::Project };
    let filter = RollupFilter {
        project_id: Some(project.to_owned()),
        key_id: rule.key_id.clone(),
        model: rule.matcher.model.clone(),
        provider: rule.matcher.provider.clone(),
        endpoint: rule.matcher.endpoint.clone(),
        counted: None,
    };
    let to_ms = hour_of(now);
    let from_ms = to_ms - ANOMALY_LOOKBACK_MS;
    let settings = AnomalySettings {
        weeks: 4,
        threshold: rule.score_threshold.unwrap_or(DEFAULT_ANOMALY_THRESHOLD),
        min_volume: rule.min_volume.unwrap_or_else(|| default_min_volume(metric)),
    };
    let mut written = 0;
    for (subject, a) in hourly_anomalies(state, filter, metric, by, from_ms, to_ms, &settings).await? {
        let subject = if by_key { format!("key:{subject}") } else { format!("project:{subject}") };
        let finding = AnomalyFinding {
            rule_id: rule.id.clone(),
            project_id: project.to_owned(),
            subject,
            metric,
            hour_ms: a.hour_ms,
            observed: a.observed,
            baseline: a.baseline,
            score: a.score,
            at_ms: now,
        };
        if state.alerts.write_event(anomaly_event(&finding), &rule.channels).await? {
            written += 1;
        }
    }
    Ok(written)
}

/// One "resolved" event for each threshold event of a `notify_resolved` rule whose
/// window has ended (a new window started) or whose key limit was raised above the
/// usage, among each project's recent deliveries.
async fn resolve(state: &AppState, rules: &[RuleRecord], now: i64) -> Result<usize, ApiError> {
    let resolving: HashMap<&str, &RuleRecord> = rules
        .iter()
        .filter(|r| r.enabled && r.notify_resolved && r.kind == RuleKind::LimitThreshold)
        .map(|r| (r.id.as_str(), r))
        .collect();
    if resolving.is_empty() {
        return Ok(0);
    }
    // Operator rules' events belong to the projects they fired for: scan them all.
    let projects: HashSet<Option<&str>> = if resolving.values().any(|r| r.project_id.is_none()) {
        HashSet::from([None])
    } else {
        resolving.values().map(|r| r.project_id.as_deref()).collect()
    };
    let mut written = 0;
    let mut seen = HashSet::new();
    for project in projects {
        let deliveries = state
            .alerts
            .store
            .list_deliveries(DeliveryQuery {
                project_id: project.map(str::to_owned),
                status: None,
                event_id: None,
                limit: RESOLVE_SCAN,
            })
            .await?;
        for delivery in deliveries {
            if !seen.insert(delivery.event_id.clone()) {
                continue;
            }
            let Some(event) = state.alerts.store.get_event(&delivery.event_id).await? else { continue };
            if event.kind != KIND_THRESHOLD {
                continue;
            }
            let Some(rule) = event.rule_id.as_deref().and_then(|id| resolving.get(id)) else { continue };
            if state.alerts.store.get_event(&resolved_event_id(&event.id)).await?.is_some() {
                continue;
            }
            let resolved = if window_end_ms(&event).is_some_and(|end| end <= now) {
                resolved_event(&event, "window_ended", now)
            } else {
                match raised_limit(state, &event, now).await {
                    Ok(Some((limit, used))) => {
                        let mut e = resolved_event(&event, "limit_raised", now);
                        e.data["new_limit"] = limit.into();
                        e.data["used_now"] = used.into();
                        e
                    }
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::debug!(event = %event.id, %error, "cannot check a crossed limit's current value");
                        continue;
                    }
                }
            };
            if state.alerts.write_event(resolved, &rule.channels).await? {
                written += 1;
            }
        }
    }
    Ok(written)
}

/// For a threshold event of a key's limit still in its window: the limit's current
/// value and usage, if the limit was raised so that usage is back under the
/// threshold (`None` otherwise, or when the subject is not a key).
async fn raised_limit(
    state: &AppState,
    event: &tollgate_alerts::EventRecord,
    now: i64,
) -> Result<Option<(u64, u64)>, ApiError> {
    let d = &event.data;
    let (Some(subject), Some(project), Some(threshold), Some(old_limit)) =
        (d["subject"].as_str(), d["project_id"].as_str(), d["threshold_percent"].as_u64(), d["limit"].as_u64())
    else {
        return Ok(None);
    };
    let Some(key_id) = subject.strip_prefix("key:") else { return Ok(None) };
    fn parse<T: serde::de::DeserializeOwned>(d: &serde_json::Value, name: &str) -> Option<T> {
        serde_json::from_value(d[name].clone()).ok()
    }
    let (Some(metric), Some(window), Some(kind)) = (
        parse::<Metric>(d, "metric"),
        parse::<tollgate_core::Window>(d, "window"),
        parse::<SubjectKind>(d, "subject_kind"),
    ) else {
        return Ok(None);
    };
    let scope = |name: &str| d[name].as_str();
    let Some(key) = state.catalog.get_key(key_id).await? else { return Ok(None) };
    let specs = key_quota_specs(state, &key).await?;
    let Some((spec, zone)) = specs.into_iter().find(|(s, _)| {
        (s.metric, s.window, s.subject, s.provider.as_deref(), s.model.as_deref(), s.endpoint.as_deref())
            == (metric, window, kind, scope("provider"), scope("model"), scope("endpoint"))
    }) else {
        return Ok(None);
    };
    if spec.limit <= old_limit {
        return Ok(None);
    }
    let limit = spec.limit;
    let item = tollgate_core::LimitItem::new(subject, spec).in_zone(zone);
    let decision = state.limiter.peek(project, &[item], tollgate_core::Amounts::default(), now).await?;
    let Some(status) = decision.statuses.first() else { return Ok(None) };
    let back_under = u128::from(status.used) * 100 < u128::from(threshold) * u128::from(limit);
    Ok(back_under.then_some((limit, status.used)))
}

/// Evaluates every `alerts.evaluate_every_secs`, the first time one period after start.
pub async fn evaluate_loop(state: AppState, cancel: CancellationToken) {
    let every = state.config.alerts.evaluate_every;
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                if let Some(parts) = &state.distributed
                    && let Err(error) = parts.alerts_evaluate_lease.release().await
                {
                    tracing::debug!(%error, "cannot release the alerts evaluation lease; it expires");
                }
                return;
            }
            () = tokio::time::sleep(every) => {}
        }
        // Of many instances, only the holder of the lease evaluates.
        if let Some(parts) = &state.distributed {
            match parts.alerts_evaluate_lease.acquire_or_renew().await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::debug!(%error, "cannot take the alerts evaluation lease; will retry");
                    continue;
                }
            }
        }
        match evaluate_once(&state, now_ms()).await {
            Ok(run) if run != EvaluateRun::default() => tracing::info!(
                forecast = run.forecast_events,
                anomaly = run.anomaly_events,
                resolved = run.resolved_events,
                "alert rules evaluated"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "evaluating alert rules failed; will retry"),
        }
    }
}
