//! Commands: what the coordinator asks one agent to do.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::version::schema_tag;
use crate::{CommandId, InstanceId, RunId, SchemaTag, ServiceName};

// v2: delivered on `<prefix>.command.<service>.<instance>` live and by a catch-up read of the
// last command per agent, instead of v1's work queue and durable consumer per agent
// (docs/wire-protocol.md, section 3). The body is v1's; the delivery contract is not.
schema_tag!(CommandSchema, "flotilla.command.v2");

/// The command schema before per-agent delivery: run records written by older coordinators hold
/// commands under it (the same fields), and read as v2.
pub const LEGACY_COMMAND_SCHEMA: &str = "flotilla.command.v1";

/// One command, addressed to one agent (service and instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Command {
    pub schema: CommandSchema,
    /// Unique per command; the agent applies it at most once.
    pub command_id: CommandId,
    /// The run this command belongs to; also the correlation ID.
    pub run_id: RunId,
    pub service: ServiceName,
    pub instance: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub issued_at: OffsetDateTime,
    /// The agent refuses the command after this instant.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub expires_at: OffsetDateTime,
    pub action: Action,
}

impl SchemaTag for Command {
    const SCHEMA: &'static str = CommandSchema::VALUE;
}

/// What the agent is asked to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Back the service up, apply the steps, restart, validate; roll back on any failure.
    Migrate {
        steps: Vec<Step>,
        /// Health checks after the migration; empty means the agent's configured check.
        #[serde(default)]
        health: Vec<HttpCheck>,
        /// Regression limits against the baseline taken before the change.
        #[serde(default)]
        gates: Gates,
        /// What must hold before anything changes; otherwise the command is refused.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preconditions: Vec<Precondition>,
        /// Functional checks after the health checks: HTTP requests, TCP connects, commands
        /// (a job run for batch services).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        checks: Vec<Check>,
        /// Small measured workloads, run before the change (the baseline) and after it, and
        /// gated on regression (latency, duration, throughput).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        workloads: Vec<Workload>,
    },
    /// A dry run of a migrate command with these fields: the same precheck (paths, allowed
    /// programs, placeholders, preconditions, free space for the backup, health now), then each
    /// step played against the current files in memory. Read-only: no backup, no write, no
    /// restart, no journal entry; the result's `preview` says what each step would do.
    Preview {
        steps: Vec<Step>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        preconditions: Vec<Precondition>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        checks: Vec<Check>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        workloads: Vec<Workload>,
    },
    /// Restore the backup taken by an earlier migrate command of the same run.
    Rollback { migration: CommandId },
    /// The run is closed: drop the backup of an earlier migrate command.
    Finalize { migration: CommandId },
    /// The cross-service stage, after the fleet is migrated: run `checks` (e.g. reach other
    /// services' endpoints) and report the keys of `config_files` — names and a fingerprint,
    /// never values — and which keys hold a literal secret; and, for each of `settings`, a
    /// digest of its value, never the value. Changes nothing.
    Inspect {
        #[serde(default)]
        checks: Vec<Check>,
        #[serde(default)]
        config_files: Vec<String>,
        /// Settings that must agree across the fleet, each where this service keeps it.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        settings: Vec<SettingProbe>,
        /// During a pause between waves: validate this migration of the run again, as its
        /// validate phase did but without a restart: the service's memory now against the
        /// baseline its precheck took, under the migration's own gates, and its functional
        /// checks run again. The verdicts come back in the inspection's `gates` and `checks`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revalidate: Option<CommandId>,
    },
}

/// Where one service keeps a setting that must hold the same value across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SettingProbe {
    /// The setting's name in the plan (the same across services).
    pub name: String,
    /// The configuration file, relative to the service root.
    pub file: String,
    /// The key in it: dotted for nested tables (`db.url`), or a `.env`/`key=value` name.
    pub key: String,
}

/// One declared change. Paths are relative to the service root and never leave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Write a file. `${secret:NAME}` and `${var:NAME}` placeholders are resolved by the agent.
    /// The template is `content`, or the plan file `source` names (then `content` is empty).
    WriteFile {
        path: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        content: String,
        /// A template file shipped with the plan, fetched by the agent from the plan-files
        /// bucket and checked against its digest before use; rendered like `content`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<PlanFile>,
        /// Unix permission bits, e.g. `0o600`; the default keeps an existing file's mode or
        /// uses 0o644.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
    },
    /// Replace every occurrence of `find` with `replace`; fails when `find` does not occur.
    ReplaceText {
        path: String,
        find: String,
        replace: String,
    },
    /// Delete a file, or a directory with everything under it.
    Delete { path: String },
    /// Run a program from the agent's allow-list, in the service root, without a shell.
    RunCommand {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default = "default_command_timeout_ms")]
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
    /// Restart the service now (the migration always restarts it once after the last step).
    Restart,
}

/// A file shipped with the plan: stored in the plan-files bucket under its digest, once per run.
/// A plan names it by its path alone (`source = "templates/ingest.toml.tmpl"`); the coordinator
/// fills in the digest and the size before any command carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The path relative to the plan file, as the plan names it: for messages only.
    pub path: String,
    /// `blake3:<64 hex digits>` of the content: the object's name in the bucket, and what the
    /// agent checks the fetched bytes against. Signed with the command, it binds the content.
    pub digest: String,
    /// The content's length in bytes.
    pub size: u64,
}

/// The forms a [`PlanFile`] is written in: a path (in a plan), or the whole object (on the
/// wire).
#[derive(Deserialize)]
#[serde(untagged)]
enum PlanFileForm {
    Path(String),
    #[serde(rename_all = "snake_case")]
    Full {
        path: String,
        #[serde(default)]
        digest: String,
        #[serde(default)]
        size: u64,
    },
}

impl<'de> Deserialize<'de> for PlanFile {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match PlanFileForm::deserialize(deserializer)? {
            PlanFileForm::Path(path) => PlanFile {
                path,
                digest: String::new(),
                size: 0,
            },
            PlanFileForm::Full { path, digest, size } => PlanFile { path, digest, size },
        })
    }
}

fn default_command_timeout_ms() -> u64 {
    60_000
}

/// A condition checked in precheck, before anything changes. Paths are relative to the service
/// root.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Precondition {
    /// The path exists.
    FileExists { path: String },
    /// The path does not exist.
    FileAbsent { path: String },
    /// The file holds `text`.
    FileContains { path: String, text: String },
}

/// A functional check, run during validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Check {
    /// An HTTP request with an expected answer.
    Http(HttpCheck),
    /// A TCP connect to `address` (`host:port`) succeeds within `timeout_ms`.
    Tcp {
        address: String,
        #[serde(default = "default_check_timeout_ms")]
        timeout_ms: u64,
    },
    /// A program from the agent's allow-list, run in the service root without a shell, exits
    /// with `expect_exit` within `timeout_ms`, optionally faster than `max_duration_ms` and with
    /// `stdout_contains` in its output. This is how batch services (training, preprocess) are
    /// validated: by running the job.
    Command {
        program: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        expect_exit: i32,
        #[serde(default = "default_check_timeout_ms")]
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdout_contains: Option<String>,
    },
    /// The service's own log proves it took part in the run: the file at `path` (inside the
    /// service root, or an absolute path such as a log directory) holds `contains` — by default
    /// the run's correlation ID, which every request the agent makes carries — within
    /// `timeout_ms`. Only the verdict leaves the agent, never the log's content.
    Log {
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contains: Option<String>,
        #[serde(default = "default_check_timeout_ms")]
        timeout_ms: u64,
    },
}

impl Check {
    /// The check's type as written in plans.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Http(_) => "http",
            Check::Tcp { .. } => "tcp",
            Check::Command { .. } => "command",
            Check::Log { .. } => "log",
        }
    }
}

/// An HTTP check: `method` (default GET) `url` until it answers `expect_status` (and holds
/// `body_contains`, when set) or `timeout_ms` has passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// The URL to check; absent means the health URL in the agent's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `GET` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A request body (sent with `POST`/`PUT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    #[serde(default = "default_check_timeout_ms")]
    pub timeout_ms: u64,
    /// Request headers, with placeholders (`"X-Request-Id" = "${run:id}"`): how the service's
    /// own correlation header is spoken. They replace the agent's own headers of the same name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Regression gates: the migrated service may be at most this much slower to start and this
/// much larger in memory than before (T006: +20 % startup, +15 % memory). A gate trips only when
/// both the relative limit and the absolute slack are exceeded, so that a 50 ms start that
/// jitters by 12 ms does not roll a fleet back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(default = "default_startup_pct")]
    pub startup_max_increase_pct: f64,
    #[serde(default = "default_startup_slack_ms")]
    pub startup_slack_ms: u64,
    #[serde(default = "default_memory_pct")]
    pub memory_max_increase_pct: f64,
    #[serde(default = "default_memory_slack_bytes")]
    pub memory_slack_bytes: u64,
    /// Workloads: the p95 latency of an HTTP workload, or the duration of a job, may grow by at
    /// most this much (and by more than `latency_slack_ms`).
    #[serde(default = "default_latency_pct")]
    pub latency_p95_max_increase_pct: f64,
    #[serde(default = "default_latency_slack_ms")]
    pub latency_slack_ms: u64,
    /// Workloads: the throughput a job reports may fall by at most this much.
    #[serde(default = "default_throughput_pct")]
    pub throughput_max_decrease_pct: f64,
    /// A workload with fewer successful samples than this is inconclusive.
    #[serde(default = "default_min_samples")]
    pub min_samples: u32,
    /// What an inconclusive workload gate means: `fail` (roll back) or `warn` (report only).
    #[serde(default)]
    pub inconclusive: Inconclusive,
}

/// What an inconclusive gate (too few samples) means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Inconclusive {
    /// Treat it as failed: no proof of no regression, no migration.
    #[default]
    Fail,
    /// Report it and go on.
    Warn,
}

/// A small measured workload, run against the service before and after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// `requests` HTTP requests at `concurrency`: latency p50/p95/p99 and errors. The p95 is
    /// gated.
    Http {
        name: String,
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Request headers, with placeholders, as on an HTTP check.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        #[serde(default = "default_requests")]
        requests: u32,
        #[serde(default = "default_concurrency")]
        concurrency: u32,
    },
    /// One run of a job (a program from the allow-list, in the service root): its duration is
    /// gated, and so is the throughput it prints when `throughput_field` names a number in the
    /// JSON object on its last output line.
    Job {
        name: String,
        program: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default = "default_job_timeout_ms")]
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        throughput_field: Option<String>,
    },
}

impl Workload {
    /// The workload's name, as given in the plan.
    pub fn name(&self) -> &str {
        match self {
            Workload::Http { name, .. } | Workload::Job { name, .. } => name,
        }
    }
}

fn default_requests() -> u32 {
    50
}

fn default_concurrency() -> u32 {
    4
}

fn default_job_timeout_ms() -> u64 {
    120_000
}

fn default_latency_pct() -> f64 {
    20.0
}

fn default_latency_slack_ms() -> u64 {
    5
}

fn default_throughput_pct() -> f64 {
    15.0
}

fn default_min_samples() -> u32 {
    10
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            startup_max_increase_pct: default_startup_pct(),
            startup_slack_ms: default_startup_slack_ms(),
            memory_max_increase_pct: default_memory_pct(),
            memory_slack_bytes: default_memory_slack_bytes(),
            latency_p95_max_increase_pct: default_latency_pct(),
            latency_slack_ms: default_latency_slack_ms(),
            throughput_max_decrease_pct: default_throughput_pct(),
            min_samples: default_min_samples(),
            inconclusive: Inconclusive::default(),
        }
    }
}

fn default_startup_pct() -> f64 {
    20.0
}

fn default_startup_slack_ms() -> u64 {
    100
}

fn default_memory_pct() -> f64 {
    15.0
}

fn default_memory_slack_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_expect_status() -> u16 {
    200
}

fn default_check_timeout_ms() -> u64 {
    10_000
}

impl Step {
    /// The step's name as written in plans (`write_file`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Step::WriteFile { .. } => "write_file",
            Step::ReplaceText { .. } => "replace_text",
            Step::Delete { .. } => "delete",
            Step::RunCommand { .. } => "run_command",
            Step::Restart => "restart",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_file_reads_from_a_path_or_the_whole_object() {
        let from_plan: Step = serde_json::from_str(
            r#"{"action":"write_file","path":"c.toml","source":"templates/c.toml.tmpl"}"#,
        )
        .unwrap();
        let Step::WriteFile {
            source: Some(file),
            content,
            ..
        } = &from_plan
        else {
            panic!("{from_plan:?}")
        };
        assert_eq!(file.path, "templates/c.toml.tmpl");
        assert!(file.digest.is_empty() && content.is_empty());
        let wire = PlanFile {
            path: "t".into(),
            digest: "blake3:00".into(),
            size: 3,
        };
        let text = serde_json::to_string(&wire).unwrap();
        assert_eq!(text, r#"{"path":"t","digest":"blake3:00","size":3}"#);
        assert_eq!(serde_json::from_str::<PlanFile>(&text).unwrap(), wire);
    }
}
