//! The command line's arguments and subcommands (clap), and the settings listed by
//! `serve --help`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about = "An LLM gateway and quota service: keys, limits, exact usage.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    #[command(after_long_help = SERVE_SETTINGS)]
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run an OpenAI-compatible mock upstream (for tests and benchmarks).
    MockUpstream(MockArgs),
    /// Check a configuration without starting the server.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage projects (tenants).
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Manage plans.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Admin tokens: create (project-scoped or operator), list, get, revoke.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// List ledger records, newest first (paged: --after, --limit, --all); or
    /// `export`, `summary`, `top`.
    Usage(UsageArgs),
    /// The server's detailed health (operator token): the store, and with many
    /// instances, each running instance and who holds each background job's lease.
    Instances {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Alerts: rules, channels (webhook, Slack, e-mail), events and deliveries.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// Bring your own key: a project's own provider keys (sealed, shown as hints).
    #[command(subcommand)]
    ProviderKeys(ProviderKeysCommand),
    /// Sealed secrets: re-seal every one under the current master key.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// Usage against every limit of a key (`--key`) or a project (`--project`):
    /// used, remaining, percent, reset, state.
    Status {
        #[command(flatten)]
        server: ServerArgs,
        /// Key id.
        #[arg(long, required_unless_present = "project", conflicts_with = "project")]
        key: Option<String>,
        /// Project id.
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: Option<UsageCommand>,
    #[command(flatten)]
    pub list: UsageList,
}

/// Which records (the listing's filters) and which page.
#[derive(Args, Debug, Clone)]
pub struct UsageList {
    /// Only this project's records.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this key's records (key id).
    #[arg(long)]
    pub key: Option<String>,
    /// RFC 3339 or Unix seconds (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 or Unix seconds (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// A scope and a range.
#[derive(Args, Debug, Clone, Default)]
pub struct UsageRange {
    /// Only this project.
    #[arg(long)]
    pub project: Option<String>,
    /// Only this key (key id).
    #[arg(long)]
    pub key: Option<String>,
    /// RFC 3339 or Unix seconds (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 or Unix seconds (exclusive).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum UsageCommand {
    /// Stream ledger rows (or, with --rollups, hourly rollups) into a file, as CSV or
    /// NDJSON; a progress line on a terminal, nothing on a pipe.
    Export {
        #[command(flatten)]
        range: UsageRange,
        /// csv or ndjson.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Hourly rollups instead of raw ledger rows.
        #[arg(long)]
        rollups: bool,
        /// The file to write (written whole or not at all: FILE.partial until done).
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Totals of a range (requests, tokens, cost, saved, error rate, latency).
    Summary {
        #[command(flatten)]
        range: UsageRange,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The top values of one dimension over a range.
    Top {
        #[command(flatten)]
        range: UsageRange,
        /// model, key, provider or endpoint.
        #[arg(long, default_value = "model")]
        by: String,
        /// How many values.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Print the JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Paging of a list: one page (`--after`, `--limit`) or every page (`--all`).
#[derive(Args, Debug, Clone)]
pub struct PageArgs {
    /// Start after this item (the `next` value a previous page printed).
    #[arg(long, conflicts_with = "all")]
    pub after: Option<String>,
    /// Items per page (1-1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Follow every page and print them as one list.
    #[arg(long)]
    pub all: bool,
}

/// Every setting `serve` reads, for `tollgate serve --help` (docs/configuration.md
/// says what each does). A test checks this list against the server's own.
pub const SERVE_SETTINGS: &str = "\
Settings (TOML file, or TOLLGATE_<NAME>, nested with __: TOLLGATE_UPSTREAM__BASE_URL):
  listen                 address:port or localhost:PORT [127.0.0.1:8080]
  data_dir               embedded store directory [./data]
  store                  embedded | distributed [embedded]
  admin_token            operator token (16+ characters) [generated at first start]
  log_format             text | json [text]
  access_log             one access-log line per request [true]
  max_body_bytes         largest request body [4194304]
  shutdown_grace_secs    drain time on SIGTERM [30]
  durability             sync | fsync | async [sync]
  commit_timeout_ms      wait for a ledger commit or queue room [5000]
  upstream.*             base_url, api_key, provider, connect_timeout_ms, timeout_secs,
                         total_timeout_secs, pool_max_idle_per_host, forward_headers,
                         drain_after_hangup_ms, drain_after_hangup_bytes
  anthropic.*            base_url, api_key, version, provider: the upstream of /v1/messages
                         (docs/providers.md)
  providers.<name>       kind (openai | azure | gemini | anthropic), base_url, api_key,
                         api_version, deployments, anthropic_version (docs/providers.md)
  routing.*              routes, breaker, attempt_timeout_ms, probe_every_secs,
                         sticky_secret: aliases, splits, fallbacks (docs/routing.md)
  limits.*               forwarded_for_hops, invalid_keys_per_minute, anonymous_plan,
                         default_max_output_tokens, max_reserved_output_tokens
  plans.<name>           plans created on first start
  prices.<model>         price overrides (micro-dollars per million tokens)
  unknown_model_policy   refuse | default_price [refuse]
  default_price          price of models the table does not know
  cors_allowed_origins   browser origins allowed to call tollgate [none]
  secrets.*              master_key, master_key_file, old_master_keys: the key every sealed
                         secret is sealed with (docs/providers.md)
  byok.*                 allowed_base_urls, cache_ttl_ms: projects' own provider keys
  alerts.*               master_key, master_key_file, old_master_keys, allow_private_targets,
                         retry_schedule_ms, poll_ms, lease_secs, send_timeout_ms,
                         rules_refresh_ms (docs/alerts.md)
  analytics.*            max_range_days, retention_days, rollup_retention_days,
                         retention_batch, retention_every_secs (docs/analytics.md)
  otlp.*                 enabled [false], endpoint [http://127.0.0.1:4318], service_name,
                         timeout_ms: OTLP/HTTP span export (docs/observability.md)
  dashboard.*            enabled [true], session_ttl_secs [28800] (docs/dashboard.md)
  events.*               nats_url [off], subject [tollgate.usage], stream, create_stream,
                         batch, poll_interval_ms: the usage events sink (docs/events.md)
  redis_url, redis_cluster, redis_key_prefix, redis_timeout_ms, database_url,
  database_pool_size, on_store_error, instances, ledger_buffer, key_cache_ttl_secs,
  counter_rebuild_secs   the distributed store (store = \"distributed\")
Also read: OPENAI_API_KEY, OPENAI_BASE_URL, RUST_LOG. Check a configuration with
`tollgate config check`. Details: docs/configuration.md.";

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Load and validate the configuration (defaults, `OPENAI_*`, the file,
    /// `TOLLGATE_*`) exactly as `serve` would, then print the effective settings as
    /// TOML with every secret redacted. Exits non-zero naming the bad setting.
    Check {
        /// TOML configuration file.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 9000)]
    pub port: u16,
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    #[arg(long, default_value_t = 10)]
    pub prompt_tokens: u64,
    #[arg(long, default_value_t = 20)]
    pub completion_tokens: u64,
    /// Refuse requests whose bearer token differs (checks the gateway's provider key).
    #[arg(long)]
    pub expected_api_key: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the running tollgate.
    #[arg(long, env = "TOLLGATE_URL", default_value = "http://127.0.0.1:8080", global = true)]
    pub url: String,
    /// Admin token (operator or project-scoped). Prefer the environment variable or
    /// `--admin-token-file`: a command line is visible to other users in `ps`.
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (e.g. `<data_dir>/operator-token`).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN_FILE", global = true, conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
    /// Print JSON even on a terminal (it is the default when stdout is not one).
    #[arg(long, global = true)]
    pub json: bool,
}

impl ServerArgs {
    /// The admin token from the flag, the environment or the file.
    pub(crate) fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.admin_token {
            return Ok(token.clone());
        }
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token from {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                bail!("{} is empty", path.display());
            }
            return Ok(token.to_owned());
        }
        bail!("no admin token: set TOLLGATE_ADMIN_TOKEN or TOLLGATE_ADMIN_TOKEN_FILE (or pass --admin-token-file)")
    }
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The project the key belongs to.
        #[arg(long)]
        project: String,
        /// The key's plan.
        #[arg(long, default_value = "free")]
        plan: String,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 or Unix seconds.
        #[arg(long)]
        expires_at: Option<String>,
        /// A per-key limit overriding the plan's in its slot (repeatable):
        /// `requests/minute=5`, scoped `total_tokens/day=1000;model=gpt-4o`, or for
        /// another subject `requests/minute=30;subject=ip`.
        #[arg(long = "limit")]
        limits: Vec<String>,
    },
    /// List keys (ids, plans, states; never secrets), a page at a time.
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only this project's keys.
        #[arg(long)]
        project: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one key.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Change a key's plan, name, expiry or limit overrides.
    Update {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// Move the key to this plan.
        #[arg(long)]
        plan: Option<String>,
        /// A label for people.
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 or Unix seconds.
        #[arg(long)]
        expires_at: Option<String>,
        /// Set one limit override, keeping the key's other overrides (repeatable;
        /// syntax as `keys create --limit`).
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// Drop every limit override (the plan's limits apply again).
        #[arg(long, conflicts_with = "limits")]
        clear_limits: bool,
    },
    /// Revoke a key: refused at once, everywhere.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// New secret, same key id; the old secret works for the grace period.
    Regenerate {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long, default_value_t = 0)]
        grace_period_secs: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectsCommand {
    /// Create a project (a tenant).
    Create {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List projects (all of them: projects are few).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one project and its settings.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Change a project's name or operator-only settings (operator token).
    Update {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Plans the project's own admin tokens may assign (comma-separated).
        #[arg(long, value_delimiter = ',')]
        allowed_plans: Option<Vec<String>>,
        /// How far the project's tokens may raise a key's limit: `requests/minute=30`.
        #[arg(long = "max-override")]
        max_overrides: Vec<String>,
        /// A project-wide limit on every key of it: `requests/month=100000`.
        #[arg(long = "limit")]
        limits: Vec<String>,
        /// `OpenAI-Organization` sent upstream for this project (empty: none).
        #[arg(long)]
        openai_organization: Option<String>,
        /// `OpenAI-Project` sent upstream for this project (empty: none).
        #[arg(long)]
        openai_project: Option<String>,
        /// IANA time zone of the project's day and month windows, e.g. `Asia/Kolkata`
        /// (empty: UTC).
        #[arg(long)]
        time_zone: Option<String>,
        /// Without a provider key of the project's own: `operator` (use the
        /// operator's) or `never` (refuse the request).
        #[arg(long)]
        byok_fallback: Option<String>,
    },
}

/// `tollgate provider-keys …` (docs/providers.md, "Bring your own key").
#[derive(Subcommand, Debug)]
pub enum ProviderKeysCommand {
    /// Store the project's key for a provider, read from stdin (never from the
    /// command line, which other users see in `ps`): `tollgate provider-keys set
    /// --project P --provider openai < key.txt`.
    Set {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: String,
        /// A configured provider name (`upstream.provider`, `anthropic.provider`).
        #[arg(long)]
        provider: String,
        /// Send the project's calls to this base URL (one the operator allows in
        /// `byok.allowed_base_urls`).
        #[arg(long)]
        base_url: Option<String>,
    },
    /// List the project's provider keys (hints only).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: String,
    },
    /// Delete the project's key for a provider.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: String,
        #[arg(long)]
        provider: String,
    },
}

/// `tollgate secrets …`.
#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Re-seal every sealed secret (provider keys, alert channel secrets) not sealed
    /// under the current master key, and print the counts (operator token).
    Rotate {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlansCommand {
    /// List plans and their limits.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Show one plan.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
    },
    /// Change some limits of a plan and keep the others (`PATCH`):
    /// `--limit requests/minute=20` replaces that limit only. With `--replace` the plan
    /// becomes exactly what is given (`PUT`, created if absent).
    Set {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
        /// A limit to set (repeatable): `requests/minute=10`, scoped
        /// `total_tokens/day=1000;model=gpt-4o`, or `requests/minute=30;subject=ip`.
        #[arg(long = "limit", required_unless_present_any = ["remove", "description", "time_zone"])]
        limits: Vec<String>,
        /// Drop a limit by name, e.g. `requests_per_minute` (repeatable).
        #[arg(long, conflicts_with = "replace")]
        remove: Vec<String>,
        /// A description for people.
        #[arg(long)]
        description: Option<String>,
        /// Replace the whole plan with the given limits (dropping every other one).
        #[arg(long)]
        replace: bool,
        /// IANA time zone of the plan's day and month windows, e.g. `Europe/Paris`
        /// (empty: the project's zone, else UTC).
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Delete a plan no key uses.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create an admin token for one project (`--project`) or the operator
    /// (`--operator`); the token is printed once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long, required_unless_present = "operator", conflicts_with = "operator")]
        project: Option<String>,
        /// An operator token (every project, every action).
        #[arg(long)]
        operator: bool,
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 or Unix seconds.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List admin tokens (ids and prefixes, never the tokens).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one admin token (id, prefix, scope, expiry).
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Revoke an admin token by id: it stops working at once.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

/// `tollgate alerts …`: rules, channels, deliveries (docs/alerts.md).
#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Alert rules: which limits, which thresholds, which channels.
    #[command(subcommand)]
    Rules(AlertRulesCommand),
    /// Channels: webhook (Standard Webhooks), Slack, e-mail.
    #[command(subcommand)]
    Channels(AlertChannelsCommand),
    /// Events, newest first, each with its deliveries.
    Events {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
        /// pending, delivered or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<String>,
    },
    /// Deliveries (one event to one channel): list, show with attempts, redeliver.
    #[command(subcommand)]
    Deliveries(AlertDeliveriesCommand),
}

/// The rule kind and its fields (docs/alerts.md).
#[derive(clap::Args, Debug)]
pub struct RuleKindArgs {
    /// limit_threshold (default), forecast or anomaly.
    #[arg(long)]
    pub kind: Option<String>,
    /// Forecast and anomaly rules: only this key of the project.
    #[arg(long)]
    pub key: Option<String>,
    /// Anomaly rules: the score an hour must reach (default 4).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Anomaly rules: the least volume worth an alert.
    #[arg(long)]
    pub min_volume: Option<u64>,
    /// Threshold rules: also send "resolved" when a crossed window ends.
    #[arg(long)]
    pub notify_resolved: bool,
}

#[derive(Subcommand, Debug)]
pub enum AlertRulesCommand {
    /// Create a rule over limits (absent filters match any limit).
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// The project (a project token's own by default; absent with the operator
        /// token: an operator default for every project without rules of its own).
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        kind: Box<RuleKindArgs>,
        /// requests, input_tokens, output_tokens, total_tokens or cost_micros.
        #[arg(long)]
        metric: Option<String>,
        /// minute, hour, day or month.
        #[arg(long)]
        window: Option<String>,
        /// key, project, ip or anonymous.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        endpoint: Option<String>,
        /// Percentages, comma-separated (default 80,90,100).
        #[arg(long, value_delimiter = ',')]
        thresholds: Vec<u32>,
        /// Channel ids, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        channels: Vec<String>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List rules (a project's, or every one for the operator).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one rule.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Change a rule's thresholds, channels, name or state.
    Update {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_delimiter = ',')]
        thresholds: Option<Vec<u32>>,
        #[arg(long, value_delimiter = ',')]
        channels: Option<Vec<String>>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete a rule.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AlertChannelsCommand {
    /// Create a channel. A webhook's signing secret (`whsec_…`) is printed once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// webhook, slack or email.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        project: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Webhook: where to POST. Slack: the incoming webhook URL (kept sealed).
        #[arg(long = "target")]
        target: Option<String>,
        #[arg(long)]
        smtp_host: Option<String>,
        #[arg(long)]
        smtp_port: Option<u16>,
        /// starttls (default), implicit or none.
        #[arg(long)]
        smtp_tls: Option<String>,
        #[arg(long)]
        smtp_username: Option<String>,
        /// Read from this environment variable (never a command-line argument).
        #[arg(long)]
        smtp_password_env: Option<String>,
        #[arg(long)]
        from: Option<String>,
        /// Recipients, comma-separated.
        #[arg(long, value_delimiter = ',')]
        to: Vec<String>,
    },
    /// List channels (never their secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
    },
    /// Show one channel (its secret's hint only).
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Enable or disable a channel, or rename it.
    Update {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Delete a channel no rule sends to.
    Delete {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Send a test event through the outbox; prints the delivery and its attempts.
    Test {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AlertDeliveriesCommand {
    /// List deliveries, newest first (--status dead: the dead letters).
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
        /// pending, delivered or dead (dead letters).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        limit: Option<String>,
    },
    /// One delivery with its event and every attempt.
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Send again (a dead letter gets a fresh schedule of attempts).
    Redeliver {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
}
