//! `flotilla`: the coordinator CLI. Each command is a function in [`commands`] that returns its
//! exit code or an [`exit::CommandError`] carrying one; `main.rs` only parses arguments and wires Ctrl-C.
//!
//! The parts: [`plan`] (plan files and waves), `discovery` (who is out there), `rollout` (the
//! engine: waves, budget, rollback, finalize), `store` (run records in a JetStream key-value
//! bucket), `report` (table, JSON, Markdown, JUnit, HTML), `progress` (lines on stderr) and
//! `events` (a run's events read back, for `watch` and the HTML timeline).

pub mod cli;
mod commands;
mod discovery;
mod dry_run;
mod events;
pub mod exit;
pub mod plan;
mod plan_files;
mod progress;
mod registry;
mod report;
mod rollout;
#[cfg(test)]
mod run_schema;
mod sanitize;
pub mod selector;
pub mod settings;
mod store;
mod trust;
pub mod verify;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use cli::{Cli, CommandKind, OutputFormat};
pub use report::{RunReport, ServiceReport, ServiceStatus};

/// Runs the command named on the command line; returns the exit code. `shutdown` is cancelled
/// on Ctrl-C: a migration then stops dispatching and leaves the run resumable.
pub async fn run(cli: Cli, shutdown: CancellationToken) -> u8 {
    commands::run(cli, shutdown)
        .await
        .unwrap_or_else(|error| error.report())
}

/// Cancels `shutdown` on the first Ctrl-C; exits at once on the second.
pub async fn cancel_on_interrupt(shutdown: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!(
        "interrupted: dispatching stops, services in flight finish; Ctrl-C again to quit at once (the run stays resumable)"
    );
    shutdown.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(i32::from(exit::CANCELLED));
    }
}

/// `--version`: the crate's version and the git commit it was built from, `0.1.0 (941cf80)`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLOTILLA_COMMIT"),
    ")"
);

/// How long the discovery window lasts by default.
pub const DEFAULT_DISCOVERY_WINDOW: Duration = Duration::from_secs(2);
