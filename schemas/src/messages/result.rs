//! Results: the one terminal message per command.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::version::schema_tag;
use crate::{Command, CommandId, InstanceId, Phase, PhaseStatus, RunId, SchemaTag, ServiceName};

schema_tag!(ResultSchema, "flotilla.result.v1");

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Migrated and validated.
    Succeeded,
    /// Something failed and the service was restored to its backup, healthy.
    RolledBack,
    /// Something failed and the restore failed too: a human must look.
    RollbackFailed,
    /// Refused before anything changed (bad or stale command, failed precondition).
    Refused,
    /// The backup was dropped; the run is closed for this service.
    Finalized,
}

impl Outcome {
    /// The outcome's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::RolledBack => "rolled_back",
            Outcome::RollbackFailed => "rollback_failed",
            Outcome::Refused => "refused",
            Outcome::Finalized => "finalized",
        }
    }
}

/// What one phase did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PhaseReport {
    pub phase: Phase,
    pub status: PhaseStatus,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// When the phase started, by the agent's clock: progress is not stored, so reports draw
    /// the timeline from this. Absent from agents older than live progress (their stored
    /// progress events say it) and from recovered results.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub started_at: Option<OffsetDateTime>,
}

/// Figures measured by the agent, before and after the change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Measurements {
    /// Time from (re)start to healthy before the migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms_after: Option<u64>,
    /// Resident memory of the service (its cgroup, or its processes, each counted once however
    /// many threads it runs), measured as `memory_source` says. The names are kept from when
    /// this was always a resident set size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes_after: Option<u64>,
    /// How both memory figures were measured; absent from agents older than this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_source: Option<MemorySource>,
    /// Files in the backup and their total size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_files: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_bytes: Option<u64>,
    /// A run-once job (`kind = "job"` in the agent's configuration): its run before the change
    /// (the baseline) and the run the migration made. A job has no startup time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_before: Option<Box<JobRun>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_after: Option<Box<JobRun>>,
}

/// One run of a run-once job, as its agent measured it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRun {
    /// From the start of the program to its exit (or to its kill at the timeout).
    pub duration_ms: u64,
    /// The highest resident memory seen: the main process's own high-water mark (`VmHWM`),
    /// or the largest sampled sum over its process tree, whichever is higher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// The exit code; absent when a signal ended it (`signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Killed at the job's timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Each output the job must produce, as found after this run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<JobOutputReport>,
}

impl JobRun {
    /// Whether the run ended by itself with one of `success_codes`.
    pub fn exited_with(&self, success_codes: &[i32]) -> bool {
        !self.timed_out
            && self
                .exit_code
                .is_some_and(|code| success_codes.contains(&code))
    }

    /// How it ended, in words: `exit code 0`, `signal 9`, `killed at its timeout`.
    pub fn ending(&self) -> String {
        match (self.timed_out, self.exit_code, self.signal) {
            (true, _, _) => "killed at its timeout".to_owned(),
            (false, Some(code), _) => format!("exit code {code}"),
            (false, None, Some(signal)) => format!("signal {signal}"),
            (false, None, None) => "an unknown ending".to_owned(),
        }
    }
}

/// An output file of a job after a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobOutputReport {
    /// Relative to the service root.
    pub path: String,
    /// Its size, when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    pub passed: bool,
    /// Why it failed, or what was proved.
    pub detail: String,
}

/// Where a memory figure comes from. Before and after always come from the same source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// The working set of the service's own cgroup (v2): `memory.current` less `inactive_file`
    /// of `memory.stat`, as cAdvisor and `kubectl top` report it.
    Cgroup,
    /// The sum of the proportional set sizes (`/proc/<pid>/smaps_rollup`) of the service's
    /// processes: pages they share are split among them instead of counted in each.
    Pss,
    /// The resident set size (`VmRSS`) of the service's processes, each process once.
    Rss,
    /// A source this reader does not know (from a newer agent).
    #[serde(other)]
    Other,
}

impl MemorySource {
    /// The source's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MemorySource::Cgroup => "cgroup",
            MemorySource::Pss => "pss",
            MemorySource::Rss => "rss",
            MemorySource::Other => "other",
        }
    }
}

/// One regression gate's verdict, with its figures whether it passed or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GateReport {
    /// `startup_ms`, `memory_bytes`, or `<workload>.errors`, `<workload>.p95_us`,
    /// `<workload>.duration_ms`, `<workload>.throughput`.
    pub gate: String,
    pub before: u64,
    pub after: u64,
    /// The highest `after` that passes (the lowest, for throughput).
    pub limit: u64,
    pub passed: bool,
    /// Higher is better (throughput): `limit` is a floor, not a ceiling.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub higher_is_better: bool,
    /// Too few samples to judge; `passed` then follows the plan's `inconclusive` policy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
}

impl GateReport {
    /// A gate the after figure passes by staying at or under `limit`.
    pub fn at_most(gate: impl Into<String>, before: u64, after: u64, limit: u64) -> Self {
        GateReport {
            gate: gate.into(),
            before,
            after,
            limit,
            passed: after <= limit,
            higher_is_better: false,
            inconclusive: false,
        }
    }

    /// A regression gate: `after` may exceed `before` by `pct` percent or by `slack`, whichever
    /// allows more (a small baseline would otherwise leave no room for noise).
    pub fn regression(
        gate: impl Into<String>,
        before: u64,
        after: u64,
        pct: f64,
        slack: u64,
    ) -> Self {
        let limit =
            ((before as f64 * (1.0 + pct / 100.0)) as u64).max(before.saturating_add(slack));
        Self::at_most(gate, before, after, limit)
    }
}

/// What a workload measured, once (before or after the change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadFigures {
    /// Successful requests (or 1 for a job that succeeded).
    pub samples: u32,
    pub errors: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// A job's wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What the job reported in its `throughput_field`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput: Option<f64>,
}

/// A workload's figures before and after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkloadReport {
    pub name: String,
    pub before: WorkloadFigures,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<WorkloadFigures>,
}

/// What an `inspect` command found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Inspection {
    /// Each check's verdict, in order.
    pub checks: Vec<CheckVerdict>,
    /// Each declared configuration file's shape.
    pub config: Vec<ConfigShape>,
    /// Each requested setting, in order: where it was looked for and a digest of its value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<SettingReport>,
    /// The migration's regression gates sampled again (`revalidate`): the memory now against
    /// the migration's baseline and limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateReport>,
}

/// One setting as a service holds it: never its value, a digest of it keyed by the run, so that
/// equal values across the fleet have equal digests in this run only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SettingReport {
    pub name: String,
    pub file: String,
    pub key: String,
    /// Whether the file has the key (false too when the file is missing or does not parse).
    pub found: bool,
    /// BLAKE3 of the value as text, keyed by the run ID; `None` when not found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Why it was not found, when it was not: the file is missing, does not parse, or lacks the
    /// key (never quoting the file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckVerdict {
    /// The check's type (`http`, `tcp`, `command`, `log`).
    pub kind: String,
    pub passed: bool,
    pub detail: String,
}

/// The shape of a configuration file: which keys it has, never their values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigShape {
    pub path: String,
    pub exists: bool,
    /// `standard` (TOML), `json`, `yaml`, `env` (`.env`), `key_value` (`key=value` lines of
    /// any other file), `missing` or `unreadable`.
    pub format: String,
    /// Dotted key names, sorted.
    pub keys: Vec<String>,
    /// BLAKE3 of the sorted key names: equal fingerprints, equal shapes.
    pub fingerprint: String,
    /// Keys whose value is one of the agent's secrets in clear.
    pub literal_secrets: Vec<String>,
    /// Whether one of the agent's secrets is in the file outside any key's value (a comment, a
    /// key name, a line that does not parse).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret_outside_keys: bool,
}

/// What a `preview` command found: what each step of the migration would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Preview {
    /// Each step, in order, up to the one that would fail (when one would).
    pub steps: Vec<StepPreview>,
    /// The backup the migration would take (bytes, with the file system's block rounding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_bytes: Option<u64>,
}

/// What one step would do. Secret values are masked (`********`) everywhere in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepPreview {
    /// 1-based, as in the reasons of a real run (`step 2 (write_file): …`).
    pub step: u32,
    /// The step's action (`write_file`, `replace_text`, `delete`, `run_command`, `restart`).
    pub action: String,
    /// One line: `create config/service.toml (mode 0644)`, `delete legacy.conf (file)`,
    /// `run sh -c …`, `restart the service`.
    pub summary: String,
    /// A unified diff of the file the step writes or edits; absent when the content would not
    /// change, and for steps that write no file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The terminal report of one command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunResult {
    pub schema: ResultSchema,
    pub run_id: RunId,
    pub command_id: CommandId,
    pub service: ServiceName,
    pub instance: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub at: OffsetDateTime,
    pub outcome: Outcome,
    /// Why it did not succeed; for a rollback, the failure that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub phases: Vec<PhaseReport>,
    #[serde(default)]
    pub measurements: Measurements,
    /// Regression gates evaluated during validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateReport>,
    /// Functional performance workloads, before and after.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadReport>,
    /// What an `inspect` command found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection: Option<Inspection>,
    /// What a `preview` command found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
    /// True when this result was re-sent for a command the agent had already handled.
    #[serde(default)]
    pub replayed: bool,
    /// The BLAKE3 (hex) of the command as the agent received it: its `Flotilla-Signature`
    /// header value (empty when unsigned), a newline, then its exact bytes. The coordinator
    /// files a refusal only when this matches what it signed and sent, so a refusal of a
    /// replayed or altered copy never counts against the genuine command. Absent from agents
    /// older than this field, and from results recovered after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_digest: Option<String>,
}

// === impl RunResult ===

impl RunResult {
    /// The result of one command that reports only its `outcome` at `at`: no reason, phases,
    /// measurements, gates, workloads, inspection or preview; not replayed, no digest. Set the
    /// rest with struct-update syntax: `RunResult { reason, ..RunResult::new(…) }`.
    pub fn new(
        run_id: RunId,
        command_id: CommandId,
        service: ServiceName,
        instance: InstanceId,
        at: OffsetDateTime,
        outcome: Outcome,
    ) -> Self {
        Self {
            schema: ResultSchema,
            run_id,
            command_id,
            service,
            instance,
            at,
            outcome,
            reason: None,
            phases: Vec::new(),
            measurements: Measurements::default(),
            gates: Vec::new(),
            workloads: Vec::new(),
            inspection: None,
            preview: None,
            replayed: false,
            command_digest: None,
        }
    }

    /// [`RunResult::new`] for `command`: its run, id, service and instance.
    pub fn of(command: &Command, at: OffsetDateTime, outcome: Outcome) -> Self {
        Self::new(
            command.run_id,
            command.command_id,
            command.service.clone(),
            command.instance.clone(),
            at,
            outcome,
        )
    }
}

impl SchemaTag for RunResult {
    const SCHEMA: &'static str = ResultSchema::VALUE;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A result built for a command carries its identity, and nothing optional on the wire.
    #[test]
    fn a_bare_result_names_its_command_and_reports_only_its_outcome() {
        let command: Command = crate::decode(include_bytes!(
            "../../fixtures/flotilla.command.v2.migrate.json"
        ))
        .expect("the fixture decodes");
        let result = RunResult::of(&command, command.issued_at, Outcome::Refused);
        assert_eq!(
            (
                result.run_id,
                result.command_id,
                &result.service,
                &result.instance
            ),
            (
                command.run_id,
                command.command_id,
                &command.service,
                &command.instance
            )
        );
        let json = serde_json::to_value(&result).expect("a result encodes");
        let mut keys: Vec<_> = json
            .as_object()
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "at",
                "command_id",
                "instance",
                "measurements",
                "outcome",
                "phases",
                "replayed",
                "run_id",
                "schema",
                "service"
            ]
        );
        assert_eq!(
            crate::decode::<RunResult>(&crate::encode(&result)).ok(),
            Some(result)
        );
    }
}
