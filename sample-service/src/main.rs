//! `flotilla-sample`: a small service that plays one of the five trading
//! services (inference, training, ingest, execution, preprocess) so that the
//! Flotilla migration tool can be exercised against a real process.

mod ballast;
mod config;
mod job;
mod logging;
mod otel;
mod server;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use crate::config::Role;

/// Exit code for a missing or invalid configuration.
const EXIT_CONFIG: u8 = 2;

/// Command line of `flotilla-sample`.
#[derive(Debug, Parser)]
#[command(name = "flotilla-sample", version, about)]
struct Cli {
    /// Which trading service to play.
    #[arg(long, value_enum)]
    role: Role,
    /// Directory holding `config/service.toml` (standard) or `legacy.conf` (legacy).
    #[arg(long)]
    root: PathBuf,
    /// Port to listen on, overriding the configured one.
    #[arg(long)]
    port: Option<u16>,
    /// Run once as a batch job instead of serving: print the job's figures as JSON and exit.
    #[arg(long)]
    run_job: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match config::load(&cli.root, cli.role) {
        Ok(config) => config,
        Err(err) => return fail(&err, EXIT_CONFIG),
    };
    if let Some(port) = cli.port {
        config.port = port;
    }
    if cli.run_job {
        return match job::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => fail(&err, 1),
        };
    }
    // Set up beside the start-up, not before it: it must not lengthen the time to serving (a
    // request answered before it is ready is just not traced).
    let telemetry = tokio::task::spawn_blocking(otel::start);
    let served = server::run(config).await;
    // After a graceful stop (SIGTERM), so the last batch of spans and logs is not lost.
    if let Ok(Some(telemetry)) = telemetry.await
        && let Err(err) = telemetry.shutdown().await
    {
        eprintln!(
            "flotilla-sample: warning: telemetry: {}",
            flotilla_telemetry::error_chain(&err)
        );
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err, 1),
    }
}

/// Prints `err` as a single line on stderr and returns `code`.
fn fail(err: &anyhow::Error, code: u8) -> ExitCode {
    // Callers (and the migration tool's tests) rely on exactly one line.
    let message = format!("{err:#}").replace(['\r', '\n'], " ");
    eprintln!("flotilla-sample: error: {message}");
    ExitCode::from(code)
}
