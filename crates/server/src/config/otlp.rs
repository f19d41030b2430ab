//! `[otlp]`: optional export of one span per request to an OpenTelemetry collector,
//! over OTLP/HTTP with the JSON encoding (`POST {endpoint}/v1/traces`). Off by default.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOtlp {
    /// Export spans (default false).
    pub enabled: bool,
    /// The collector's OTLP/HTTP base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// How long one export may take before it is given up, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for RawOtlp {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: "http://127.0.0.1:4318".into(),
            service_name: "tollgate".into(),
            timeout_ms: 5_000,
        }
    }
}

/// The checked `[otlp]` settings (present only when export is on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpSettings {
    /// The full traces URL (`{endpoint}/v1/traces`).
    pub traces_url: String,
    pub service_name: String,
    pub timeout: Duration,
}

pub(super) fn otlp_settings(raw: &RawOtlp) -> Result<Option<OtlpSettings>, ConfigError> {
    if !raw.enabled {
        return Ok(None);
    }
    let base = raw.endpoint.trim_end_matches('/');
    let rest = base.strip_prefix("http://").or_else(|| base.strip_prefix("https://"));
    if !rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(invalid("otlp.endpoint", "must be an http:// or https:// URL such as http://127.0.0.1:4318"));
    }
    if raw.service_name.is_empty() || raw.service_name.len() > 256 {
        return Err(invalid("otlp.service_name", "must be 1-256 characters"));
    }
    if raw.timeout_ms == 0 || raw.timeout_ms > 60_000 {
        return Err(invalid("otlp.timeout_ms", "must be from 1 to 60000"));
    }
    let traces_url = if base.ends_with("/v1/traces") { base.to_owned() } else { format!("{base}/v1/traces") };
    Ok(Some(OtlpSettings {
        traces_url,
        service_name: raw.service_name.clone(),
        timeout: Duration::from_millis(raw.timeout_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        assert_eq!(otlp_settings(&RawOtlp::default()).ok(), Some(None));
        let on = RawOtlp { enabled: true, endpoint: "http://collector:4318/".into(), ..RawOtlp::default() };
        let settings = otlp_settings(&on).ok().flatten().map(|s| s.traces_url);
        assert_eq!(settings.as_deref(), Some("http://collector:4318/v1/traces"));
        let bad = RawOtlp { enabled: true, endpoint: "collector:4318".into(), ..RawOtlp::default() };
        assert!(otlp_settings(&bad).is_err());
    }
}
