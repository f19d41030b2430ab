//! `tollgate alerts …`: each command is one call to `/api/v1/alerts/…`.

use anyhow::Context;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::args::{AlertChannelsCommand, AlertDeliveriesCommand, AlertRulesCommand, AlertsCommand, ServerArgs};
use crate::{query, urlencode};

type Request = (ServerArgs, Method, String, Option<Value>);

fn object(pairs: Vec<(&str, Option<Value>)>) -> Value {
    let map: Map<String, Value> = pairs.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))).collect();
    Value::Object(map)
}

fn enabled(enable: bool, disable: bool) -> Option<Value> {
    match (enable, disable) {
        (true, _) => Some(json!(true)),
        (_, true) => Some(json!(false)),
        _ => None,
    }
}

pub(crate) fn call(command: AlertsCommand) -> anyhow::Result<Request> {
    let s = |v: Option<String>| v.map(Value::from);
    Ok(match command {
        AlertsCommand::Rules(r) => match r {
            AlertRulesCommand::Create {
                server,
                project,
                name,
                kind,
                metric,
                window,
                subject,
                provider,
                model,
                endpoint,
                thresholds,
                channels,
                disabled,
            } => {
                let body = object(vec![
                    ("project", s(project)),
                    ("name", s(name)),
                    ("kind", s(kind.kind)),
                    ("key", s(kind.key)),
                    ("threshold", kind.threshold.map(|t| json!(t))),
                    ("min_volume", kind.min_volume.map(|v| json!(v))),
                    ("notify_resolved", kind.notify_resolved.then_some(Value::Bool(true))),
                    ("metric", s(metric)),
                    ("window", s(window)),
                    ("subject", s(subject)),
                    ("provider", s(provider)),
                    ("model", s(model)),
                    ("endpoint", s(endpoint)),
                    ("thresholds", (!thresholds.is_empty()).then(|| json!(thresholds))),
                    ("channels", Some(json!(channels))),
                    ("enabled", disabled.then_some(Value::Bool(false))),
                ]);
                (server, Method::POST, "/api/v1/alerts/rules".into(), Some(body))
            }
            AlertRulesCommand::List { server, project } => {
                (server, Method::GET, format!("/api/v1/alerts/rules{}", query(&[("project", project)])), None)
            }
            AlertRulesCommand::Get { server, id } => {
                (server, Method::GET, format!("/api/v1/alerts/rules/{}", urlencode(&id)), None)
            }
            AlertRulesCommand::Update { server, id, name, thresholds, channels, enable, disable } => {
                let body = object(vec![
                    ("name", s(name)),
                    ("thresholds", thresholds.map(|t| json!(t))),
                    ("channels", channels.map(|c| json!(c))),
                    ("enabled", enabled(enable, disable)),
                ]);
                (server, Method::PATCH, format!("/api/v1/alerts/rules/{}", urlencode(&id)), Some(body))
            }
            AlertRulesCommand::Delete { server, id } => {
                (server, Method::DELETE, format!("/api/v1/alerts/rules/{}", urlencode(&id)), None)
            }
        },
        AlertsCommand::Channels(c) => match c {
            AlertChannelsCommand::Create {
                server,
                kind,
                project,
                name,
                target,
                smtp_host,
                smtp_port,
                smtp_tls,
                smtp_username,
                smtp_password_env,
                from,
                to,
            } => {
                let password = smtp_password_env
                    .map(|var| std::env::var(&var).with_context(|| format!("reading the SMTP password from ${var}")))
                    .transpose()?;
                let body = object(vec![
                    ("kind", Some(kind.into())),
                    ("project", s(project)),
                    ("name", s(name)),
                    ("url", s(target)),
                    ("smtp_host", s(smtp_host)),
                    ("smtp_port", smtp_port.map(Value::from)),
                    ("smtp_tls", s(smtp_tls)),
                    ("smtp_username", s(smtp_username)),
                    ("smtp_password", s(password)),
                    ("from", s(from)),
                    ("to", (!to.is_empty()).then(|| json!(to))),
                ]);
                (server, Method::POST, "/api/v1/alerts/channels".into(), Some(body))
            }
            AlertChannelsCommand::List { server, project } => {
                (server, Method::GET, format!("/api/v1/alerts/channels{}", query(&[("project", project)])), None)
            }
            AlertChannelsCommand::Get { server, id } => {
                (server, Method::GET, format!("/api/v1/alerts/channels/{}", urlencode(&id)), None)
            }
            AlertChannelsCommand::Update { server, id, name, enable, disable } => {
                let body = object(vec![("name", s(name)), ("enabled", enabled(enable, disable))]);
                (server, Method::PATCH, format!("/api/v1/alerts/channels/{}", urlencode(&id)), Some(body))
            }
            AlertChannelsCommand::Delete { server, id } => {
                (server, Method::DELETE, format!("/api/v1/alerts/channels/{}", urlencode(&id)), None)
            }
            AlertChannelsCommand::Test { server, id } => {
                (server, Method::POST, format!("/api/v1/alerts/channels/{}/test", urlencode(&id)), None)
            }
        },
        AlertsCommand::Events { server, project, status, limit } => {
            let q = query(&[("project", project), ("status", status), ("limit", limit)]);
            (server, Method::GET, format!("/api/v1/alerts/events{q}"), None)
        }
        AlertsCommand::Deliveries(d) => match d {
            AlertDeliveriesCommand::List { server, project, status, event, limit } => {
                let q = query(&[("project", project), ("status", status), ("event", event), ("limit", limit)]);
                (server, Method::GET, format!("/api/v1/alerts/deliveries{q}"), None)
            }
            AlertDeliveriesCommand::Get { server, id } => {
                (server, Method::GET, format!("/api/v1/alerts/deliveries/{}", urlencode(&id)), None)
            }
            AlertDeliveriesCommand::Redeliver { server, id } => {
                (server, Method::POST, format!("/api/v1/alerts/deliveries/{}/redeliver", urlencode(&id)), None)
            }
        },
    })
}
