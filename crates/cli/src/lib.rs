//! The command line: `serve`, `mock-upstream`, and admin commands (`keys`, `projects`,
//! `plans`, `tokens`, `usage`) that call a running server's admin API, so they work
//! the same against one embedded instance or a fleet.

use std::path::PathBuf;

use anyhow::{Context, bail};
pub use clap::Parser;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about = "An LLM gateway and quota service: keys, limits, exact usage.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// TOML configuration file.
        #[arg(long, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run an OpenAI-compatible mock upstream (for tests and benchmarks).
    MockUpstream(MockArgs),
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
    /// List ledger records, newest first; or `export`, `summary`, `top`.
    Usage(UsageArgs),
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

/// Which records (the listing's filters).
#[derive(Args, Debug, Clone, Default)]
pub struct UsageList {
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub key: Option<String>,
    /// RFC 3339 or Unix seconds (inclusive).
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339 or Unix seconds (exclusive).
    #[arg(long)]
    pub to: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

/// A scope and a range.
#[derive(Args, Debug, Clone, Default)]
pub struct UsageRange {
    #[arg(long)]
    pub project: Option<String>,
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
        #[arg(long, default_value_t = 10)]
        top: usize,
        #[arg(long)]
        json: bool,
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
    /// Admin token (operator or project-scoped).
    #[arg(long, env = "TOLLGATE_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; its secret is printed once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: String,
        #[arg(long, default_value = "free")]
        plan: String,
        #[arg(long)]
        name: Option<String>,
        /// RFC 3339 or Unix seconds.
        #[arg(long)]
        expires_at: Option<String>,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
        #[arg(long)]
        project: Option<String>,
    },
    Get {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
    },
    /// Change a key's plan, name or expiry.
    Update {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        plan: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        expires_at: Option<String>,
    },
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
    Create {
        #[command(flatten)]
        server: ServerArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
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
    },
}

#[derive(Subcommand, Debug)]
pub enum PlansCommand {
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    Get {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
    },
    /// Create or replace a plan: `--limit requests/minute=10 --limit requests/month=50000`.
    Set {
        #[command(flatten)]
        server: ServerArgs,
        name: String,
        #[arg(long = "limit", required = true)]
        limits: Vec<String>,
        #[arg(long)]
        description: Option<String>,
    },
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

/// Parses `metric/window=limit`, e.g. `requests/minute=10`.
fn parse_limit(text: &str) -> anyhow::Result<Value> {
    let (slot, limit) = text.split_once('=').context("a limit reads metric/window=number")?;
    let (metric, window) = slot.split_once('/').context("a limit reads metric/window=number")?;
    let limit: u64 = limit.trim().parse().with_context(|| format!("'{limit}' is not a whole number"))?;
    Ok(json!({ "metric": metric.trim(), "window": window.trim(), "limit": limit }))
}

mod usage;

struct Client {
    http: reqwest::Client,
    server: ServerArgs,
}

impl Client {
    fn new(server: ServerArgs) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Self { http, server })
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.server.url.trim_end_matches('/'), path);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.server.admin_token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("calling {url}: is tollgate running?"))?;
        let status = response.status();
        let text = response.text().await.context("reading the response")?;
        let value: Value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        if !status.is_success() {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}

fn print(value: &Value) -> anyhow::Result<()> {
    if !value.is_null() {
        println!("{}", serde_json::to_string_pretty(value)?);
    }
    Ok(())
}

pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", urlencode(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs an admin command against a server.
pub async fn run_admin(command: Command) -> anyhow::Result<()> {
    use reqwest::Method;
    let (server, method, path, body) = match command {
        Command::Serve { .. } | Command::MockUpstream(_) => bail!("not an admin command"),
        Command::Keys(k) => match k {
            KeysCommand::Create { server, project, plan, name, expires_at } => {
                let body = json!({ "project": project, "plan": plan, "name": name, "expires_at": expires_at });
                (server, Method::POST, "/api/v1/keys".to_owned(), Some(body))
            }
            KeysCommand::List { server, project } => {
                (server, Method::GET, format!("/api/v1/keys{}", query(&[("project", project)])), None)
            }
            KeysCommand::Get { server, id } => (server, Method::GET, format!("/api/v1/keys/{}", urlencode(&id)), None),
            KeysCommand::Update { server, id, plan, name, expires_at } => {
                let mut body = serde_json::Map::new();
                if let Some(p) = plan {
                    body.insert("plan".into(), p.into());
                }
                if let Some(n) = name {
                    body.insert("name".into(), n.into());
                }
                if let Some(e) = expires_at {
                    body.insert("expires_at".into(), e.into());
                }
                (server, Method::PATCH, format!("/api/v1/keys/{}", urlencode(&id)), Some(Value::Object(body)))
            }
            KeysCommand::Revoke { server, id } => {
                (server, Method::POST, format!("/api/v1/keys/{}/revoke", urlencode(&id)), None)
            }
            KeysCommand::Regenerate { server, id, grace_period_secs } => (
                server,
                Method::POST,
                format!("/api/v1/keys/{}/regenerate", urlencode(&id)),
                Some(json!({ "grace_period_secs": grace_period_secs })),
            ),
        },
        Command::Projects(p) => match p {
            ProjectsCommand::Create { server, id, name } => {
                (server, Method::POST, "/api/v1/projects".to_owned(), Some(json!({ "id": id, "name": name })))
            }
            ProjectsCommand::List { server } => (server, Method::GET, "/api/v1/projects".to_owned(), None),
            ProjectsCommand::Get { server, id } => {
                (server, Method::GET, format!("/api/v1/projects/{}", urlencode(&id)), None)
            }
            ProjectsCommand::Update {
                server,
                id,
                name,
                allowed_plans,
                max_overrides,
                limits,
                openai_organization,
                openai_project,
            } => {
                let mut body = serde_json::Map::new();
                if let Some(n) = name {
                    body.insert("name".into(), n.into());
                }
                if let Some(p) = allowed_plans {
                    body.insert("allowed_plans".into(), json!(p));
                }
                if !max_overrides.is_empty() {
                    let parsed = max_overrides.iter().map(|l| parse_limit(l)).collect::<anyhow::Result<Vec<_>>>()?;
                    body.insert("max_overrides".into(), Value::Array(parsed));
                }
                if !limits.is_empty() {
                    let parsed = limits.iter().map(|l| parse_limit(l)).collect::<anyhow::Result<Vec<_>>>()?;
                    body.insert("limits".into(), Value::Array(parsed));
                }
                for (field, value) in [("openai_organization", openai_organization), ("openai_project", openai_project)]
                {
                    if let Some(v) = value {
                        body.insert(field.into(), if v.is_empty() { Value::Null } else { v.into() });
                    }
                }
                (server, Method::PATCH, format!("/api/v1/projects/{}", urlencode(&id)), Some(Value::Object(body)))
            }
        },
        Command::Plans(p) => match p {
            PlansCommand::List { server } => (server, Method::GET, "/api/v1/plans".to_owned(), None),
            PlansCommand::Get { server, name } => {
                (server, Method::GET, format!("/api/v1/plans/{}", urlencode(&name)), None)
            }
            PlansCommand::Set { server, name, limits, description } => {
                let limits = limits.iter().map(|l| parse_limit(l)).collect::<anyhow::Result<Vec<_>>>()?;
                let body = json!({ "description": description, "limits": limits });
                (server, Method::PUT, format!("/api/v1/plans/{}", urlencode(&name)), Some(body))
            }
            PlansCommand::Delete { server, name } => {
                (server, Method::DELETE, format!("/api/v1/plans/{}", urlencode(&name)), None)
            }
        },
        Command::Tokens(t) => match t {
            TokensCommand::Create { server, project, operator: _, name, expires_at } => {
                let body = json!({ "name": name, "expires_at": expires_at });
                match project {
                    Some(p) => (server, Method::POST, format!("/api/v1/projects/{}/tokens", urlencode(&p)), Some(body)),
                    None => (server, Method::POST, "/api/v1/admin-tokens".to_owned(), Some(body)),
                }
            }
            TokensCommand::List { server, project } => {
                (server, Method::GET, format!("/api/v1/admin-tokens{}", query(&[("project", project)])), None)
            }
            TokensCommand::Get { server, id } => {
                (server, Method::GET, format!("/api/v1/admin-tokens/{}", urlencode(&id)), None)
            }
            TokensCommand::Revoke { server, id } => {
                (server, Method::POST, format!("/api/v1/admin-tokens/{}/revoke", urlencode(&id)), None)
            }
        },
        Command::Usage(UsageArgs { server, command: Some(command), .. }) => {
            return crate::usage::run(server, command).await;
        }
        Command::Usage(UsageArgs { server, command: None, list }) => {
            let UsageList { project, key, from, to, limit } = list;
            let q = query(&[
                ("project", project),
                ("key", key),
                ("from", from),
                ("to", to),
                ("limit", Some(limit.to_string())),
            ]);
            (server, Method::GET, format!("/api/v1/usage{q}"), None)
        }
    };
    if server.admin_token.is_none() {
        bail!("no admin token: pass --admin-token or set TOLLGATE_ADMIN_TOKEN");
    }
    let client = Client::new(server)?;
    print(&client.call(method, &path, body).await?)
}
