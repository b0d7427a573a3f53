use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The Flotilla sidecar agent: backs its service up, migrates it, validates it and rolls it
/// back on failure, on command from the `flotilla` coordinator over NATS.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// The agent's configuration file (TOML); `FLOTILLA_…` variables override it, e.g.
    /// `FLOTILLA_NATS__URL`.
    #[arg(long, short, env = "FLOTILLA_AGENT_CONFIG")]
    config: PathBuf,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = if args.log_json {
        flotilla_telemetry::LogFormat::Json
    } else {
        flotilla_telemetry::LogFormat::Text
    };
    let _telemetry = flotilla_telemetry::init(format, "info");
    let config = flotilla_agent::AgentConfig::load(&args.config)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    flotilla_agent::run(config, shutdown)
        .await
        .context("agent failed")?;
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    shutdown.cancel();
}
