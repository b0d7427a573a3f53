use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match flotilla_coordinator::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                flotilla_coordinator::exit::USAGE
            } else {
                0
            });
        }
    };
    let _telemetry = flotilla_telemetry::init(flotilla_telemetry::LogFormat::Text, "warn");
    let shutdown = CancellationToken::new();
    tokio::spawn(flotilla_coordinator::cancel_on_interrupt(shutdown.clone()));
    ExitCode::from(flotilla_coordinator::run(cli, shutdown).await)
}
