use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flotilla_telemetry::LogFormat;
use tokio_util::sync::CancellationToken;

/// `--version`: the crate's version and the git commit it was built from, `0.1.0 (941cf80)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLOTILLA_COMMIT"),
    ")"
);

/// The Flotilla sidecar agent: backs its service up, migrates it, validates it and rolls it
/// back on failure, on command from the `flotilla` coordinator over NATS.
#[derive(Parser)]
#[command(version = VERSION, about, subcommand_negates_reqs = true)]
struct Args {
    /// The agent's configuration file (TOML); `FLOTILLA_…` variables override it, e.g.
    /// `FLOTILLA_NATS__URL`.
    #[arg(long, short, env = "FLOTILLA_AGENT_CONFIG", required = true)]
    config: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(clap::Subcommand)]
enum Tool {
    /// Asks a running agent's HTTP endpoint (`[http] listen`) and exits 0 on a 2xx answer, 1
    /// otherwise: a container health check for images without curl.
    Probe {
        /// The URL to ask, e.g. `http://127.0.0.1:9464/healthz`.
        #[arg(default_value = flotilla_agent::ops::probe::DEFAULT_URL)]
        url: String,
    },
}

/// One thread: the agent handles one command at a time, and its blocking work (backups,
/// restores, re-hashing) runs on Tokio's blocking threads; a multi-threaded runtime only added
/// idle workers (the round trip measured the same or better without them).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Tool::Probe { url }) = &args.command {
        return probe(url).await;
    }
    let path = args.config.as_deref().expect("clap requires --config");
    let config = flotilla_agent::AgentConfig::load(path)?;
    // Built before logging starts, so that no line is written unscrubbed.
    let redactor =
        flotilla_agent::redact::Redactor::from_sources(&config.secrets).context("agent secrets")?;
    let telemetry = flotilla_telemetry::init_with(flotilla_telemetry::TelemetryConfig {
        format: if args.log_json {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
        resource_attributes: vec![
            (
                "service.instance.id".into(),
                format!("{}/{}", config.service.name, config.agent.instance),
            ),
            (
                flotilla_telemetry::SERVICE_ATTR.into(),
                config.service.name.to_string(),
            ),
            (
                flotilla_telemetry::INSTANCE_ATTR.into(),
                config.agent.instance.to_string(),
            ),
        ],
        scrubber: Some(flotilla_telemetry::Scrubber(std::sync::Arc::new(
            redactor.clone(),
        ))),
        ..flotilla_telemetry::TelemetryConfig::new("flotilla-agent")
    });
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let outcome = flotilla_agent::run_with(config, redactor, &telemetry, shutdown)
        .await
        .context("agent failed");
    if let Err(e) = telemetry.shutdown().await {
        eprintln!("warning: telemetry shutdown: {e}");
    }
    outcome
}

/// `flotilla-agent probe URL`: the answer's body on stdout, or the failure on stderr (exit 1).
async fn probe(url: &str) -> anyhow::Result<()> {
    let body = flotilla_agent::ops::probe::probe(url).await?;
    #[allow(clippy::print_stdout, reason = "the probe's output")]
    {
        print!("{body}");
    }
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
