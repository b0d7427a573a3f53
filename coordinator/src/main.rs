use std::process::ExitCode;

use clap::Parser;

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
    ExitCode::from(flotilla_coordinator::run(cli).await)
}
