//! The `tollgate` binary: parses the command line and runs the chosen command.

use std::process::ExitCode;

use tollgate_cli::Parser;
use tollgate_cli::{Cli, Command};
use tollgate_mock_upstream as mock;
use tollgate_server::config::Config;
use tollgate_server::{app, telemetry};

/// mimalloc: a request allocates and frees a few dozen small blocks across threads,
/// which glibc's malloc spent about a tenth of the gateway's CPU on (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            telemetry::init(config.log_format);
            let app = app::Application::build(config).await?;
            if let Some(token) = &app.created_admin_token {
                // To a terminal, or to a 0600 file in the data dir: never to a log.
                use std::io::IsTerminal;
                let data_dir = app.state().config.data_dir.clone();
                app::hand_over_generated_token(token, &data_dir, std::io::stdout().is_terminal())?;
            }
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::MockUpstream(args) => {
            telemetry::init(tollgate_server::config::LogFormat::Text);
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port)).await?;
            tracing::info!(address = %listener.local_addr()?, "mock upstream listening");
            let config = mock::MockConfig {
                latency_ms: args.latency_ms,
                prompt_tokens: args.prompt_tokens,
                completion_tokens: args.completion_tokens,
                expected_api_key: args.expected_api_key,
            };
            mock::serve(listener, config, shutdown_signal()).await?;
            Ok(())
        }
        other => tollgate_cli::run_admin(other).await,
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
