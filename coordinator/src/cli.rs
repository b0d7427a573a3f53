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
    /// Human-readable lines and tables.
    Text,
    /// One JSON document on stdout.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum CommandKind {
    /// List the live agents.
    #[command(after_help = "Example:\n  flotilla agents --output json")]
    Agents,
    /// Run a migration plan over the fleet, wave by wave.
    #[command(
        after_help = "Examples:\n  flotilla migrate deploy/demo/plan.toml\n  flotilla migrate plan.toml --dry-run\n  flotilla migrate plan.toml --rehearse --report-md guide.md\n  flotilla migrate plan.toml --output json --junit report.xml > report.json"
    )]
    Migrate {
        /// The plan file (TOML).
        plan: PathBuf,
        /// Show the waves, gates and what each agent would do; change nothing.
        #[arg(long, conflicts_with = "rehearse")]
        dry_run: bool,
        /// Migrate, validate, then roll every service back and prove it healthy: tests the
        /// rollback of every service and leaves the fleet as it was.
        #[arg(long)]
        rehearse: bool,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        action: PlanAction,
    },
    /// List the recorded runs (from the run store in NATS).
    #[command(after_help = "Example:\n  flotilla runs --output json")]
    Runs,
    /// Show one run: its waves and every service's status (default: the latest run).
    #[command(after_help = "Examples:\n  flotilla status\n  flotilla status 019abc --output json")]
    Status {
        /// Run ID, or a unique prefix of it.
        run: Option<String>,
    },
    /// Finish a run whose coordinator was killed or cancelled; nothing is dispatched twice.
    #[command(after_help = "Example:\n  flotilla resume 019abc")]
    Resume {
        /// Run ID, or a unique prefix of it.
        run: String,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Restore the services of a run from their backups, latest wave first.
    #[command(
        after_help = "Examples:\n  flotilla rollback 019abc\n  flotilla rollback 019abc --service inference"
    )]
    Rollback {
        /// Run ID, or a unique prefix of it.
        run: String,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Ask the coordinator driving a run to stop dispatching; the run stays resumable.
    #[command(after_help = "Example:\n  flotilla cancel 019abc")]
    Cancel {
        /// Run ID, or a unique prefix of it.
        run: String,
    },
    /// Print a run's report: a table, JSON, Markdown (the migration guide) or JUnit XML.
    #[command(
        after_help = "Examples:\n  flotilla report 019abc --format md > guide.md\n  flotilla report --format junit > report.xml"
    )]
    Report {
        /// Run ID, or a unique prefix of it (default: the latest run).
        run: Option<String>,
        #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
        format: ReportFormat,
    },
}

/// Where to write reports besides the terminal.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReportFiles {
    /// Also write the Markdown report (the migration guide) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report_md: Option<PathBuf>,
    /// Also write a JUnit XML report to FILE.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Md,
    Junit,
}

/// Plan subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Check a plan file without connecting anywhere; show its waves.
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
  6  an agent did not answer in time (or a command was not delivered)
  7  the run was cancelled; `flotilla resume RUN` finishes it";
