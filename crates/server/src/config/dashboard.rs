//! `[dashboard]`: whether `/dashboard` is served and how long its sessions last
//! (docs/dashboard.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDashboard {
    /// Serve the dashboard at `/dashboard` (and send browsers asking for `/` there).
    pub enabled: bool,
    /// How long a sign-in lasts, in seconds.
    pub session_ttl_secs: u64,
}

impl Default for RawDashboard {
    fn default() -> Self {
        Self { enabled: true, session_ttl_secs: 8 * 3600 }
    }
}

/// The checked `[dashboard]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DashboardSettings {
    pub enabled: bool,
    pub session_ttl: Duration,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self { enabled: true, session_ttl: Duration::from_secs(8 * 3600) }
    }
}

pub(super) fn dashboard_settings(raw: &RawDashboard) -> Result<DashboardSettings, ConfigError> {
    if !(60..=30 * 86_400).contains(&raw.session_ttl_secs) {
        return Err(invalid("dashboard.session_ttl_secs", "must be from 60 (a minute) to 2592000 (30 days)"));
    }
    Ok(DashboardSettings { enabled: raw.enabled, session_ttl: Duration::from_secs(raw.session_ttl_secs) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_lifetime_is_bounded() {
        assert_eq!(dashboard_settings(&RawDashboard::default()).ok(), Some(DashboardSettings::default()));
        for bad in [0, 59, 30 * 86_400 + 1] {
            let e = dashboard_settings(&RawDashboard { enabled: true, session_ttl_secs: bad });
            assert!(e.is_err_and(|e| e.to_string().contains("dashboard.session_ttl_secs")));
        }
    }
}
