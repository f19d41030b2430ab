//! Tenancy and operation: what a project-scoped admin token may not do (lift its own
//! limits, pick the OpenAI organization billed), project-wide budgets, admin token
//! lifecycle, where a generated operator token goes, and one process per data dir.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::helpers::*;

/// Runs `tollgate serve` on `data_dir` until it exits or logs that it is listening;
/// returns (whether it got to listening, its exit success, everything it wrote to
/// stderr). A child that listens is sent SIGTERM (which may arrive before its
/// handler is installed: its exit status then says nothing).
fn serve_until_listening_or_exit(data_dir: &std::path::Path, upstream: &str) -> (bool, bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .env_clear()
        .env("TOLLGATE_LISTEN", "127.0.0.1:0")
        .env("TOLLGATE_DATA_DIR", data_dir)
        .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("OPENAI_BASE_URL", upstream)
        .env("OPENAI_API_KEY", "sk-provider-test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tollgate serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut output = String::new();
    let mut listening = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        output.push_str(&line);
        output.push('\n');
        if line.contains("tollgate listening") {
            listening = true;
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
    }
    let status = child.wait().expect("wait");
    (listening, status.success(), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_exits_naming_the_lock() {
    let app = spawn_app().await;
    let key = app.project_key("acme", "free").await;
    let (dir, upstream) = (app.data_dir.clone(), app.mock_url.clone());
    let (listening, success, output) =
        tokio::task::spawn_blocking(move || serve_until_listening_or_exit(&dir, &upstream)).await.expect("join");
    assert!(!listening, "a second tollgate served the same data dir (doubling every limit):\n{output}");
    assert!(!success, "the second process must exit with an error:\n{output}");
    assert!(output.contains("tollgate.lock"), "the error names the lock file:\n{output}");
    // The first one is untouched.
    assert_eq!(app.chat(&key).await.status, 200);

    // Once the first stops, the directory is free again.
    let (dir, upstream, tmp) = app.stop().await;
    let moved = dir.clone();
    let (listening, _, output) =
        tokio::task::spawn_blocking(move || serve_until_listening_or_exit(&moved, &upstream)).await.expect("join");
    assert!(listening, "the data dir is usable after the first process stopped:\n{output}");
    drop(tmp);
}
