//! The command line for people: tables on a terminal, JSON otherwise, paging, plans
//! changed one limit at a time, per-key and scoped limits, `status`, the admin token
//! from a file, help on every command.

use std::process::Command;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;

/// Runs the CLI against `app` with the token in the environment; (ok, stdout, stderr).
fn run(app: &TestApp, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(args).env("TOLLGATE_URL", &app.base).env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN);
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().expect("run tollgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(app: &TestApp, args: &[&str]) -> Value {
    let (ok, stdout, stderr) = run(app, args, &[]);
    assert!(ok, "tollgate {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tollgate {args:?} printed no JSON ({e}): {stdout}"))
}

/// Runs the CLI under a pseudo-terminal (`script`, util-linux), as a person would.
fn on_a_terminal(app: &TestApp, args: &[&str]) -> String {
    let mut line = String::from(env!("CARGO_BIN_EXE_tollgate"));
    for a in args {
        line.push(' ');
        line.push_str(a);
    }
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("TOLLGATE_URL", &app.base)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("script (util-linux) runs the CLI on a pseudo-terminal");
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_tables_on_a_terminal_json_elsewhere_and_page_with_after_limit_and_all() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.create_key(json!({ "project": "acme", "plan": "free" })).await.1);
    }
    ids.sort();
    tokio::task::block_in_place(|| {
        let table = on_a_terminal(&app, &["keys", "list", "--limit", "2"]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID ") && lines[0].contains("PLAN"), "a header row: {table}");
        assert!(lines[1].starts_with(&ids[0]) && lines[2].starts_with(&ids[1]), "{table}");
        assert!(table.contains(&format!("more: --after {}", ids[1])), "where the next page starts: {table}");
        assert!(!table.trim_start().starts_with('{'), "not JSON on a terminal");
        let forced = on_a_terminal(&app, &["keys", "list", "--json"]);
        assert!(serde_json::from_str::<Value>(&forced).is_ok(), "--json on a terminal: {forced}");

        // Not a terminal: JSON; pages follow `next_after`.
        let page = json_of(&app, &["keys", "list", "--limit", "2", "--after", &ids[1]]);
        let got: Vec<&str> = page["data"].as_array().expect("data").iter().filter_map(|k| k["id"].as_str()).collect();
        assert_eq!(got, [ids[2].as_str(), ids[3].as_str()]);
        let all = json_of(&app, &["keys", "list", "--limit", "2", "--all"]);
        let got: Vec<&str> = all["data"].as_array().expect("data").iter().filter_map(|k| k["id"].as_str()).collect();
        assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>(), "every page, in order, once");
    });
    // Usage pages the same way.
    let key = app.create_key(json!({ "project": "acme", "plan": "pro" })).await.0;
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    app.settled().await;
    tokio::task::block_in_place(|| {
        let one = json_of(&app, &["usage", "--project", "acme", "--limit", "1"]);
        assert_eq!(one["data"].as_array().map(Vec::len), Some(1));
        assert!(one["next_cursor"].is_string());
        let all = json_of(&app, &["usage", "--project", "acme", "--limit", "1", "--all"]);
        assert_eq!(all["data"].as_array().map(Vec::len), Some(3));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_set_changes_one_limit_and_keeps_the_others_while_replace_and_put_replace() {
    let app = spawn_app().await;
    let before = app.admin(Method::GET, "/api/v1/plans/free", None).await;
    let names = |plan: &Value| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = plan["limits"]
            .as_array()
            .expect("limits")
            .iter()
            .map(|l| (l["name"].as_str().unwrap_or_default().to_owned(), l["limit"].as_u64().unwrap_or(0)))
            .collect();
        v.sort();
        v
    };
    let original = names(&before.body);
    assert!(original.iter().any(|(n, _)| n == "requests_per_month"), "free has a monthly quota: {original:?}");
    tokio::task::block_in_place(|| {
        let after = json_of(&app, &["plans", "set", "free", "--limit", "requests/minute=20"]);
        let mut expected = original.clone();
        for (name, limit) in &mut expected {
            if name == "requests_per_minute" {
                *limit = 20;
            }
        }
        assert_eq!(names(&after), expected, "only the minute limit changed; the monthly quota is kept");
        // A scoped limit is added beside the rest, and removed by name.
        let scoped = json_of(&app, &["plans", "set", "free", "--limit", "total_tokens/day=5000;model=gpt-4o"]);
        assert_eq!(names(&scoped).len(), expected.len() + 1);
        let back = json_of(&app, &["plans", "set", "free", "--remove", "total_tokens_per_day_model_gpt-4o"]);
        assert_eq!(names(&back), expected);
        let created = json_of(&app, &["plans", "set", "brand-new", "--limit", "requests/minute=4"]);
        assert_eq!(names(&created), [("requests_per_minute".to_owned(), 4)], "a plan that does not exist is created");
        let replaced = json_of(&app, &["plans", "set", "free", "--replace", "--limit", "requests/minute=3"]);
        assert_eq!(names(&replaced), [("requests_per_minute".to_owned(), 3)], "--replace is PUT");
    });
    // The API: PATCH merges, PUT replaces.
    let patched = app
        .admin(
            Method::PATCH,
            "/api/v1/plans/free",
            Some(json!({ "limits": [{ "metric": "requests", "window": "month", "limit": 99 }] })),
        )
        .await;
    assert_eq!(patched.status, 200, "{:?}", patched.body);
    assert_eq!(names(&patched.body), [("requests_per_minute".to_owned(), 3), ("requests_per_month".to_owned(), 99)]);
    let bad = app.admin(Method::PATCH, "/api/v1/plans/free", Some(json!({ "remove": ["nope"] }))).await;
    assert_eq!((bad.status, bad.body["error"]["param"].as_str()), (400, Some("remove")));
    let put = app
        .admin(
            Method::PUT,
            "/api/v1/plans/free",
            Some(json!({ "limits": [{ "metric": "requests", "window": "day", "limit": 1 }] })),
        )
        .await;
    assert_eq!(names(&put.body), [("requests_per_day".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_and_subject_limits_from_the_cli_status_and_the_token_from_a_file() {
    let app = spawn_app().await;
    app.create_project("acme").await;
    let token_file = app.data_dir.join("token-for-cli");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write token");
    let token_file = token_file.to_str().expect("utf-8").to_owned();
    let (id, key) = tokio::task::block_in_place(|| {
        let created = json_of(
            &app,
            &[
                "keys",
                "create",
                "--project",
                "acme",
                "--plan",
                "pro",
                "--limit",
                "requests/minute=2",
                "--limit",
                "requests/minute=50;subject=ip",
            ],
        );
        let id = created["id"].as_str().expect("id").to_owned();
        // One override changed, the other kept.
        let updated = json_of(&app, &["keys", "update", &id, "--limit", "requests/minute=3"]);
        let limits = updated["limits"].as_array().expect("limits").clone();
        assert_eq!(limits.len(), 2, "{updated}");
        assert!(limits.iter().any(|l| l["limit"] == 3 && l.get("subject").is_none_or(|s| s == "key")));
        assert!(limits.iter().any(|l| l["limit"] == 50 && l["subject"] == "ip"));
        (id, created["key"].as_str().expect("secret").to_owned())
    });
    for _ in 0..3 {
        assert_eq!(app.chat(&key).await.status, 200);
    }
    assert_eq!(app.chat(&key).await.status, 429, "the key's own override of 3 a minute");
    tokio::task::block_in_place(|| {
        // No token in the environment or on the command line: the file.
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        let out = command
            .args(["status", "--key", &id])
            .env("TOLLGATE_URL", &app.base)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env("TOLLGATE_ADMIN_TOKEN_FILE", &token_file)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let status: Value = serde_json::from_slice(&out.stdout).expect("json");
        let minute = status["limits"]
            .as_array()
            .expect("limits")
            .iter()
            .find(|l| l["name"] == "requests_per_minute")
            .cloned()
            .expect("the minute limit");
        assert_eq!((minute["limit"].as_u64(), minute["used"].as_u64()), (Some(3), Some(3)), "{status}");
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["keys", "list"])
            .env("TOLLGATE_URL", &app.base)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .env_remove("TOLLGATE_ADMIN_TOKEN_FILE")
            .output()
            .expect("run");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("TOLLGATE_ADMIN_TOKEN_FILE"),
            "says where a token may come from"
        );
    });
}

#[test]
fn every_subcommand_has_help_and_serve_help_lists_every_setting() {
    fn walk(path: &mut Vec<String>, missing: &mut Vec<String>) {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(path.iter()).arg("--help").output().expect("help");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{path:?} --help");
        let mut in_commands = false;
        for line in text.lines() {
            if line.starts_with("Commands:") {
                in_commands = true;
                continue;
            }
            if in_commands {
                if line.trim().is_empty() {
                    break;
                }
                let mut words = line.split_whitespace();
                let Some(name) = words.next() else { continue };
                if name == "help" {
                    continue;
                }
                if words.next().is_none() {
                    missing.push(format!("{} {name}", path.join(" ")));
                }
                path.push(name.to_owned());
                walk(path, missing);
                path.pop();
            }
        }
    }
    let mut missing = Vec::new();
    walk(&mut Vec::new(), &mut missing);
    assert!(missing.is_empty(), "subcommands without help: {missing:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["serve", "--help"]).output().expect("help");
    let text = String::from_utf8_lossy(&out.stdout);
    for setting in tollgate_server::config::ENV_KEYS {
        assert!(text.contains(setting), "serve --help does not list `{setting}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_channels_rules_and_deliveries_from_the_command_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mock_url = spawn_mock(tollgate_mock_upstream::MockConfig::default()).await;
    let mut raw = raw_config(tmp.path(), &mock_url);
    raw.alerts.allow_private_targets = true;
    let mut app = spawn_app_with(tollgate_server::config::Config::from_raw(raw).expect("config")).await;
    app.keep_dir(tmp);
    app.create_project("acme").await;
    let receiver = crate::alerts::Receiver::start().await;
    tokio::task::block_in_place(|| {
        let channel = json_of(
            &app,
            &["alerts", "channels", "create", "--kind", "webhook", "--project", "acme", "--target", &receiver.url],
        );
        assert!(channel["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")), "{channel}");
        let id = channel["id"].as_str().expect("id").to_owned();
        let rule = json_of(
            &app,
            &[
                "alerts",
                "rules",
                "create",
                "--project",
                "acme",
                "--window",
                "day",
                "--thresholds",
                "50,100",
                "--channels",
                &id,
            ],
        );
        assert_eq!(rule["thresholds"], json!([50, 100]), "{rule}");
        let anomaly = json_of(
            &app,
            &[
                "alerts",
                "rules",
                "create",
                "--project",
                "acme",
                "--kind",
                "anomaly",
                "--metric",
                "requests",
                "--threshold",
                "5",
                "--min-volume",
                "20",
                "--channels",
                &id,
            ],
        );
        assert_eq!(anomaly["kind"], "anomaly", "{anomaly}");
        assert_eq!(anomaly["threshold"], 5.0);
        assert_eq!(anomaly["min_volume"], 20);
        let anomaly_id = anomaly["id"].as_str().expect("id").to_owned();
        let (ok, _, stderr) = run(&app, &["alerts", "rules", "delete", &anomaly_id], &[]);
        assert!(ok, "{stderr}");
        let rules = json_of(&app, &["alerts", "rules", "list", "--project", "acme"]);
        assert_eq!(rules["data"].as_array().map(Vec::len), Some(1));
        let test = json_of(&app, &["alerts", "channels", "test", &id]);
        assert_eq!(test["status"], "delivered", "{test}");
        let list = json_of(&app, &["alerts", "deliveries", "list", "--status", "delivered"]);
        assert_eq!(list["data"][0]["id"], test["id"]);
        let (ok, _, stderr) = run(&app, &["alerts", "channels", "delete", &id], &[]);
        assert!(!ok && stderr.contains("rule"), "a channel in use is not deleted: {stderr}");
    });
    assert_eq!(receiver.received().len(), 1);
}
