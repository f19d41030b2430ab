//! Limits as data: a metric counted over a window, capped at a number.
//!
//! A plan is a named list of limits. Nothing in the request path branches on a plan's
//! name: adding a token, cost or per-day limit is adding a row, not code.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::calendar::{MS_PER_HOUR, MS_PER_MINUTE};
use crate::zone::Zone;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    Requests,
    InputTokens,
    OutputTokens,
    TotalTokens,
    /// Cost in integer micro-dollars.
    CostMicros,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::InputTokens => "input_tokens",
            Metric::OutputTokens => "output_tokens",
            Metric::TotalTokens => "total_tokens",
            Metric::CostMicros => "cost_micros",
        }
    }
}

/// Over how long a limit counts.
///
/// Minute and hour are *rate limits*, enforced as sliding windows (no burst of twice
/// the limit across a window edge). Day and month are *quotas*, enforced as UTC
/// calendar windows that reset at midnight and on the first of the month.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn as_str(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// The length of a sliding window, or `None` for a calendar window.
    pub fn sliding_ms(self) -> Option<i64> {
        match self {
            Window::Minute => Some(MS_PER_MINUTE),
            Window::Hour => Some(MS_PER_HOUR),
            Window::Day | Window::Month => None,
        }
    }

    /// True for the windows that answer with `rate_limit_exceeded` and the
    /// `X-RateLimit-*` headers; false for quotas (`quota_exceeded`, `X-Quota-*`).
    pub fn is_rate(self) -> bool {
        self.sliding_ms().is_some()
    }
}

/// Whose usage a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// The key making the request (the default).
    #[default]
    Key,
    /// The key's project: the sum of all its keys.
    Project,
    /// The client's IP address, across every key of the project.
    Ip,
    /// An anonymous visitor (`X-Anonymous-Id`, or the IP when absent).
    Anonymous,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Key => "key",
            SubjectKind::Project => "project",
            SubjectKind::Ip => "ip",
            SubjectKind::Anonymous => "anonymous",
        }
    }

    pub fn is_key(&self) -> bool {
        *self == SubjectKind::Key
    }
}

/// One limit: at most `limit` of `metric` per `window`, for one kind of subject and
/// one scope of traffic: all of it, or only one provider, model or endpoint (any
/// combination; unset fields match everything).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    pub metric: Metric,
    pub window: Window,
    pub limit: u64,
    #[serde(default, skip_serializing_if = "SubjectKind::is_key")]
    pub subject: SubjectKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub provider: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub model: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub endpoint: Option<Arc<str>>,
}

/// The identity of a limit's counter within one subject: two limits with the same
/// slot count the same thing, and an override replaces the plan's limit in its slot.
pub type Slot<'a> = (Metric, Window, SubjectKind, Option<&'a str>, Option<&'a str>, Option<&'a str>);

impl LimitSpec {
    /// A key-level limit over all traffic.
    pub fn new(metric: Metric, window: Window, limit: u64) -> Self {
        Self { metric, window, limit, subject: SubjectKind::Key, provider: None, model: None, endpoint: None }
    }

    pub fn with_subject(mut self, subject: SubjectKind) -> Self {
        self.subject = subject;
        self
    }

    pub fn for_model(mut self, model: &str) -> Self {
        self.model = Some(Arc::from(model));
        self
    }

    pub fn for_provider(mut self, provider: &str) -> Self {
        self.provider = Some(Arc::from(provider));
        self
    }

    pub fn for_endpoint(mut self, endpoint: &str) -> Self {
        self.endpoint = Some(Arc::from(endpoint));
        self
    }

    /// True when the limit counts all traffic (no provider, model or endpoint).
    pub fn is_unscoped(&self) -> bool {
        self.provider.is_none() && self.model.is_none() && self.endpoint.is_none()
    }

    /// Whether a request to `provider`/`model`/`endpoint` is counted by this limit.
    pub fn matches(&self, provider: &str, model: &str, endpoint: &str) -> bool {
        self.provider.as_deref().is_none_or(|p| p == provider)
            && self.model.as_deref().is_none_or(|m| m == model)
            && self.endpoint.as_deref().is_none_or(|e| e == endpoint)
    }

    /// A stable name such as `requests_per_minute`, `total_tokens_per_day_project`
    /// or `cost_micros_per_month_model_gpt-4o`, used in API answers.
    pub fn name(&self) -> String {
        let mut name = String::with_capacity(32);
        self.write_name(&mut name);
        name
    }

    /// Appends [`name`](Self::name) to `out` (response headers build it for every
    /// limit of every answer: no allocation of its own).
    pub fn write_name(&self, out: &mut String) {
        out.push_str(self.metric.as_str());
        out.push_str("_per_");
        out.push_str(self.window.as_str());
        if !self.subject.is_key() {
            out.push('_');
            out.push_str(self.subject.as_str());
        }
        for (label, value) in [("provider", &self.provider), ("model", &self.model), ("endpoint", &self.endpoint)] {
            if let Some(v) = value {
                out.push('_');
                out.push_str(label);
                out.push('_');
                out.push_str(v);
            }
        }
    }

    pub fn slot(&self) -> Slot<'_> {
        (
            self.metric,
            self.window,
            self.subject,
            self.provider.as_deref(),
            self.model.as_deref(),
            self.endpoint.as_deref(),
        )
    }
}

/// Why a list of limits was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("limits[{index}]: {name} appears more than once")]
    Duplicate { index: usize, name: String },
    #[error("a plan may have at most {max} limits")]
    TooMany { max: usize },
    #[error("plan name must be 1-64 characters of a-z, 0-9, '-' or '_'")]
    BadPlanName,
    #[error("limits[{index}]: {name} is above the largest limit, {max}")]
    TooLarge { index: usize, name: String, max: u64 },
}

/// The largest `limit` a limit may have (`i64::MAX`: what SQL integer columns and
/// the API's `int64` hold).
pub const MAX_LIMIT_VALUE: u64 = i64::MAX as u64;

pub const MAX_LIMITS: usize = 32;

/// A named bundle of limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub limits: Vec<LimitSpec>,
    /// The IANA time zone of the plan's day and month windows (a day quota resets at
    /// local midnight). Unset: the project's `time_zone`, else UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<Zone>,
}

impl Plan {
    pub fn validate(&self) -> Result<(), LimitError> {
        if !is_slug(&self.name) {
            return Err(LimitError::BadPlanName);
        }
        validate_limits(&self.limits)
    }
}

/// Checks that no two limits share a slot and that the list is bounded.
pub fn validate_limits(limits: &[LimitSpec]) -> Result<(), LimitError> {
    if limits.len() > MAX_LIMITS {
        return Err(LimitError::TooMany { max: MAX_LIMITS });
    }
    for (index, limit) in limits.iter().enumerate() {
        if limit.limit > MAX_LIMIT_VALUE {
            return Err(LimitError::TooLarge { index, name: limit.name(), max: MAX_LIMIT_VALUE });
        }
        if limits[..index].iter().any(|l| l.slot() == limit.slot()) {
            return Err(LimitError::Duplicate { index, name: limit.name() });
        }
    }
    Ok(())
}

/// The plan's limits with each override replacing the limit in its slot, or added.
pub fn effective_limits(plan: &[LimitSpec], overrides: &[LimitSpec]) -> Vec<LimitSpec> {
    let mut out: Vec<LimitSpec> =
        plan.iter().map(|l| overrides.iter().find(|o| o.slot() == l.slot()).unwrap_or(l).clone()).collect();
    for o in overrides {
        if !out.iter().any(|l| l.slot() == o.slot()) {
            out.push(o.clone());
        }
    }
    out
}

/// Identifiers users choose (project ids, plan names): 1-64 of `a-z 0-9 - _`.
pub fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// How much of each metric one request or event uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amounts {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_micros: u64,
}

impl Amounts {
    pub const ONE_REQUEST: Amounts = Amounts { requests: 1, input_tokens: 0, output_tokens: 0, cost_micros: 0 };

    pub fn requests(n: u64) -> Self {
        Self { requests: n, ..Self::default() }
    }

    pub fn get(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Requests => self.requests,
            Metric::InputTokens => self.input_tokens,
            Metric::OutputTokens => self.output_tokens,
            Metric::TotalTokens => self.input_tokens.saturating_add(self.output_tokens),
            Metric::CostMicros => self.cost_micros,
        }
    }
}

/// The plans every new installation starts with (the seeds' numbers).
pub fn default_plans() -> Vec<Plan> {
    let plan = |name: &str, description: &str, per_minute: u64, per_month: u64| Plan {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        limits: vec![
            LimitSpec::new(Metric::Requests, Window::Minute, per_minute),
            LimitSpec::new(Metric::Requests, Window::Month, per_month),
        ],
        time_zone: None,
    };
    // The consumer-chat tiers: daily and monthly caps on requests, tokens and money.
    let chat = |name: &str, description: &str, x: u64| Plan {
        name: name.to_owned(),
        description: Some(description.to_owned()),
        limits: vec![
            LimitSpec::new(Metric::Requests, Window::Day, 500 * x),
            LimitSpec::new(Metric::TotalTokens, Window::Day, 100_000 * x),
            LimitSpec::new(Metric::CostMicros, Window::Day, 5_000_000 * x),
            LimitSpec::new(Metric::Requests, Window::Month, 5_000 * x),
            LimitSpec::new(Metric::TotalTokens, Window::Month, 1_000_000 * x),
            LimitSpec::new(Metric::CostMicros, Window::Month, 50_000_000 * x),
        ],
        time_zone: None,
    };
    vec![
        plan("free", "10 requests/min, 50,000 requests/month", 10, 50_000),
        plan("starter", "50 requests/min, 250,000 requests/month", 50, 250_000),
        plan("pro", "200 requests/min, 1,000,000 requests/month", 200, 1_000_000),
        plan("enterprise", "1,000 requests/min, 10,000,000 requests/month", 1_000, 10_000_000),
        chat("chat-free", "500 requests, 100k tokens, $5 a day; 5,000 requests, 1M tokens, $50 a month", 1),
        chat("chat-pro", "ten times chat-free", 10),
        Plan {
            name: "anonymous".to_owned(),
            description: Some("anonymous visitors (X-Anonymous-Id, or the IP): 50 requests a day".to_owned()),
            limits: vec![LimitSpec::new(Metric::Requests, Window::Day, 50).with_subject(SubjectKind::Anonymous)],
            time_zone: None,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_their_slot_and_add_new_ones() {
        let plan = [
            LimitSpec::new(Metric::Requests, Window::Minute, 10),
            LimitSpec::new(Metric::Requests, Window::Month, 50_000),
        ];
        let overrides = [
            LimitSpec::new(Metric::Requests, Window::Month, 7),
            LimitSpec::new(Metric::TotalTokens, Window::Day, 1_000),
        ];
        let eff = effective_limits(&plan, &overrides);
        assert_eq!(eff, vec![plan[0].clone(), overrides[0].clone(), overrides[1].clone()]);
    }

    #[test]
    fn duplicate_slots_are_named() {
        let limits = [
            LimitSpec::new(Metric::Requests, Window::Minute, 10),
            LimitSpec::new(Metric::Requests, Window::Minute, 20),
        ];
        assert_eq!(
            validate_limits(&limits),
            Err(LimitError::Duplicate { index: 1, name: "requests_per_minute".into() })
        );
    }

    #[test]
    fn scoped_and_subject_limits_have_their_own_slot_and_name() {
        let json = r#"{"metric":"total_tokens","window":"day","limit":5,"subject":"project","model":"gpt-4o"}"#;
        let spec: LimitSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.subject, SubjectKind::Project);
        assert_eq!(spec.model.as_deref(), Some("gpt-4o"));
        assert_eq!(spec.name(), "total_tokens_per_day_project_model_gpt-4o");
        assert_eq!(serde_json::to_string(&spec).unwrap(), json);
        let plain = LimitSpec::new(Metric::TotalTokens, Window::Day, 5);
        assert_ne!(plain.slot(), spec.slot());
        assert!(spec.matches("openai", "gpt-4o", "chat.completions"));
        assert!(!spec.matches("openai", "gpt-4o-mini", "chat.completions"));
        assert!(
            serde_json::from_str::<LimitSpec>(r#"{"metric":"requests","window":"day","limit":1,"colour":"red"}"#)
                .is_err()
        );
    }

    #[test]
    fn limit_spec_json_shape() {
        let spec: LimitSpec = serde_json::from_str(r#"{"metric":"requests","window":"minute","limit":10}"#).unwrap();
        assert_eq!(spec, LimitSpec::new(Metric::Requests, Window::Minute, 10));
        assert!(serde_json::from_str::<LimitSpec>(r#"{"metric":"requests","window":"week","limit":1}"#).is_err());
    }
}
