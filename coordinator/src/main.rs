use std::process::ExitCode;

use std::sync::Arc;

use flotilla_coordinator::cli::TelemetryHandle;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match flotilla_coordinator::cli::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(flotilla_coordinator::cli::CliError::Args(e)) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                flotilla_coordinator::exit::USAGE
            } else {
                0
            });
        }
        Err(flotilla_coordinator::cli::CliError::Settings(e)) => {
            return ExitCode::from(flotilla_coordinator::exit::CommandError::from(e).report());
        }
    };
    let mut cli = cli;
    let telemetry = Arc::new(flotilla_telemetry::init_with(
        flotilla_telemetry::TelemetryConfig {
            // -v / -q; RUST_LOG, when set, wins.
            default_filter: flotilla_coordinator::cli::log_filter(&cli.flags),
            ..flotilla_telemetry::TelemetryConfig::new("flotilla")
        },
    ));
    cli.telemetry = TelemetryHandle(Some(telemetry.clone()));
    let shutdown = CancellationToken::new();
    tokio::spawn(flotilla_coordinator::cancel_on_interrupt(shutdown.clone()));
    let code = flotilla_coordinator::run(cli, shutdown).await;
    // Every span of a short CLI run reaches the store before the process exits.
    if let Ok(telemetry) = Arc::try_unwrap(telemetry)
        && let Err(e) = telemetry.shutdown().await
    {
        eprintln!("warning: telemetry shutdown: {e}");
    }
    ExitCode::from(code)
}
