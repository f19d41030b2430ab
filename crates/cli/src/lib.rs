//! The command line: `serve`, `mock-upstream`, `config check`, and admin commands
//! (`keys`, `projects`, `plans`, `tokens`, `usage`, `status`, `provider-keys`,
//! `secrets`) that call a running server's admin API, so they work the same against one
//! embedded instance or a fleet.
//!
//! Admin commands print tables when stdout is a terminal, JSON otherwise or with
//! `--json` (`output`). Lists that page (`keys list`, `usage`) take `--after`,
//! `--limit` and `--all`. The admin token comes from `TOLLGATE_ADMIN_TOKEN`,
//! `--admin-token-file` / `TOLLGATE_ADMIN_TOKEN_FILE`, or `--admin-token` (which
//! other users can read in `ps`: prefer the others).

mod alerts;
mod args;
mod output;

use anyhow::{Context, bail};
pub use args::*;
pub use clap::Parser;

use serde_json::{Value, json};

/// Parses `metric/window=limit[;subject=…][;provider=…][;model=…][;endpoint=…]`,
/// e.g. `requests/minute=10` or `total_tokens/day=1000;model=gpt-4o;subject=project`.
pub fn parse_limit(text: &str) -> anyhow::Result<Value> {
    const SYNTAX: &str = "a limit reads metric/window=number[;subject=…][;provider=…][;model=…][;endpoint=…]";
    let mut parts = text.split(';');
    let head = parts.next().unwrap_or_default();
    let (slot, limit) = head.split_once('=').context(SYNTAX)?;
    let (metric, window) = slot.split_once('/').context(SYNTAX)?;
    let limit: u64 = limit.trim().parse().with_context(|| format!("'{limit}' is not a whole number"))?;
    let mut spec = json!({ "metric": metric.trim(), "window": window.trim(), "limit": limit });
    for part in parts {
        let (field, value) = part.split_once('=').context(SYNTAX)?;
        let field = field.trim();
        if !["subject", "provider", "model", "endpoint"].contains(&field) {
            bail!("unknown limit field '{field}': {SYNTAX}");
        }
        spec[field] = Value::from(value.trim());
    }
    Ok(spec)
}

fn parse_limits(texts: &[String]) -> anyhow::Result<Vec<Value>> {
    texts.iter().map(|l| parse_limit(l)).collect()
}

mod usage;

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) token: String,
}

impl Client {
    pub(crate) fn new(server: &ServerArgs) -> anyhow::Result<Self> {
        let token = server.token()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().build().context("building the HTTP client")?;
        Ok(Self { http, base: server.url.trim_end_matches('/').to_owned(), token })
    }

    pub(crate) async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url).bearer_auth(&self.token);
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

    /// The status of `GET path` (to tell a missing resource from an error).
    async fn status(&self, path: &str) -> anyhow::Result<reqwest::StatusCode> {
        let url = format!("{}{}", self.base, path);
        let response = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {url}: is tollgate running?"))?;
        Ok(response.status())
    }

    /// A list, one page or (`--all`) every page: `cursor` is the query parameter
    /// that continues it, `next` the answer's field naming where.
    async fn list(
        &self,
        path: &str,
        pairs: Vec<(&str, Option<String>)>,
        page: &PageArgs,
        paging: Paging,
    ) -> anyhow::Result<Value> {
        if page.limit == 0 || page.limit > 1000 {
            bail!("--limit must be between 1 and 1000");
        }
        let mut after = page.after.clone();
        let mut rows = Vec::new();
        loop {
            let mut q = pairs.clone();
            q.push(("limit", Some(page.limit.to_string())));
            q.push((paging.cursor, after.clone()));
            let mut answer = self.call(reqwest::Method::GET, &format!("{path}{}", query(&q)), None).await?;
            let next = answer.get(paging.next).and_then(Value::as_str).map(str::to_owned);
            if !page.all {
                return Ok(answer);
            }
            if let Some(Value::Array(data)) = answer.get_mut("data").map(Value::take) {
                rows.extend(data);
            }
            match next {
                Some(n) if after.as_deref() != Some(n.as_str()) => after = Some(n),
                _ => return Ok(json!({ "data": rows, paging.next: Value::Null })),
            }
        }
    }
}

/// How a list continues: the query parameter and the answer's field.
#[derive(Clone, Copy)]
struct Paging {
    cursor: &'static str,
    next: &'static str,
}

const KEY_PAGES: Paging = Paging { cursor: "after", next: "next_after" };
const USAGE_PAGES: Paging = Paging { cursor: "cursor", next: "next_cursor" };

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

/// The slot of a limit as JSON (what an override replaces): metric, window, subject
/// and scope.
fn slot(limit: &Value) -> [Value; 6] {
    let field = |f: &str| limit.get(f).cloned().unwrap_or(Value::Null);
    let subject = match field("subject") {
        Value::Null => Value::from("key"),
        other => other,
    };
    [field("metric"), field("window"), subject, field("provider"), field("model"), field("endpoint")]
}

/// `existing` with each of `changes` replacing the limit in its slot, or added.
fn merge_limits(existing: &[Value], changes: Vec<Value>) -> Vec<Value> {
    let mut merged: Vec<Value> = existing
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if let Some(o) = l.as_object_mut() {
                o.remove("name");
            }
            l
        })
        .collect();
    for change in changes {
        match merged.iter_mut().find(|l| slot(l) == slot(&change)) {
            Some(l) => *l = change,
            None => merged.push(change),
        }
    }
    merged
}

/// Runs an admin command against a server.
pub async fn run_admin(command: Command) -> anyhow::Result<()> {
    use reqwest::Method;
    let command = match command {
        Command::Usage(UsageArgs { server, command: Some(command), .. }) => {
            return crate::usage::run(server, command).await;
        }
        other => other,
    };
    let (server, call) = admin_call(command)?;
    let client = Client::new(&server)?;
    let result = match call {
        Call::Plain(method, path, body) => client.call(method, &path, body).await?,
        Call::List { path, pairs, page, paging } => client.list(&path, pairs, &page, paging).await?,
        Call::KeyUpdate { id, mut body, limits } => {
            let path = format!("/api/v1/keys/{}", urlencode(&id));
            if !limits.is_empty() {
                let key = client.call(Method::GET, &path, None).await?;
                let existing = key.get("limits").and_then(Value::as_array).cloned().unwrap_or_default();
                body.insert("limits".into(), Value::Array(merge_limits(&existing, limits)));
            }
            client.call(Method::PATCH, &path, Some(Value::Object(body))).await?
        }
        Call::PlanSet { path, patch, create } => match client.status(&path).await? {
            reqwest::StatusCode::NOT_FOUND => {
                if patch.get("remove").and_then(Value::as_array).is_some_and(|r| !r.is_empty()) {
                    bail!("there is no such plan to remove limits from");
                }
                client.call(Method::PUT, &path, Some(create)).await?
            }
            _ => client.call(Method::PATCH, &path, Some(patch)).await?,
        },
    };
    output::print(&result, output::Format::choose(server.json))
}

enum Call {
    Plain(reqwest::Method, String, Option<Value>),
    List {
        path: String,
        pairs: Vec<(&'static str, Option<String>)>,
        page: PageArgs,
        paging: Paging,
    },
    KeyUpdate {
        id: String,
        body: serde_json::Map<String, Value>,
        limits: Vec<Value>,
    },
    /// `plans set`: PATCH an existing plan, or create it (PUT) when there is none.
    PlanSet {
        path: String,
        patch: Value,
        create: Value,
    },
}

fn admin_call(command: Command) -> anyhow::Result<(ServerArgs, Call)> {
    use reqwest::Method;
    let plain = |server, method, path: String, body| Ok((server, Call::Plain(method, path, body)));
    match command {
        Command::Serve { .. } | Command::MockUpstream(_) | Command::Config(_) => bail!("not an admin command"),
        Command::Keys(k) => match k {
            KeysCommand::Create { server, project, plan, name, expires_at, limits } => {
                let mut body = json!({ "project": project, "plan": plan, "name": name, "expires_at": expires_at });
                if !limits.is_empty() {
                    body["limits"] = Value::Array(parse_limits(&limits)?);
                }
                plain(server, Method::POST, "/api/v1/keys".to_owned(), Some(body))
            }
            KeysCommand::List { server, project, page } => Ok((
                server,
                Call::List { path: "/api/v1/keys".into(), pairs: vec![("project", project)], page, paging: KEY_PAGES },
            )),
            KeysCommand::Get { server, id } => {
                plain(server, Method::GET, format!("/api/v1/keys/{}", urlencode(&id)), None)
            }
            KeysCommand::Update { server, id, plan, name, expires_at, limits, clear_limits } => {
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
                if clear_limits {
                    body.insert("limits".into(), json!([]));
                }
                Ok((server, Call::KeyUpdate { id, body, limits: parse_limits(&limits)? }))
            }
            KeysCommand::Revoke { server, id } => {
                plain(server, Method::POST, format!("/api/v1/keys/{}/revoke", urlencode(&id)), None)
            }
            KeysCommand::Regenerate { server, id, grace_period_secs } => plain(
                server,
                Method::POST,
                format!("/api/v1/keys/{}/regenerate", urlencode(&id)),
                Some(json!({ "grace_period_secs": grace_period_secs })),
            ),
        },
        Command::Projects(p) => match p {
            ProjectsCommand::Create { server, id, name } => {
                plain(server, Method::POST, "/api/v1/projects".to_owned(), Some(json!({ "id": id, "name": name })))
            }
            ProjectsCommand::List { server } => plain(server, Method::GET, "/api/v1/projects".to_owned(), None),
            ProjectsCommand::Get { server, id } => {
                plain(server, Method::GET, format!("/api/v1/projects/{}", urlencode(&id)), None)
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
                time_zone,
                byok_fallback,
            } => {
                let mut body = serde_json::Map::new();
                if let Some(n) = name {
                    body.insert("name".into(), n.into());
                }
                if let Some(p) = allowed_plans {
                    body.insert("allowed_plans".into(), json!(p));
                }
                if !max_overrides.is_empty() {
                    body.insert("max_overrides".into(), Value::Array(parse_limits(&max_overrides)?));
                }
                if !limits.is_empty() {
                    body.insert("limits".into(), Value::Array(parse_limits(&limits)?));
                }
                for (field, value) in [
                    ("openai_organization", openai_organization),
                    ("openai_project", openai_project),
                    ("time_zone", time_zone),
                ] {
                    if let Some(v) = value {
                        body.insert(field.into(), if v.is_empty() { Value::Null } else { v.into() });
                    }
                }
                if let Some(fallback) = byok_fallback {
                    body.insert("byok_fallback".into(), fallback.into());
                }
                plain(server, Method::PATCH, format!("/api/v1/projects/{}", urlencode(&id)), Some(Value::Object(body)))
            }
        },
        Command::Plans(p) => match p {
            PlansCommand::List { server } => plain(server, Method::GET, "/api/v1/plans".to_owned(), None),
            PlansCommand::Get { server, name } => {
                plain(server, Method::GET, format!("/api/v1/plans/{}", urlencode(&name)), None)
            }
            PlansCommand::Set { server, name, limits, remove, description, replace, time_zone } => {
                let limits = parse_limits(&limits)?;
                let path = format!("/api/v1/plans/{}", urlencode(&name));
                let zone = time_zone.map(|z| if z.is_empty() { Value::Null } else { Value::from(z) });
                if replace {
                    let body = json!({ "description": description, "limits": limits, "time_zone": zone });
                    return plain(server, Method::PUT, path, Some(body));
                }
                let create = json!({ "description": description, "limits": limits, "time_zone": zone });
                let mut patch = json!({ "limits": limits, "remove": remove });
                if let Some(d) = description {
                    patch["description"] = Value::from(d);
                }
                if let Some(zone) = zone {
                    patch["time_zone"] = zone;
                }
                Ok((server, Call::PlanSet { path, patch, create }))
            }
            PlansCommand::Delete { server, name } => {
                plain(server, Method::DELETE, format!("/api/v1/plans/{}", urlencode(&name)), None)
            }
        },
        Command::Tokens(t) => match t {
            TokensCommand::Create { server, project, operator: _, name, expires_at } => {
                let body = json!({ "name": name, "expires_at": expires_at });
                match project {
                    Some(p) => {
                        plain(server, Method::POST, format!("/api/v1/projects/{}/tokens", urlencode(&p)), Some(body))
                    }
                    None => plain(server, Method::POST, "/api/v1/admin-tokens".to_owned(), Some(body)),
                }
            }
            TokensCommand::List { server, project } => {
                plain(server, Method::GET, format!("/api/v1/admin-tokens{}", query(&[("project", project)])), None)
            }
            TokensCommand::Get { server, id } => {
                plain(server, Method::GET, format!("/api/v1/admin-tokens/{}", urlencode(&id)), None)
            }
            TokensCommand::Revoke { server, id } => {
                plain(server, Method::POST, format!("/api/v1/admin-tokens/{}/revoke", urlencode(&id)), None)
            }
        },
        Command::Usage(UsageArgs { server, list: UsageList { project, key, from, to, page }, .. }) => Ok((
            server,
            Call::List {
                path: "/api/v1/usage".into(),
                pairs: vec![("project", project), ("key", key), ("from", from), ("to", to)],
                page,
                paging: USAGE_PAGES,
            },
        )),
        Command::Instances { server } => plain(server, Method::GET, "/health/detailed".to_owned(), None),
        Command::Status { server, key, project } => {
            let q = query(&[("key", key), ("project", project)]);
            plain(server, Method::GET, format!("/api/v1/usage/status{q}"), None)
        }
        Command::Alerts(a) => {
            let (server, method, path, body) = alerts::call(a)?;
            plain(server, method, path, body)
        }
        Command::ProviderKeys(k) => match k {
            ProviderKeysCommand::Set { server, project, provider, base_url } => {
                let api_key = read_secret_from_stdin()?;
                let path = format!("/api/v1/projects/{}/provider-keys/{}", urlencode(&project), urlencode(&provider));
                plain(server, Method::PUT, path, Some(json!({ "api_key": api_key, "base_url": base_url })))
            }
            ProviderKeysCommand::List { server, project } => {
                plain(server, Method::GET, format!("/api/v1/projects/{}/provider-keys", urlencode(&project)), None)
            }
            ProviderKeysCommand::Delete { server, project, provider } => {
                let path = format!("/api/v1/projects/{}/provider-keys/{}", urlencode(&project), urlencode(&provider));
                plain(server, Method::DELETE, path, None)
            }
        },
        Command::Secrets(SecretsCommand::Rotate { server }) => {
            plain(server, Method::POST, "/api/v1/secrets/rotate".to_owned(), None)
        }
    }
}

/// A secret typed or piped on stdin (one line; surrounding whitespace dropped), so it
/// is never on a command line where other users see it in `ps`.
fn read_secret_from_stdin() -> anyhow::Result<String> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("Paste the provider key, then press Enter and Ctrl-D:");
    }
    let mut text = String::new();
    stdin.lock().take(64 * 1024).read_to_string(&mut text).context("reading the provider key from stdin")?;
    let key = text.trim();
    if key.is_empty() {
        bail!("no provider key on stdin: pipe it in, e.g. `tollgate provider-keys set … < key.txt`");
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_with_subjects_and_scopes() {
        assert_eq!(
            parse_limit("total_tokens/day=1000;model=gpt-4o;subject=project").expect("valid"),
            json!({ "metric": "total_tokens", "window": "day", "limit": 1000, "model": "gpt-4o", "subject": "project" })
        );
        assert!(parse_limit("requests/minute=ten").is_err());
        assert!(parse_limit("requests/minute=1;colour=red").is_err());
    }

    #[test]
    fn an_override_replaces_its_slot_and_keeps_the_others() {
        let existing = vec![
            json!({ "name": "requests_per_minute", "metric": "requests", "window": "minute", "limit": 5 }),
            json!({ "metric": "requests", "window": "minute", "limit": 50, "subject": "ip" }),
        ];
        let merged = merge_limits(&existing, vec![json!({ "metric": "requests", "window": "minute", "limit": 7 })]);
        assert_eq!(
            merged,
            vec![
                json!({ "metric": "requests", "window": "minute", "limit": 7 }),
                json!({ "metric": "requests", "window": "minute", "limit": 50, "subject": "ip" }),
            ]
        );
    }
}
