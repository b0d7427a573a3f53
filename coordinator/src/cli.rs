//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::settings::Settings;

mod overrides;

/// Flotilla migrates a fleet of services safely: every agent backs its service up, applies the
/// plan, validates it and rolls back by itself on failure.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version = crate::VERSION, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub flags: GlobalFlags,
    #[command(subcommand)]
    pub command: CommandKind,
    /// Every option, from defaults, the `--config` file, `FLOTILLA_…` variables and the flags
    /// (set by [`parse_args`]).
    #[arg(skip)]
    pub settings: Settings,
    /// `settings.output`, which every command reads.
    #[arg(skip)]
    pub output: OutputFormat,
    /// The process's telemetry, attached to NATS once connected (set by `main`, not an option).
    #[arg(skip)]
    pub telemetry: TelemetryHandle,
}

/// The options every command takes. Each is also a key of the `--config` file and a
/// `FLOTILLA_…` variable (shown in brackets), see docs/coordinator-config.md; a flag wins over both.
/// `--help` lists them under their own headings, after a command's own options.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalFlags {
    /// More logs on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, when set, wins).
    #[arg(long, short, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only errors on stderr's log (RUST_LOG, when set, wins).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// NATS server URL, or several separated by commas (all are tried) [default:
    /// nats://127.0.0.1:4222] [key: nats.url].
    #[arg(
        long,
        global = true,
        value_name = "URL[,URL…]",
        env = "FLOTILLA_NATS__URL",
        hide_env_values = true
    )]
    pub nats_url: Option<String>,
    /// Subject prefix shared with the agents [default: flotilla] [key: nats.prefix].
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS__PREFIX",
        hide_env_values = true
    )]
    pub prefix: Option<String>,
    /// Output format [default: text] [key: output].
    #[arg(
        long,
        short,
        global = true,
        value_enum,
        env = "FLOTILLA_OUTPUT",
        hide_env_values = true
    )]
    pub output: Option<OutputFormat>,
    /// How long to wait for NATS to answer the connection [default: 5s] [key:
    /// nats.connect_timeout].
    #[arg(long, global = true, value_parser = humantime::parse_duration, env = "FLOTILLA_NATS__CONNECT_TIMEOUT", hide_env_values = true)]
    pub connect_timeout: Option<Duration>,
    /// How long to wait for agents to answer discovery [default: 2s] [key: discovery_window].
    #[arg(long, global = true, value_parser = humantime::parse_duration, env = "FLOTILLA_DISCOVERY_WINDOW", hide_env_values = true)]
    pub discovery_window: Option<Duration>,
    /// How long after an agent's last registry refresh discovery stops waiting for it and
    /// `flotilla agents` shows it inactive [default: 30m] [key: agent_inactive_after].
    #[arg(long, global = true, value_parser = humantime::parse_duration, env = "FLOTILLA_AGENT_INACTIVE_AFTER", hide_env_values = true)]
    pub agent_inactive_after: Option<Duration>,
    /// Run against a nats-server older than the supported minimum (not recommended) [key:
    /// nats.allow_old_server].
    #[arg(
        long,
        global = true,
        value_parser = clap::builder::BoolishValueParser::new(), env = "FLOTILLA_NATS__ALLOW_OLD_SERVER",
        hide_env_values = true
    )]
    pub allow_old_server: bool,
    /// How many copies the NATS cluster keeps of every stream and bucket Flotilla creates, 1 to
    /// 5 (never more than the cluster's nodes) [default: 3 on a cluster, 1 on a single server]
    /// [key: nats.replicas].
    #[arg(
        long,
        global = true,
        value_name = "N",
        env = "FLOTILLA_NATS__REPLICAS",
        hide_env_values = true
    )]
    pub replicas: Option<usize>,
    /// The cluster (by name, in a supercluster) that holds the streams and buckets [key:
    /// nats.placement.cluster].
    #[arg(
        long,
        global = true,
        value_name = "CLUSTER",
        env = "FLOTILLA_NATS__PLACEMENT__CLUSTER",
        hide_env_values = true
    )]
    pub placement_cluster: Option<String>,
    /// Only servers with all these tags (their `server_tags`) hold the streams and buckets;
    /// separated by commas [key: nats.placement.tags].
    #[arg(
        long,
        global = true,
        value_name = "TAG[,TAG…]",
        value_delimiter = ',',
        env = "FLOTILLA_NATS__PLACEMENT__TAGS",
        hide_env_values = true
    )]
    pub placement_tags: Vec<String>,
    /// A TOML file of these options (`[nats] url = "…"`, `signing_key = "…"`, …); variables and
    /// flags override it.
    #[arg(long, global = true, env = "FLOTILLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where `verify` (and the migration's correlation check) reads traces: `default` (the
    /// store in NATS), `jaeger=URL` or `tempo=URL` [default: default] [key: trace_backend].
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_TRACE_BACKEND",
        hide_env_values = true
    )]
    pub trace_backend: Option<crate::verify::Backend>,
    /// How long to wait for late telemetry before judging correlation [default: 15s] [key: verify_wait].
    #[arg(long, global = true, value_parser = humantime::parse_duration, env = "FLOTILLA_VERIFY_WAIT", hide_env_values = true)]
    pub verify_wait: Option<Duration>,
    /// Finalize a migration even when its correlation check fails (it is still reported) [key: no_verify].
    #[arg(
        long,
        global = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        env = "FLOTILLA_NO_VERIFY",
        hide_env_values = true
    )]
    pub no_verify: bool,
    /// The coordinator's Ed25519 signing key (from `flotilla keys generate`); every command is
    /// signed with it. Agents with `security.trusted_keys` refuse unsigned commands [key: signing_key].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_SIGNING_KEY",
        hide_env_values = true
    )]
    pub signing_key: Option<PathBuf>,
    /// Agents' result keys to trust, as `service/instance=<public key>` (the key an agent
    /// announces in `flotilla agents`, and writes to `<state_dir>/agent.key.pub`); repeat an
    /// agent with two keys during a rotation. Without any, each run trusts the key each agent
    /// announces when it starts (see docs/security.md); the variable separates them with commas [key: trusted_agent_keys].
    #[arg(
        long,
        global = true,
        value_name = "AGENT=KEY",
        value_delimiter = ',',
        env = "FLOTILLA_TRUSTED_AGENT_KEYS",
        hide_env_values = true
    )]
    pub trusted_agent_keys: Vec<String>,
    /// A tracing UI's page of one trace, `{trace_id}` standing for the run's trace ID: the HTML
    /// report links the run's trace there (e.g. `http://jaeger:16686/trace/{trace_id}`) [key:
    /// report.trace_url].
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "FLOTILLA_REPORT__TRACE_URL",
        hide_env_values = true
    )]
    pub trace_url: Option<String>,
    /// Last: the flattened group's heading would otherwise carry over to the flags after it.
    #[command(flatten)]
    pub auth: AuthArgs,
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

/// The coordinator's NATS identity (the `[nats.auth]` keys, `FLOTILLA_NATS__AUTH__…`). Secrets
/// come from files (or `FLOTILLA_NATS__AUTH__PASSWORD` in the environment, or `password` in the
/// file), never from the command line.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Global options (NATS identity)")]
pub struct AuthArgs {
    /// NATS user (with a password from --nats-password-file or FLOTILLA_NATS__AUTH__PASSWORD)
    /// [key: nats.auth.user].
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS__AUTH__USER",
        hide_env_values = true
    )]
    pub nats_user: Option<String>,
    /// File holding the NATS password [key: nats.auth.password_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__PASSWORD_FILE",
        hide_env_values = true
    )]
    pub nats_password_file: Option<PathBuf>,
    /// File holding an nkey seed [key: nats.auth.nkey_seed_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__NKEY_SEED_FILE",
        hide_env_values = true
    )]
    pub nats_nkey_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT and seed) [key: nats.auth.credentials_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__CREDENTIALS_FILE",
        hide_env_values = true
    )]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate of the NATS server (requires TLS) [key: nats.auth.tls_ca_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__TLS_CA_FILE",
        hide_env_values = true
    )]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS [key: nats.auth.tls_cert_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__TLS_CERT_FILE",
        hide_env_values = true
    )]
    pub nats_tls_cert: Option<PathBuf>,
    /// The client certificate's private key [key: nats.auth.tls_key_file].
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "FLOTILLA_NATS__AUTH__TLS_KEY_FILE",
        hide_env_values = true
    )]
    pub nats_tls_key: Option<PathBuf>,
    /// Private reply-inbox prefix (default `_INBOX_<user>` when a user is given,
    /// `_INBOX_coordinator` with a certificate, nkey or creds identity) [key:
    /// nats.auth.inbox_prefix].
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_NATS__AUTH__INBOX_PREFIX",
        hide_env_values = true
    )]
    pub nats_inbox_prefix: Option<String>,
}

/// The coordinator's reply-inbox prefix in the shipped server configurations.
const DEFAULT_COORDINATOR_INBOX: &str = "_INBOX_coordinator";

/// The credentials to connect with: `auth` with the inbox prefix derived when none is given.
pub fn credentials(auth: &flotilla_bus::Credentials) -> flotilla_bus::Credentials {
    let mut credentials = auth.clone();
    credentials.inbox_prefix = auth.inbox_prefix.clone().or_else(|| match &auth.user {
        Some(user) => Some(format!("_INBOX_{user}")),
        // A certificate, nkey or creds identity has no user name to derive the prefix
        // from: the shipped configurations call the coordinator so.
        None if auth.tls_cert_file.is_some()
            || auth.nkey_seed_file.is_some()
            || auth.credentials_file.is_some() =>
        {
            Some(DEFAULT_COORDINATOR_INBOX.to_owned())
        }
        None => None,
    });
    credentials
}

/// Output formats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Human-readable lines and tables.
    #[default]
    Text,
    /// One JSON document on stdout.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum CommandKind {
    /// Create (or check) the streams and the bucket the fleet needs, before the agents start:
    /// reports each as created, found, or found with other settings (left as they are).
    #[command(
        after_help = "Examples:\n  flotilla setup --output json\n  flotilla setup --replicas 3 --update"
    )]
    Setup {
        /// Change the replica count and placement of existing streams and buckets that differ
        /// from the wanted ones, in place (JetStream keeps every message); any other
        /// difference is still only reported.
        #[arg(long)]
        update: bool,
    },
    /// List the live agents (with --all, also the registered agents that did not answer); none
    /// answering exits 3. `agents forget` removes decommissioned agents from the registry.
    #[command(
        after_help = "Examples:\n  flotilla agents --output json\n  flotilla agents --service inference,ingest\n  flotilla agents -l region=eu,tier=canary\n  flotilla agents --all\n  flotilla agents forget inference/a1\n  flotilla agents forget --inactive",
        args_conflicts_with_subcommands = true
    )]
    Agents {
        #[command(subcommand)]
        action: Option<AgentsAction>,
        /// Also the registered agents that did not answer: `silent` (refreshed lately, waited
        /// for) or `inactive` (not refreshed within --agent-inactive-after, not waited for).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: AgentFilter,
        /// Only the agents whose labels match, in kubectl's `-l` syntax (`region=eu,tier!=canary`);
        /// `service` and `instance` select as labels. Repeated: all must match.
        #[arg(short = 'l', long, value_name = "SELECTOR")]
        selector: Vec<crate::selector::Selector>,
    },
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
        /// Migrate only the agents whose labels match, in kubectl's `-l` syntax
        /// (`region=eu,tier!=canary`, `zone in (a,b)`, `zone notin (c)`, `gpu`, `!gpu`);
        /// `service` and `instance` select as labels (`--limit service=ingest`). Repeated: all
        /// must match.
        #[arg(short = 'l', long, visible_alias = "limit", value_name = "SELECTOR")]
        selector: Vec<crate::selector::Selector>,
        #[command(flatten)]
        files: ReportFiles,
    },
    /// Work with plan files.
    Plan {
        #[command(subcommand)]
        action: PlanAction,
    },
    /// List the recorded runs (from the run store in NATS).
    #[command(
        after_help = "Examples:\n  flotilla runs --limit 10\n  flotilla runs --status running,failed --output json"
    )]
    Runs {
        /// Show at most N runs (the newest).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only runs with this status (repeat, or separate with commas): running, succeeded,
        /// succeeded_with_failures, failed, rolled_back, rehearsed, awaiting_finalize, paused,
        /// cancelled, unresolved.
        #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = parse_run_status)]
        status: Vec<crate::store::RunStatus>,
    },
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
    /// End the pause after a wave now: a run `paused` (`pause = "manual"`) is taken over and its
    /// next waves driven; a bake (`pause = "10m"`) is ended early by its coordinator.
    #[command(after_help = "Example:\n  flotilla promote 019abc")]
    Promote {
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
        #[command(flatten)]
        filter: AgentFilter,
    },
    /// Write the man pages (flotilla.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// What `flotilla agents` does besides listing.
#[derive(Debug, Subcommand)]
pub enum AgentsAction {
    /// Remove agents from the agent registry (decommissioned ones: discovery waits for a
    /// registered agent until it is inactive). A live agent registers again at its next refresh.
    #[command(
        after_help = "Examples:\n  flotilla agents forget inference/a1 ingest/b\n  flotilla agents forget --inactive"
    )]
    Forget {
        /// The agents, as SERVICE/INSTANCE.
        #[arg(value_name = "SERVICE/INSTANCE", required_unless_present = "inactive")]
        agents: Vec<String>,
        /// Every agent whose entry is inactive (not refreshed within --agent-inactive-after) and
        /// that does not answer presence.
        #[arg(long)]
        inactive: bool,
    },
}

/// Which agents (or a run's services) a listing shows.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentFilter {
    /// Only these services (repeat, or separate with commas).
    #[arg(long, value_name = "SERVICE", value_delimiter = ',')]
    pub service: Vec<String>,
}

// === impl AgentFilter ===

impl AgentFilter {
    /// Whether `service` is shown. The hook for label selectors: they narrow this further.
    pub fn matches(&self, service: &str) -> bool {
        self.service.is_empty() || self.service.iter().any(|s| s == service)
    }
}

/// A run status as the run record's JSON spells it (`rolled_back`, …).
fn parse_run_status(text: &str) -> Result<crate::store::RunStatus, String> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).map_err(|_| {
        let known: Vec<&str> = crate::store::RunStatus::ALL
            .iter()
            .map(|s| s.as_str())
            .collect();
        format!("unknown status {text:?} (known: {})", known.join(", "))
    })
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

/// The crates whose logs `-vv` and `-vvv` open up further than the libraries'.
const OUR_CRATES: &[&str] = &[
    "flotilla",
    "flotilla_coordinator",
    "flotilla_bus",
    "flotilla_telemetry",
    "flotilla_tracestore",
];

/// The stderr log filter when `RUST_LOG` is unset: `-q` errors only, by default warnings, `-v`
/// info, `-vv` and `-vvv` debug and trace of Flotilla's own crates.
pub fn log_filter(flags: &GlobalFlags) -> String {
    if flags.quiet {
        return "error".to_owned();
    }
    let ours = |level: &str| {
        OUR_CRATES
            .iter()
            .map(|c| format!(",{c}={level}"))
            .collect::<String>()
    };
    match flags.verbose {
        0 => "warn".to_owned(),
        1 => "info".to_owned(),
        2 => format!("info{}", ours("debug")),
        _ => format!("debug{}", ours("trace")),
    }
}

/// Parses the command line and assembles the settings beneath it: the `--config` file (or
/// `FLOTILLA_CONFIG`), then `FLOTILLA_…` variables, then flags. Deprecated spellings warn on
/// stderr.
pub fn parse_args(args: Vec<std::ffi::OsString>) -> Result<Cli, CliError> {
    use clap::Parser;
    let mut cli = Cli::try_parse_from(args)?;
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let settings = crate::settings::assemble(
        cli.flags.config.as_deref(),
        &env,
        cli.flags.overrides(),
        &mut |warning| eprintln!("warning: {warning}"),
    )?;
    cli.output = settings.output;
    cli.settings = settings;
    Ok(cli)
}

/// Why the command line could not be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Clap's own (also `--help` and `--version`, which are not errors to the user).
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
}
