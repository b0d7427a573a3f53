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
    #[arg(
        long,
        short,
        global = true,
        env = "FLOTILLA_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Text
    )]
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
    /// A TOML file of defaults for these options (`nats_url = "…"`, `signing_key = "…"`,
    /// `trace_backend = "…"`, …); flags and `FLOTILLA_…` variables override it.
    #[arg(long, global = true, env = "FLOTILLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Where `verify` (and the migration's correlation check) reads traces: `default` (the
    /// store in NATS), `jaeger=URL` or `tempo=URL`.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TRACE_BACKEND",
        default_value = "default"
    )]
    pub trace_backend: crate::verify::Backend,
    /// How long to wait for late telemetry before judging correlation.
    #[arg(long, global = true, default_value = "15s", value_parser = humantime::parse_duration)]
    pub verify_wait: Duration,
    /// Finalize a migration even when its correlation check fails (it is still reported).
    #[arg(long, global = true)]
    pub no_verify: bool,
    /// The coordinator's Ed25519 signing key (from `flotilla keys generate`); every command is
    /// signed with it. Agents with `security.trusted_keys` refuse unsigned commands.
    #[arg(long, global = true, env = "FLOTILLA_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Agents' result keys to trust, as `service/instance=<public key>` (the key an agent
    /// announces in `flotilla agents`, and writes to `<state_dir>/agent.key.pub`); repeat an
    /// agent with two keys during a rotation. Without any, each run trusts the key each agent
    /// announces when it starts (see docs/security.md).
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TRUSTED_AGENT_KEYS",
        value_name = "AGENT=KEY",
        value_delimiter = ','
    )]
    pub trusted_agent_keys: Vec<String>,
    #[command(subcommand)]
    pub command: CommandKind,
    /// The process's telemetry, attached to NATS once connected (set by `main`, not an option).
    #[arg(skip)]
    pub telemetry: TelemetryHandle,
}

/// A shared handle on the process's telemetry pipeline.
#[derive(Clone, Default)]
pub struct TelemetryHandle(pub Option<std::sync::Arc<flotilla_telemetry::TelemetryGuard>>);

impl std::fmt::Debug for TelemetryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TelemetryHandle(active)"
        } else {
            "TelemetryHandle(none)"
        })
    }
}

/// The coordinator's NATS identity. Secrets come from files (or `FLOTILLA_NATS_PASSWORD` in the
/// environment), never from the command line.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AuthArgs {
    /// NATS user (with a password from --nats-password-file or FLOTILLA_NATS_PASSWORD).
    #[arg(long, global = true, env = "FLOTILLA_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS password.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub nats_password_file: Option<PathBuf>,
    /// File holding an nkey seed.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS_NKEY_FILE",
        value_name = "FILE"
    )]
    pub nats_nkey_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT and seed).
    #[arg(long, global = true, env = "FLOTILLA_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate of the NATS server (requires TLS).
    #[arg(long, global = true, env = "FLOTILLA_NATS_TLS_CA", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS_TLS_CERT",
        value_name = "FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS_TLS_KEY",
        value_name = "FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// Private reply-inbox prefix (default `_INBOX_<user>` when a user is given,
    /// `_INBOX_coordinator` with a certificate, nkey or creds identity).
    #[arg(long, global = true, env = "FLOTILLA_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

/// The coordinator's reply-inbox prefix in the shipped server configurations.
const DEFAULT_COORDINATOR_INBOX: &str = "_INBOX_coordinator";

impl AuthArgs {
    /// The credentials to connect with.
    pub fn credentials(&self) -> flotilla_bus::Credentials {
        flotilla_bus::Credentials {
            user: self.nats_user.clone(),
            password: std::env::var("FLOTILLA_NATS_PASSWORD").ok(),
            password_file: self.nats_password_file.clone(),
            nkey_seed_file: self.nats_nkey_file.clone(),
            credentials_file: self.nats_creds.clone(),
            tls_ca_file: self.nats_tls_ca.clone(),
            tls_cert_file: self.nats_tls_cert.clone(),
            tls_key_file: self.nats_tls_key.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone().or_else(|| {
                match &self.nats_user {
                    Some(user) => Some(format!("_INBOX_{user}")),
                    // A certificate, nkey or creds identity has no user name to derive the
                    // prefix from: the shipped configurations call the coordinator so.
                    None if self.nats_tls_cert.is_some()
                        || self.nats_nkey_file.is_some()
                        || self.nats_creds.is_some() =>
                    {
                        Some(DEFAULT_COORDINATOR_INBOX.to_owned())
                    }
                    None => None,
                }
            }),
        }
    }
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
    /// Create (or check) the streams and the bucket the fleet needs, before the agents start:
    /// reports each as created, found, or found with other settings (left as they are).
    #[command(after_help = "Example:\n  flotilla setup --output json")]
    Setup,
    /// List the live agents; none answering exits 3.
    #[command(after_help = "Example:\n  flotilla agents --output json")]
    Agents,
    /// Run a migration plan over the fleet, wave by wave.
    #[command(
        after_help = "Examples:\n  flotilla migrate deploy/demo/plan.toml\n  flotilla migrate plan.toml --dry-run\n  flotilla migrate plan.toml --rehearse --report-md guide.md\n  flotilla migrate plan.toml --no-finalize\n  flotilla migrate plan.toml --output json --junit report.xml > report.json"
    )]
    Migrate {
        /// The plan file (TOML).
        plan: PathBuf,
        /// Ask every agent to run the precheck and show what each step would do (diffs,
        /// deletions, commands; secrets masked); change nothing. Exits as the real run would.
        #[arg(long, conflicts_with = "rehearse")]
        dry_run: bool,
        /// Migrate, validate, then roll every service back and prove it healthy: tests the
        /// rollback of every service and leaves the fleet as it was.
        #[arg(long)]
        rehearse: bool,
        /// Migrate and prove the fleet (cross-service and correlation checks), then keep every
        /// backup: the run waits `awaiting_finalize` for `flotilla finalize RUN` or
        /// `flotilla rollback RUN` (the plan's `finalize = "manual"` does the same).
        #[arg(long, conflicts_with_all = ["rehearse", "dry_run"])]
        no_finalize: bool,
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
    /// Finalize a run awaiting its decision (`migrate --no-finalize`): every agent drops its
    /// backup and the run succeeds. Sends nothing else: the run was proven before it paused.
    #[command(after_help = "Example:\n  flotilla finalize 019abc")]
    Finalize {
        /// Run ID, or a unique prefix of it.
        run: String,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Ask the coordinator driving a run to stop dispatching; the run stays resumable.
    #[command(after_help = "Example:\n  flotilla cancel 019abc")]
    Cancel {
        /// Run ID, or a unique prefix of it.
        run: String,
    },
    /// Prove a run's correlation: read its trace back and check that every service of the run
    /// sent spans and logs carrying the run's trace and correlation IDs (exit 0 only then).
    #[command(
        after_help = "Examples:\n  flotilla verify\n  flotilla verify 019abc --output json\n  flotilla verify 019abc --trace-backend jaeger=http://jaeger:16686"
    )]
    Verify {
        /// Run ID, or a unique prefix of it (default: the latest run).
        run: Option<String>,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  flotilla completions bash > /etc/bash_completion.d/flotilla\n  flotilla completions zsh > \"${fpath[1]}/_flotilla\"\n  flotilla completions fish > ~/.config/fish/completions/flotilla.fish"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage the coordinator's command-signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Print a run's report: a table, JSON, Markdown (the migration guide), JUnit XML, or a
    /// self-contained HTML page with the run's timeline and charts.
    #[command(
        after_help = "Examples:\n  flotilla report 019abc --format md > guide.md\n  flotilla report --format junit > report.xml\n  flotilla report 019abc --format html > report.html\n  flotilla report 019abc --output json"
    )]
    Report {
        /// Run ID, or a unique prefix of it (default: the latest run).
        run: Option<String>,
        /// The report's format (default: `md`, or `json` with `--output json`).
        #[arg(long, value_enum)]
        format: Option<ReportFormat>,
    },
    /// Watch a run live, from any machine: its waves and one row per service with its phase,
    /// elapsed time, gate figures and outcome. Exits when the run ends, with the run's exit code.
    /// Plain lines when stdout is not a terminal; one JSON object per event with --output json.
    #[command(
        after_help = "Examples:\n  flotilla watch\n  flotilla watch 019abc\n  flotilla watch --wait 5m --output json"
    )]
    Watch {
        /// Run ID, or a unique prefix of it (default: the running run, or the next one to start).
        run: Option<String>,
        /// With no run named and none running: how long to wait for one to start.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
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
    /// Also write the HTML report (timeline, charts, checks, guide; one self-contained file).
    #[arg(long, value_name = "FILE")]
    pub report_html: Option<PathBuf>,
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Md,
    Junit,
    Html,
}

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Generate an Ed25519 key pair: FILE (the private key, mode 0600) and FILE.pub (the public
    /// key for the agents' `security.trusted_keys`).
    #[command(
        after_help = "Example:\n  flotilla keys generate --out /etc/flotilla/coordinator.key"
    )]
    Generate {
        /// Where to write the private key; refuses to overwrite.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// Plan subcommands.
#[derive(Debug, Subcommand)]
pub enum PlanAction {
    /// Check a plan file without connecting anywhere (keys, waves, paths, placeholders); show
    /// its waves.
    #[command(after_help = "Example:\n  flotilla plan check deploy/demo/plan.toml")]
    Check { plan: PathBuf },
}

const EXIT_CODES: &str = "Exit codes:
  0  every service succeeded (with --no-finalize: migrated and proven, awaiting finalize)
  1  a service failed or was refused, or a cross-service check failed (in a rehearsal too);
     the fleet was rolled back (or left, per the plan)
  2  bad input (arguments, plan); nothing changed
  3  pre-flight failed (a service has no live, compatible agent; `agents`: none answered;
     `setup`: a stream or bucket has other settings); nothing changed
  4  NATS unreachable or unusable
  5  a rollback failed: a service needs a human
  6  an agent did not answer in time (or a command was not delivered)
  7  the run was cancelled; `flotilla resume RUN` finishes it";

/// Parses the command line, with the defaults of a `--config` file (or `FLOTILLA_CONFIG`)
/// applied beneath flags and environment variables.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    if let Some(path) = config_path(&args) {
        let invalid = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, message + "\n")
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read configuration {}: {e}", path.display())))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            invalid(format!(
                "invalid configuration {}: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        let known: Vec<String> = command
            .get_arguments()
            .filter(|a| a.is_global_set() && a.get_id() != "config")
            .map(|a| a.get_id().to_string())
            .collect();
        for (key, value) in table {
            let id = key.replace('-', "_");
            if !known.contains(&id) {
                return Err(invalid(format!(
                    "invalid configuration {}: unknown key {key:?} (known: {})",
                    path.display(),
                    known.join(", ")
                )));
            }
            let value = match value {
                toml::Value::String(s) => s,
                other => other.to_string(),
            };
            command = command.mut_arg(id, |arg| arg.default_value(value));
        }
    }
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// `--config FILE`, `--config=FILE`, or `FLOTILLA_CONFIG`.
fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("FLOTILLA_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}
