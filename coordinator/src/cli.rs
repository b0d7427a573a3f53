//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Flotilla migrates a fleet of services safely: every agent backs its service up, applies the
/// plan, validates it and rolls back by itself on failure.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_CODES)]
pub struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Subject prefix shared with the agents.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_PREFIX",
        default_value = "flotilla"
    )]
    pub prefix: String,
    /// Output format.
    #[arg(long, short, global = true, env = "FLOTILLA_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// How long to wait for NATS to answer the connection.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How long to wait for agents to answer discovery.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub discovery_window: Duration,
    /// Run against a nats-server older than the supported minimum (not recommended).
    #[arg(long, global = true)]
    pub allow_old_server: bool,
    #[command(subcommand)]
    pub command: CommandKind,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum CommandKind {
    /// List the live agents.
    #[command(after_help = "Example:\n  flotilla agents --output json")]
    Agents,
    /// Run a migration plan over the fleet.
    #[command(
        after_help = "Examples:\n  flotilla migrate deploy/demo/plan.toml\n  flotilla migrate plan.toml --dry-run\n  flotilla migrate plan.toml --output json > report.json"
    )]
    Migrate {
        /// The plan file (TOML).
        plan: PathBuf,
        /// Show what would happen and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        action: PlanAction,
    },
}

/// Plan subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Check a plan file without connecting anywhere.
    #[command(after_help = "Example:\n  flotilla plan check deploy/demo/plan.toml")]
    Check { plan: PathBuf },
}

const EXIT_CODES: &str = "Exit codes:
  0  every service succeeded
  1  a service failed or was refused; the fleet was rolled back (or left, per the plan)
  2  bad input (arguments, plan); nothing changed
  3  pre-flight failed (a service has no live, compatible agent); nothing changed
  4  NATS unreachable or unusable
  5  a rollback failed: a service needs a human
  6  an agent did not answer in time";
