//! The `store` settings: which backend, and for `distributed` the Redis and
//! PostgreSQL settings, checked into `tollgate_store_distributed::StoreConfig`.

use std::time::Duration;

use tollgate_store_distributed::{DistributedConfig, StoreConfig};

use crate::config::{ConfigError, RawConfig, StoreKind};

fn invalid(setting: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { setting: setting.to_owned(), message: message.into() }
}

/// Checks `store` and the settings it needs; every error names its setting.
pub fn store_from_raw(raw: &RawConfig) -> Result<StoreConfig, ConfigError> {
    // Both ledgers hold at most this many records; back-pressure starts at half.
    if raw.ledger_buffer < 2 {
        return Err(invalid("ledger_buffer", "must be at least 2"));
    }
    match raw.store {
        StoreKind::Embedded => Ok(StoreConfig::Embedded),
        StoreKind::Distributed => {
            let redis_url = raw
                .redis_url
                .clone()
                .filter(|u| !u.expose().trim().is_empty())
                .ok_or_else(|| invalid("redis_url", "is required with store = \"distributed\""))?;
            let schemes: &[&str] = &["redis://", "rediss://", "unix://", "redis+unix://"];
            for node in redis_url.expose().split(',').map(str::trim) {
                if !schemes.iter().any(|s| node.starts_with(s)) {
                    return Err(invalid("redis_url", "must start with redis:// or rediss://"));
                }
            }
            if !raw.redis_cluster && redis_url.expose().contains(',') {
                return Err(invalid("redis_url", "lists several nodes: set redis_cluster = true for a cluster"));
            }
            let database_url = raw
                .database_url
                .clone()
                .filter(|u| !u.expose().trim().is_empty())
                .ok_or_else(|| invalid("database_url", "is required with store = \"distributed\""))?;
            let db = database_url.expose();
            if !(db.starts_with("postgres://") || db.starts_with("postgresql://")) {
                return Err(invalid("database_url", "must start with postgres://"));
            }
            let on_store_error = raw.on_store_error;
            if !(1..=60_000).contains(&raw.redis_timeout_ms) {
                return Err(invalid("redis_timeout_ms", "must be between 1 and 60000"));
            }
            if raw.instances == 0 {
                return Err(invalid("instances", "must be at least 1"));
            }
            if !(1..=1024).contains(&raw.database_pool_size) {
                return Err(invalid("database_pool_size", "must be between 1 and 1024"));
            }
            if raw.counter_rebuild_secs == 0 {
                return Err(invalid("counter_rebuild_secs", "must be at least 1"));
            }
            Ok(StoreConfig::Distributed(Box::new(DistributedConfig {
                redis_url,
                redis_cluster: raw.redis_cluster,
                redis_key_prefix: raw.redis_key_prefix.clone(),
                redis_timeout: Duration::from_millis(raw.redis_timeout_ms),
                database_url,
                database_pool_size: raw.database_pool_size,
                database_timeout: Duration::from_secs(5),
                on_store_error,
                instances: raw.instances,
                ledger_buffer: raw.ledger_buffer,
                key_cache_ttl: Duration::from_secs(raw.key_cache_ttl_secs),
                counter_rebuild_every: Duration::from_secs(raw.counter_rebuild_secs),
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::Secret;
    use tollgate_store_distributed::OnStoreError;

    fn distributed() -> RawConfig {
        RawConfig {
            store: StoreKind::Distributed,
            redis_url: Some(Secret::new("redis://127.0.0.1:6379")),
            database_url: Some(Secret::new("postgres://postgres@127.0.0.1/tollgate")),
            ..RawConfig::default()
        }
    }

    fn setting_of(raw: RawConfig) -> String {
        match store_from_raw(&raw) {
            Err(ConfigError::Invalid { setting, .. }) => setting,
            other => panic!("expected an invalid setting, got {other:?}"),
        }
    }

    #[test]
    fn embedded_is_the_default_and_distributed_needs_both_urls() {
        assert!(matches!(store_from_raw(&RawConfig::default()), Ok(StoreConfig::Embedded)));
        let Ok(StoreConfig::Distributed(d)) = store_from_raw(&distributed()) else {
            panic!("a complete distributed configuration is accepted");
        };
        assert_eq!((d.on_store_error, d.instances), (OnStoreError::Open, 1));
        assert_eq!(d.redis_timeout, Duration::from_millis(200));
        assert_eq!(setting_of(RawConfig { redis_url: None, ..distributed() }), "redis_url");
        assert_eq!(setting_of(RawConfig { database_url: None, ..distributed() }), "database_url");
    }

    #[test]
    fn every_bad_value_names_its_setting() {
        let cases: Vec<(RawConfig, &str)> = vec![
            (RawConfig { instances: 0, ..distributed() }, "instances"),
            (RawConfig { redis_timeout_ms: 0, ..distributed() }, "redis_timeout_ms"),
            (RawConfig { ledger_buffer: 0, ..distributed() }, "ledger_buffer"),
            (RawConfig { database_pool_size: 0, ..distributed() }, "database_pool_size"),
            (RawConfig { counter_rebuild_secs: 0, ..distributed() }, "counter_rebuild_secs"),
            (RawConfig { redis_url: Some(Secret::new("http://redis")), ..distributed() }, "redis_url"),
            (RawConfig { redis_url: Some(Secret::new("redis://a:1,redis://b:2")), ..distributed() }, "redis_url"),
            (RawConfig { database_url: Some(Secret::new("mysql://db")), ..distributed() }, "database_url"),
        ];
        for (raw, setting) in cases {
            assert_eq!(setting_of(raw), setting);
        }
        let cluster =
            RawConfig { redis_cluster: true, redis_url: Some(Secret::new("redis://a:1,redis://b:2")), ..distributed() };
        assert!(store_from_raw(&cluster).is_ok(), "a cluster lists several seed nodes");
    }

    #[test]
    fn choices_are_enums_and_a_bad_one_names_its_setting() {
        use figment::Figment;
        use figment::providers::{Format, Serialized, Toml};
        for (text, setting) in [
            ("store = \"sqlite\"", "store"),
            ("on_store_error = \"maybe\"", "on_store_error"),
            ("log_format = \"xml\"", "log_format"),
            ("durability = \"eventually\"", "durability"),
        ] {
            let loaded = Figment::from(Serialized::defaults(RawConfig::default())).merge(Toml::string(text));
            let error = loaded.extract::<RawConfig>().expect_err("refused").to_string();
            assert!(error.contains(setting), "{text}: {error}");
        }
        let loaded = Figment::from(Serialized::defaults(RawConfig::default()))
            .merge(Toml::string("on_store_error = \"closed\""));
        assert_eq!(loaded.extract::<RawConfig>().expect("valid").on_store_error, OnStoreError::Closed);
    }

    #[test]
    fn secrets_in_urls_never_print() {
        let raw = RawConfig {
            redis_url: Some(Secret::new("redis://:hunter2@127.0.0.1:6379")),
            database_url: Some(Secret::new("postgres://u:hunter2@127.0.0.1/db")),
            ..distributed()
        };
        let config = store_from_raw(&raw).expect("valid");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
