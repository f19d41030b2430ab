//! The verify middleware examples (docs/examples/middleware: Express and FastAPI),
//! run with their real frameworks against a real tollgate, so they cannot rot.
//! scripts/test.sh installs Express (npm) and FastAPI (PyPI); a missing one fails
//! here, it never skips.

use std::path::PathBuf;
use std::process::Command;

use reqwest::Method;
use serde_json::json;

use crate::helpers::*;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/middleware")
}

/// A fresh free key and a revoked one, for the example's own test.
async fn keys(app: &TestApp) -> (String, String) {
    app.create_project("acme").await;
    let (key, _) = app.create_key(json!({ "project": "acme", "plan": "free" })).await;
    let (revoked, id) = app.create_key(json!({ "project": "acme", "plan": "free" })).await;
    assert_eq!(app.admin(Method::POST, &format!("/api/v1/keys/{id}/revoke"), None).await.status, 200);
    (key, revoked)
}

fn run(mut command: Command, app: &TestApp, keys: &(String, String)) {
    let out = command
        .env("TOLLGATE_URL", &app.base)
        .env("TOLLGATE_TEST_KEY", &keys.0)
        .env("TOLLGATE_TEST_REVOKED_KEY", &keys.1)
        .output()
        .unwrap_or_else(|e| panic!("{command:?} could not start: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_express_middleware_example_maps_every_verdict_and_fails_open_or_closed() {
    let dir = examples().join("express");
    assert!(
        dir.join("node_modules/express").is_dir(),
        "express is not installed in {}: run `npm ci` there (scripts/test.sh does)",
        dir.display()
    );
    let app = spawn_app().await;
    let keys = keys(&app).await;
    let mut command = Command::new("node");
    command.arg("--test").arg("tollgate.test.js").current_dir(&dir);
    tokio::task::block_in_place(|| run(command, &app, &keys));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fastapi_middleware_example_maps_every_verdict_and_fails_open_or_closed() {
    let dir = examples().join("fastapi");
    let app = spawn_app().await;
    let keys = keys(&app).await;
    let mut command = Command::new("python3");
    command.arg("test_tollgate_fastapi.py").current_dir(&dir);
    tokio::task::block_in_place(|| run(command, &app, &keys));
}

/// docs/examples/api: the admin, proxy and verify calls in curl, Python, JavaScript,
/// Go and Ruby, each run against a real tollgate (in front of the mock upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_examples_run_in_every_language() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/api");
    let app = spawn_app().await;
    let go_cache = tempfile::tempdir().expect("go cache");
    let runs: [(&str, &[&str], PathBuf); 5] = [
        ("sh", &["curl.sh"], dir.clone()),
        ("python3", &["example.py"], dir.clone()),
        ("node", &["example.mjs"], dir.clone()),
        ("go", &["run", "."], dir.join("go")),
        ("ruby", &["example.rb"], dir.clone()),
    ];
    for (program, args, cwd) in runs {
        let out = tokio::task::block_in_place(|| {
            Command::new(program)
                .args(args)
                .current_dir(&cwd)
                .env("TOLLGATE_URL", &app.base)
                .env("TOLLGATE_ADMIN_TOKEN", ADMIN_TOKEN)
                .env("GOCACHE", go_cache.path())
                .env("GOFLAGS", "-buildvcs=false")
                .env("GOTOOLCHAIN", "local")
                .output()
                .unwrap_or_else(|e| panic!("{program} is needed for docs/examples (scripts/test.sh installs it): {e}"))
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.trim_end().ends_with("ok"),
            "{program} {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
