//! `[analytics]`: how far back queries reach and how long raw rows are kept.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAnalytics {
    /// The longest range an analytics query may ask for, in days.
    pub max_range_days: u32,
    /// Raw ledger rows older than this many days are deleted (0: kept forever).
    pub retention_days: u32,
    /// Hourly rollups older than this many days are deleted (0: kept forever).
    pub rollup_retention_days: u32,
    /// Ledger rows one retention statement deletes at most.
    pub retention_batch: usize,
    /// How often retention runs, in seconds.
    pub retention_every_secs: u64,
}

impl Default for RawAnalytics {
    fn default() -> Self {
        Self {
            max_range_days: 92,
            retention_days: 90,
            rollup_retention_days: 800,
            retention_batch: 5_000,
            retention_every_secs: 3_600,
        }
    }
}

/// The checked `[analytics]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalyticsSettings {
    pub max_range_ms: i64,
    /// `None`: raw rows are kept forever.
    pub retention: Option<Duration>,
    /// `None`: rollups are kept forever.
    pub rollup_retention: Option<Duration>,
    pub retention_batch: usize,
    pub retention_every: Duration,
}

impl Default for AnalyticsSettings {
    fn default() -> Self {
        analytics_settings(&RawAnalytics::default()).unwrap_or(Self {
            max_range_ms: 92 * tollgate_core::calendar::MS_PER_DAY,
            retention: None,
            rollup_retention: None,
            retention_batch: 5_000,
            retention_every: Duration::from_secs(3_600),
        })
    }
}

pub(super) fn analytics_settings(raw: &RawAnalytics) -> Result<AnalyticsSettings, ConfigError> {
    const DAY: u64 = 86_400;
    if raw.max_range_days == 0 || raw.max_range_days > 3_660 {
        return Err(invalid("analytics.max_range_days", "must be from 1 to 3660"));
    }
    if raw.retention_batch == 0 || raw.retention_batch > 1_000_000 {
        return Err(invalid("analytics.retention_batch", "must be from 1 to 1000000"));
    }
    if raw.retention_every_secs == 0 {
        return Err(invalid("analytics.retention_every_secs", "must be at least 1"));
    }
    if raw.rollup_retention_days != 0 && raw.rollup_retention_days < raw.retention_days {
        return Err(invalid(
            "analytics.rollup_retention_days",
            "must be at least analytics.retention_days (rollups outlive the rows they sum), or 0",
        ));
    }
    let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * DAY));
    Ok(AnalyticsSettings {
        max_range_ms: i64::from(raw.max_range_days) * tollgate_core::calendar::MS_PER_DAY,
        retention: days(raw.retention_days),
        rollup_retention: days(raw.rollup_retention_days),
        retention_batch: raw.retention_batch,
        retention_every: Duration::from_secs(raw.retention_every_secs),
    })
}
