//! `[alerts]`: the master key secrets are sealed with, outbound safety, retries.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::Secret;

use super::{ConfigError, invalid};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAlerts {
    /// The AES-256 key channel secrets are sealed with: 64 hex digits or base64 of 32
    /// bytes (`TOLLGATE_ALERTS__MASTER_KEY`). Unset, and no `master_key_file`: the
    /// embedded store makes one in `<data_dir>/alerts-master.key` (mode 0600); the
    /// distributed store cannot (every instance needs the same key), so channels with
    /// secrets are refused until one is set.
    pub master_key: Option<Secret>,
    /// A file holding the master key (a mounted secret).
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, still used to open what they sealed (rotation).
    pub old_master_keys: Vec<Secret>,
    /// Webhook and Slack URLs may point at loopback, private and link-local addresses.
    pub allow_private_targets: bool,
    /// The delay before each retry, in milliseconds; after the last, a delivery is dead.
    pub retry_schedule_ms: Vec<u64>,
    /// How often the delivery worker looks for due deliveries when not woken.
    pub poll_ms: u64,
    /// How long a worker holds a claimed delivery before another may retry it.
    pub lease_secs: u64,
    /// The timeout of one send (connect, request and answer).
    pub send_timeout_ms: u64,
    /// How often rules are reloaded from the store (changes made on other instances).
    pub rules_refresh_ms: u64,
    /// How often forecast, anomaly and resolved rules are evaluated, in seconds (in
    /// distributed mode by one instance: the holder of the `alerts-evaluate` lease).
    pub evaluate_every_secs: u64,
}

impl Default for RawAlerts {
    fn default() -> Self {
        Self {
            master_key: None,
            master_key_file: None,
            old_master_keys: Vec::new(),
            allow_private_targets: false,
            // 5 s, 5 min, 30 min, 2 h, 5 h, 10 h.
            retry_schedule_ms: vec![5_000, 300_000, 1_800_000, 7_200_000, 18_000_000, 36_000_000],
            poll_ms: 1_000,
            lease_secs: 60,
            send_timeout_ms: 10_000,
            rules_refresh_ms: 5_000,
            evaluate_every_secs: 300,
        }
    }
}

/// The checked `[alerts]` settings.
#[derive(Clone, Debug)]
pub struct AlertsSettings {
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
    pub old_master_keys: Vec<Secret>,
    pub allow_private_targets: bool,
    pub retry_schedule: Vec<Duration>,
    pub poll_every: Duration,
    pub lease: Duration,
    pub send_timeout: Duration,
    pub rules_refresh: Duration,
    pub evaluate_every: Duration,
}

impl Default for AlertsSettings {
    fn default() -> Self {
        let raw = RawAlerts::default();
        Self {
            master_key: None,
            master_key_file: None,
            old_master_keys: Vec::new(),
            allow_private_targets: false,
            retry_schedule: raw.retry_schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
            poll_every: Duration::from_millis(raw.poll_ms),
            lease: Duration::from_secs(raw.lease_secs),
            send_timeout: Duration::from_millis(raw.send_timeout_ms),
            rules_refresh: Duration::from_millis(raw.rules_refresh_ms),
            evaluate_every: Duration::from_secs(raw.evaluate_every_secs),
        }
    }
}

pub(super) fn alerts_settings(raw: &RawAlerts) -> Result<AlertsSettings, ConfigError> {
    if raw.retry_schedule_ms.len() > 20 {
        return Err(invalid("alerts.retry_schedule_ms", "at most 20 retries"));
    }
    if raw.retry_schedule_ms.iter().any(|ms| *ms == 0 || *ms > 7 * 86_400_000) {
        return Err(invalid("alerts.retry_schedule_ms", "each delay must be from 1 ms to 7 days"));
    }
    if raw.poll_ms == 0 || raw.poll_ms > 3_600_000 {
        return Err(invalid("alerts.poll_ms", "must be from 1 to 3600000"));
    }
    if raw.lease_secs == 0 {
        return Err(invalid("alerts.lease_secs", "must be at least 1"));
    }
    if raw.send_timeout_ms == 0 || raw.send_timeout_ms / 1000 >= raw.lease_secs {
        return Err(invalid("alerts.send_timeout_ms", "must be at least 1 and shorter than alerts.lease_secs"));
    }
    if raw.rules_refresh_ms == 0 {
        return Err(invalid("alerts.rules_refresh_ms", "must be at least 1"));
    }
    if raw.evaluate_every_secs == 0 || raw.evaluate_every_secs > 86_400 {
        return Err(invalid("alerts.evaluate_every_secs", "must be from 1 to 86400"));
    }
    let check_key = |setting: &str, key: &Secret| {
        tollgate_alerts::seal::MasterKey::parse(key.expose()).map(|_| ()).map_err(|e| invalid(setting, e.to_string()))
    };
    if let Some(key) = &raw.master_key {
        check_key("alerts.master_key", key)?;
    }
    for key in &raw.old_master_keys {
        check_key("alerts.old_master_keys", key)?;
    }
    Ok(AlertsSettings {
        master_key: raw.master_key.clone().filter(|k| !k.expose().is_empty()),
        master_key_file: raw.master_key_file.clone(),
        old_master_keys: raw.old_master_keys.clone(),
        allow_private_targets: raw.allow_private_targets,
        retry_schedule: raw.retry_schedule_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(),
        poll_every: Duration::from_millis(raw.poll_ms),
        lease: Duration::from_secs(raw.lease_secs),
        send_timeout: Duration::from_millis(raw.send_timeout_ms),
        rules_refresh: Duration::from_millis(raw.rules_refresh_ms),
        evaluate_every: Duration::from_secs(raw.evaluate_every_secs),
    })
}
