//! `tollgate config check` and the configuration mistakes it and `serve` report.

use std::process::Command;

fn tollgate(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(args).env_remove("OPENAI_API_KEY").env_remove("ANTHROPIC_API_KEY").env_remove("TOLLGATE_ADMIN_TOKEN");
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

#[test]
fn config_check_prints_the_effective_settings_with_every_secret_redacted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let file = tmp.path().join("tollgate.toml");
    std::fs::write(
        &file,
        "listen = \"localhost:9191\"\nadmin_token = \"operator-secret-0123456789\"\n\n[upstream]\napi_key = \"sk-very-secret\"\ntimeout_secs = 42\n",
    )
    .expect("write config");
    let file = file.to_str().expect("utf-8 path");
    let master_key = "ab".repeat(32);
    let env = [
        ("TOLLGATE_DATABASE_URL", "postgres://u:db-password@h/db"),
        ("TOLLGATE_EVENTS__NATS_URL", "nats://tg:nats-password@h:4222"),
        ("TOLLGATE_ANTHROPIC__API_KEY", "sk-ant-very-secret"),
        // The master key of sealed secrets, under its name and its older one (the same key).
        ("TOLLGATE_SECRETS__MASTER_KEY", master_key.as_str()),
        ("TOLLGATE_ALERTS__MASTER_KEY", master_key.as_str()),
    ];
    let (ok, stdout, stderr) = tollgate(&["config", "check", "--config", file], &env);
    assert!(ok, "{stderr}");
    for secret in [
        "operator-secret-0123456789",
        "sk-very-secret",
        "db-password",
        "nats-password",
        "sk-ant-very-secret",
        master_key.as_str(),
    ] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "{secret} leaked:\n{stdout}\n{stderr}");
    }
    assert!(stdout.contains("admin_token = \"<redacted>\""), "{stdout}");
    assert!(stdout.contains("api_key = \"<redacted>\""), "{stdout}");
    assert!(stdout.contains("[anthropic]") && stdout.contains("version = \"2023-06-01\""), "{stdout}");
    assert_eq!(stdout.matches("api_key = \"<redacted>\"").count(), 2, "both provider keys: {stdout}");
    assert!(stdout.contains("database_url = \"<redacted>\""), "{stdout}");
    assert!(stdout.contains("nats_url = \"<redacted>\""), "{stdout}");
    assert_eq!(stdout.matches("master_key = \"<redacted>\"").count(), 2, "[secrets] and [alerts]: {stdout}");
    assert!(stdout.contains("listen = \"localhost:9191\""), "{stdout}");
    assert!(stdout.contains("timeout_secs = 42"), "the file's value: {stdout}");
    assert!(stdout.contains("[plans.free]"), "defaults shown too: {stdout}");
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}

#[test]
fn config_check_names_a_bad_setting_an_unknown_variable_and_a_missing_provider_key() {
    let (ok, _, stderr) = tollgate(&["config", "check"], &[("TOLLGATE_LISTEN", "localhost:http")]);
    assert!(!ok);
    assert!(stderr.contains("listen"), "{stderr}");

    let (ok, _, stderr) = tollgate(&["config", "check"], &[("TOLLGATE_LISTN", "127.0.0.1:1")]);
    assert!(!ok, "a typo in a variable name is an error");
    assert!(stderr.contains("TOLLGATE_LISTN"), "{stderr}");

    let (ok, _, stderr) = tollgate(&["serve"], &[("TOLLGATE_UPSTREM__BASE_URL", "http://x")]);
    assert!(!ok, "serve refuses it too");
    assert!(stderr.contains("TOLLGATE_UPSTREM__BASE_URL"), "{stderr}");

    let (ok, _, stderr) = tollgate(&["config", "check"], &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("no provider key is configured"), "{stderr}");
}
