//! Which `TOLLGATE_*` environment variables are settings, and which are known to be
//! something else (the CLI's, the tests', Kubernetes').

/// Top-level keys a `TOLLGATE_*` variable may set (others, like `TOLLGATE_CONFIG`
/// or the CLI's `TOLLGATE_URL`, are not configuration of the server).
pub const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store",
    "admin_token",
    "log_format",
    "max_body_bytes",
    "shutdown_grace_secs",
    "upstream",
    "anthropic",
    "providers",
    "routing",
    "plans",
    "limits",
    "prices",
    "unknown_model_policy",
    "default_price",
    "redis_url",
    "redis_cluster",
    "redis_key_prefix",
    "redis_timeout_ms",
    "database_url",
    "database_pool_size",
    "on_store_error",
    "instances",
    "ledger_buffer",
    "key_cache_ttl_secs",
    "counter_rebuild_secs",
    "durability",
    "commit_timeout_ms",
    "cors_allowed_origins",
    "access_log",
    "analytics",
    "otlp",
    "alerts",
    "secrets",
    "byok",
    "cache",
    "dashboard",
    "events",
];

/// `TOLLGATE_*` variables that are not server configuration: read by the CLI, the
/// tests and the benchmarks. Any other unknown `TOLLGATE_*` variable is an error
/// (a typo such as `TOLLGATE_LISTN` must not be silently ignored).
const ENV_NOT_CONFIG: &[&str] = &["config", "url", "admin_token_file", "bin", "key", "base_url", "streaming"];
/// Also ignored: the variables Kubernetes sets for a Service named `tollgate`
/// (`TOLLGATE_SERVICE_HOST`, `TOLLGATE_SERVICE_PORT`, `TOLLGATE_PORT`,
/// `TOLLGATE_PORT_8080_TCP_ADDR`, ...), which would otherwise stop every pod.
const ENV_NOT_CONFIG_PREFIXES: &[&str] = &["test_", "bench_", "service_", "port"];

/// The first `TOLLGATE_*` variable of `vars` whose top-level key is no setting.
pub(super) fn unknown_env_var(vars: impl Iterator<Item = String>) -> Option<String> {
    vars.filter_map(|name| {
        let rest = name.strip_prefix("TOLLGATE_")?.to_ascii_lowercase();
        let top = rest.split("__").next().unwrap_or(&rest).to_owned();
        let known = ENV_KEYS.contains(&top.as_str())
            || ENV_NOT_CONFIG.contains(&top.as_str())
            || ENV_NOT_CONFIG_PREFIXES.iter().any(|p| top.starts_with(p));
        (!known).then_some(name)
    })
    .min()
}
