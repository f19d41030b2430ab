//! deploy/ (Dockerfile, compose file, systemd unit) cannot be run here (no Docker
//! engine, no systemd as init), so what they hand the binary is checked against it:
//! every environment variable they set is accepted by `tollgate config check`
//! (an unknown `TOLLGATE_*` name or a bad value fails it), and every command line
//! they run parses.

use std::path::PathBuf;
use std::process::Command;

fn deploy(file: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `${NAME}` as compose would fill it in, with test values.
fn filled(value: &str) -> String {
    value
        .replace("${TOLLGATE_ADMIN_TOKEN}", "deploy-test-operator-token-0123")
        .replace("${OPENAI_API_KEY}", "sk-deploy-test")
        .trim_matches('"')
        .to_owned()
}

fn is_ours(name: &str) -> bool {
    name.starts_with("TOLLGATE_") || name.starts_with("OPENAI_") || name == "RUST_LOG"
}

/// Runs `tollgate config check` with exactly `vars`; panics naming `file` if refused.
fn config_check(file: &str, vars: &[(String, String)]) {
    assert!(!vars.is_empty(), "{file}: no variables found");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["config", "check"])
        .env_clear()
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .expect("run tollgate");
    assert!(out.status.success(), "{file}: {vars:?} refused: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `tollgate <args> --help`: unknown subcommands or flags fail it.
fn parses(file: &str, args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).arg("--help").output().expect("run tollgate");
    assert!(
        out.status.success(),
        "{file}: `tollgate {}` does not parse: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_array(text: &str) -> Vec<String> {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not a JSON array: {text} ({e})"))
}

#[test]
fn the_dockerfile_sets_only_variables_and_flags_the_binary_accepts() {
    let text = deploy("Dockerfile");
    let runtime = &text[text.rfind("\nFROM ").expect("a runtime stage")..];
    // `ENV A=1 \` continued over lines.
    let mut vars = Vec::new();
    let mut in_env = false;
    for line in runtime.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ENV ") {
            in_env = true;
            vars.extend(
                rest.split_whitespace().filter_map(|a| a.split_once('=')).map(|(k, v)| (k.to_owned(), filled(v))),
            );
        } else if in_env {
            vars.extend(
                line.split_whitespace().filter_map(|a| a.split_once('=')).map(|(k, v)| (k.to_owned(), filled(v))),
            );
        }
        if !line.ends_with('\\') {
            in_env = false;
        }
    }
    assert!(vars.iter().all(|(k, _)| is_ours(k)), "{vars:?}");
    assert!(
        vars.iter().any(|(k, v)| k == "TOLLGATE_LISTEN" && v.starts_with("0.0.0.0:")),
        "listens beyond the container"
    );
    config_check("Dockerfile", &vars);
    let entrypoint = runtime.lines().find_map(|l| l.strip_prefix("ENTRYPOINT ")).expect("ENTRYPOINT");
    let cmd = runtime.lines().find_map(|l| l.strip_prefix("CMD ")).expect("CMD");
    assert_eq!(json_array(entrypoint), ["tollgate"]);
    parses("Dockerfile", &json_array(cmd));
}

#[test]
fn the_compose_file_sets_only_variables_and_commands_the_binary_accepts() {
    let text = deploy("compose.yaml");
    let block = &text[..text.find("\nservices:").expect("services")];
    let vars: Vec<(String, String)> = block
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| is_ours(k))
        .map(|(k, v)| (k.to_owned(), filled(v)))
        .collect();
    assert!(vars.iter().any(|(k, v)| k == "TOLLGATE_STORE" && v == "distributed"));
    config_check("compose.yaml", &vars);
    let command = block.lines().find_map(|l| l.trim().strip_prefix("command: ")).expect("command");
    parses("compose.yaml", &json_array(command));
}

#[test]
fn the_systemd_unit_sets_only_variables_and_flags_the_binary_accepts() {
    let text = deploy("tollgate.service");
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|a| a.split_once('='))
        .map(|(k, v)| (k.to_owned(), filled(v)))
        .collect();
    assert!(vars.iter().all(|(k, _)| is_ours(k)), "{vars:?}");
    config_check("tollgate.service", &vars);
    let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/tollgate"));
    parses("tollgate.service", &words.map(str::to_owned).collect::<Vec<_>>());
}
