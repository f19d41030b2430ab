//! `[secrets]`: the master key every sealed secret is sealed with (alert channel
//! secrets, projects' provider keys), and `[byok]`: what projects' own provider keys
//! may point at.
//!
//! `[alerts] master_key / master_key_file / old_master_keys` are the older names of the
//! same key: used when `[secrets]` sets none, refused at start when both set one and
//! they differ (two keys for one store would leave half the secrets unopenable).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tollgate_core::Secret;

use super::alerts::RawAlerts;
use super::{ConfigError, invalid};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSecrets {
    /// The AES-256 master key: 64 hex digits or base64 of 32 bytes
    /// (`TOLLGATE_SECRETS__MASTER_KEY`). Unset, and no `master_key_file` (here or in
    /// `[alerts]`): the embedded store makes one in `<data_dir>/alerts-master.key`
    /// (mode 0600); the distributed store cannot (every instance needs the same key),
    /// so secrets are refused until one is set.
    pub master_key: Option<Secret>,
    /// A file holding the master key (a mounted secret).
    pub master_key_file: Option<PathBuf>,
    /// Earlier master keys, still used to open what they sealed until
    /// `tollgate secrets rotate` has re-sealed it under the current one.
    pub old_master_keys: Vec<Secret>,
}

/// The checked master key settings, from `[secrets]` or else `[alerts]`.
#[derive(Clone, Debug, Default)]
pub struct SecretsSettings {
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
    pub old_master_keys: Vec<Secret>,
    /// Which section the current key comes from (`secrets` or `alerts`), for messages.
    pub section: &'static str,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawByok {
    /// Base URLs a project's own provider key may send its calls to instead of the
    /// operator's (`https://…/v1`); a project's `base_url` must start with one of them.
    /// Empty (the default): projects cannot choose a base URL at all, so no tenant can
    /// point the gateway at an address of its choosing.
    pub allowed_base_urls: Vec<String>,
    /// How long an instance keeps a project's opened key before reading the store
    /// again, in milliseconds (a key changed through another instance is used within
    /// it; through this one, at once).
    pub cache_ttl_ms: Option<u64>,
}

/// The checked `[byok]` settings.
#[derive(Clone, Debug)]
pub struct ByokSettings {
    pub allowed_base_urls: Vec<String>,
    pub cache_ttl: std::time::Duration,
}

impl Default for ByokSettings {
    fn default() -> Self {
        Self { allowed_base_urls: Vec::new(), cache_ttl: tollgate_gateway::byok::DEFAULT_TTL }
    }
}

impl ByokSettings {
    /// Whether a project may send its calls to `base_url`: it starts with an allowed
    /// base URL, at a path boundary (`https://a.example/v1` allows
    /// `https://a.example/v1` and `https://a.example/v1/x`, not `https://a.example/v10`).
    pub fn allows(&self, base_url: &str) -> bool {
        self.allowed_base_urls.iter().any(|allowed| {
            let allowed = allowed.trim_end_matches('/');
            base_url.strip_prefix(allowed).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

fn set(key: &Option<Secret>, file: &Option<PathBuf>) -> bool {
    key.as_ref().is_some_and(|k| !k.expose().is_empty()) || file.is_some()
}

pub(super) fn secrets_settings(raw: &RawSecrets, alerts: &RawAlerts) -> Result<SecretsSettings, ConfigError> {
    let check_key = |setting: &str, key: &Secret| {
        tollgate_alerts::seal::MasterKey::parse(key.expose()).map(|_| ()).map_err(|e| invalid(setting, e.to_string()))
    };
    for (setting, key) in [("secrets.master_key", &raw.master_key), ("alerts.master_key", &alerts.master_key)] {
        if let Some(key) = key.as_ref().filter(|k| !k.expose().is_empty()) {
            check_key(setting, key)?;
        }
    }
    for key in &raw.old_master_keys {
        check_key("secrets.old_master_keys", key)?;
    }
    for key in &alerts.old_master_keys {
        check_key("alerts.old_master_keys", key)?;
    }
    let in_secrets = set(&raw.master_key, &raw.master_key_file);
    let in_alerts = set(&alerts.master_key, &alerts.master_key_file);
    let nonempty = |k: &Option<Secret>| k.clone().filter(|k| !k.expose().is_empty());
    if in_secrets && in_alerts {
        let same =
            nonempty(&raw.master_key) == nonempty(&alerts.master_key) && raw.master_key_file == alerts.master_key_file;
        if !same {
            return Err(invalid(
                "secrets.master_key",
                "differs from alerts.master_key (or its file): one master key seals every secret; set it once, in \
                 [secrets], and remove it from [alerts] (an earlier key goes in secrets.old_master_keys)",
            ));
        }
    }
    let mut old_master_keys: Vec<Secret> = raw.old_master_keys.clone();
    for key in &alerts.old_master_keys {
        if !old_master_keys.contains(key) {
            old_master_keys.push(key.clone());
        }
    }
    let (master_key, master_key_file, section) = if in_secrets || !in_alerts {
        (nonempty(&raw.master_key), raw.master_key_file.clone(), "secrets")
    } else {
        (nonempty(&alerts.master_key), alerts.master_key_file.clone(), "alerts")
    };
    Ok(SecretsSettings { master_key, master_key_file, old_master_keys, section })
}

pub(super) fn byok_settings(raw: &RawByok) -> Result<ByokSettings, ConfigError> {
    let mut allowed = Vec::with_capacity(raw.allowed_base_urls.len());
    for url in &raw.allowed_base_urls {
        let url = url.trim();
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        let host = rest.map(|r| r.split('/').next().unwrap_or_default());
        if host.is_none_or(|h| h.is_empty() || h.contains('@')) || !url.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "byok.allowed_base_urls",
                format!("'{url}' is not a base URL like https://api.example.com/v1 (no credentials)"),
            ));
        }
        allowed.push(url.trim_end_matches('/').to_owned());
    }
    let cache_ttl = match raw.cache_ttl_ms {
        None => tollgate_gateway::byok::DEFAULT_TTL,
        Some(ms) if ms <= 600_000 => std::time::Duration::from_millis(ms),
        Some(_) => return Err(invalid("byok.cache_ttl_ms", "must be at most 600000 (10 minutes)")),
    };
    Ok(ByokSettings { allowed_base_urls: allowed, cache_ttl })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: char) -> Secret {
        Secret::new(byte.to_string().repeat(64))
    }

    #[test]
    fn secrets_come_from_secrets_or_else_alerts_and_may_not_differ() {
        let alerts = RawAlerts { master_key: Some(key('a')), ..RawAlerts::default() };
        let only_alerts = secrets_settings(&RawSecrets::default(), &alerts).expect("alerts alone");
        assert_eq!((only_alerts.master_key, only_alerts.section), (Some(key('a')), "alerts"));

        let secrets = RawSecrets { master_key: Some(key('b')), ..RawSecrets::default() };
        let only_secrets = secrets_settings(&secrets, &RawAlerts::default()).expect("secrets alone");
        assert_eq!((only_secrets.master_key, only_secrets.section), (Some(key('b')), "secrets"));

        let err = secrets_settings(&secrets, &alerts).expect_err("two keys").to_string();
        assert!(err.contains("secrets.master_key") && err.contains("alerts.master_key"), "{err}");

        let same = RawSecrets { master_key: Some(key('a')), old_master_keys: vec![key('c')], ..RawSecrets::default() };
        let both = RawAlerts { old_master_keys: vec![key('d'), key('c')], ..alerts };
        let merged = secrets_settings(&same, &both).expect("the same key twice");
        assert_eq!(merged.master_key, Some(key('a')));
        assert_eq!(merged.old_master_keys, vec![key('c'), key('d')], "old keys of both, once each");

        let bad = RawSecrets { master_key: Some(Secret::new("short")), ..RawSecrets::default() };
        let err = secrets_settings(&bad, &RawAlerts::default()).expect_err("not a key").to_string();
        assert!(err.contains("secrets.master_key"), "{err}");
    }

    #[test]
    fn base_urls_are_allowed_by_prefix_at_a_path_boundary() {
        let raw = RawByok { allowed_base_urls: vec!["https://eu.example.com/v1/".into()], cache_ttl_ms: None };
        let byok = byok_settings(&raw).expect("valid");
        assert!(byok.allows("https://eu.example.com/v1"));
        assert!(byok.allows("https://eu.example.com/v1/openai"));
        assert!(!byok.allows("https://eu.example.com/v10"));
        assert!(!byok.allows("https://eu.example.com.evil.net/v1"));
        assert!(!byok.allows("http://127.0.0.1/v1"));
        assert!(!ByokSettings::default().allows("https://eu.example.com/v1"), "nothing unless allowed");
        let bad = RawByok { allowed_base_urls: vec!["https://user:pw@x.example/v1".into()], cache_ttl_ms: None };
        let err = byok_settings(&bad).expect_err("credentials").to_string();
        assert!(err.contains("byok.allowed_base_urls"), "{err}");
    }
}
