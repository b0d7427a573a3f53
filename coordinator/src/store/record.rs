//! The run record: what one run is, as the run store keeps it (schema `flotilla.run.v1`), and
//! what it decided. [`super::Store`] reads and writes it; this file only says what it holds.

use flotilla_schemas::{Command, CommandId, InstanceId, RunId, RunResult, ServiceName};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::verdict::{CorrelationVerdict, CrossServiceVerdict};
use crate::plan::{Finalize, Pause, Wave};

mod started_by;

pub use started_by::{StartedBy, plan_digest};

/// The run record's schema tag.
pub const RUN_SCHEMA: &str = "flotilla.run.v1";

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Being driven by a coordinator, or interrupted (a killed coordinator): `resume` it.
    Running,
    /// Every service migrated, validated and finalized.
    Succeeded,
    /// Some services failed within the failure budget; the others were finalized.
    SucceededWithFailures,
    /// The failure budget was broken; see `on_failure` for what happened to the rest.
    Failed,
    /// The run was rolled back on request (`flotilla rollback`).
    RolledBack,
    /// `--rehearse`: every service migrated, validated, rolled back and proved healthy.
    Rehearsed,
    /// `--no-finalize` (or `finalize = "manual"`): every service migrated and the cross-service
    /// and correlation checks passed; the backups are kept until `flotilla finalize RUN` or
    /// `flotilla rollback RUN` decides.
    AwaitingFinalize,
    /// A wave with `pause = "manual"` succeeded: the next waves wait for `flotilla promote RUN`
    /// (or `flotilla rollback RUN` restores the fleet). No coordinator drives the run meanwhile.
    Paused,
    /// Dispatching stopped on request; `resume` finishes the run.
    Cancelled,
    /// A rollback was given up on (not delivered before it expired, or no answer): the state of
    /// those services is unknown. `rollback` or `resume` sends the rollbacks again.
    Unresolved,
}

/// Which part of the run comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Migrating,
    RollingBack,
    Finalizing,
    Done,
}

/// The durable record of one run.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunRecord {
    /// Always `flotilla.run.v1` ([`RUN_SCHEMA`]).
    #[schemars(extend("const" = "flotilla.run.v1"))]
    pub schema: String,
    pub run_id: RunId,
    pub plan_name: String,
    /// Where the plan was read from, as given on the command line.
    pub plan_path: String,
    /// The plan's text, so the run can be resumed where the file is not.
    pub plan_text: String,
    /// `sha256:<hex>` of `plan_text` ([`plan_digest`]); absent in records older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// Who started the run, on which host, with which signing key; absent in records older
    /// than it. A resume keeps it (the resuming host is in `coordinator`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
    /// The files the plan ships (`write_file` sources) with their digests as the run started:
    /// a resumed run sends these, from the plan-files bucket, whatever the disk holds now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_files: Vec<flotilla_schemas::PlanFile>,
    /// `--rehearse`: roll everything back after validation.
    #[serde(default)]
    pub rehearse: bool,
    /// `manual`: stop `awaiting_finalize` once proven, backups kept. `flotilla finalize RUN`
    /// turns it back to `auto` (the decision is made) before it sends the finalize commands.
    #[serde(default, skip_serializing_if = "Finalize::is_auto")]
    pub finalize: Finalize,
    pub status: RunStatus,
    pub stage: Stage,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub finished_at: Option<OffsetDateTime>,
    /// The host and process driving (or that last drove) the run.
    pub coordinator: String,
    /// Why the run stopped early, or what it decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub waves: Vec<WaveRecord>,
    /// Every target of the run. A header with `target_count` names none (the field is absent):
    /// the targets, who they are and their commands, are read from the chunks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetRecord>,
    /// W3C `traceparent` of the run's root span: every span of the run, also after a resume,
    /// joins this one trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
    /// The cross-service correlation check's verdict (`flotilla verify`'s report), once run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<CorrelationVerdict>,
    /// The cross-service checks' verdict (communication, configuration consistency), once run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_service: Option<CrossServiceVerdict>,
    /// True when the targets' commands are kept in chunks (`<run>.c.<first>`, runs of targets
    /// split by size: a batch of dispatches or results costs one write per chunk it touches);
    /// false (absent) in records older than chunks, one key per target (`<run>.t.<index>`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunked_targets: bool,
    /// How many targets the run has, set when its header names none (so that its size does
    /// not grow with the fleet): each target, who it is as well as its commands, is kept in
    /// the chunks alone, and a wave's targets are those whose `wave` is its index. Absent in
    /// records whose header lists every target (older ones), which are read and written so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_count: Option<usize>,
}

/// One wave's progress.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WaveRecord {
    pub name: String,
    pub max_parallel: Option<u32>,
    /// Indices into [`RunRecord::targets`], ascending. Empty in a header with `target_count`:
    /// the loaded record has them again, from each target's `wave`.
    #[serde(default)]
    pub targets: Vec<usize>,
    /// The wave's own selector (the plan's `[[wave]] selector`), which picked its targets;
    /// absent for a wave of named services (and in records older than selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The operator's selector (`flotilla migrate -l`), which every target of the run matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    pub status: WaveStatus,
    /// The plan's `pause` for after this wave; absent for none (and in older records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub pause: Option<Pause>,
    /// When the wave's first command was dispatched.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub started_at: Option<OffsetDateTime>,
    /// When the pause after this wave began (the wave had succeeded).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub paused_at: Option<OffsetDateTime>,
    /// When a bake ends: recorded once, so a resumed run waits out the rest of it, not all of
    /// it again. Absent for a manual pause.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub paused_until: Option<OffsetDateTime>,
    /// When the pause ended: waited out, or promoted (`flotilla promote RUN`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub pause_ended_at: Option<OffsetDateTime>,
    /// The verdicts of the wave's analysis gates (`[[wave.analysis]]`), checked after its last
    /// result; empty for a wave without gates (and in records older than analysis).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisVerdict>,
}

/// One analysis query's verdict: what Prometheus answered against the gate's threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AnalysisVerdict {
    /// The gate's name.
    pub name: String,
    /// The service the query was rendered for (`${service:name}`), if it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The query as sent, placeholders rendered.
    pub query: String,
    /// What the query returned after the wave (the largest sample of several).
    pub value: Option<f64>,
    /// What the same query returned before the wave's first dispatch (`max_increase` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The threshold, as written: `<= 0.05` or `rise <= 10%`.
    pub threshold: String,
    /// The highest value that passes (for `max_increase`, of the baseline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<f64>,
    /// False when the verdict fails the wave.
    pub passed: bool,
    /// No value could be read (no data, Prometheus unreachable or refusing the query).
    #[serde(default)]
    pub inconclusive: bool,
    /// What was found, in a sentence (why it passed or failed).
    pub detail: String,
}

/// Where a wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WaveStatus {
    Pending,
    Running,
    /// Every service of the wave has a result.
    Done,
    /// The run stopped before the wave finished.
    Stopped,
}

// === impl RunStatus ===

impl RunStatus {
    /// Every status, in the order the docs list them.
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::SucceededWithFailures,
        RunStatus::Failed,
        RunStatus::RolledBack,
        RunStatus::Rehearsed,
        RunStatus::AwaitingFinalize,
        RunStatus::Paused,
        RunStatus::Cancelled,
        RunStatus::Unresolved,
    ];

    /// The status as written in reports (its JSON spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::SucceededWithFailures => "succeeded_with_failures",
            RunStatus::Failed => "failed",
            RunStatus::RolledBack => "rolled_back",
            RunStatus::Rehearsed => "rehearsed",
            RunStatus::AwaitingFinalize => "awaiting_finalize",
            RunStatus::Paused => "paused",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Unresolved => "unresolved",
        }
    }
}

// === impl Stage ===

impl Stage {
    /// The stage as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Migrating => "migrating",
            Stage::RollingBack => "rolling_back",
            Stage::Finalizing => "finalizing",
            Stage::Done => "done",
        }
    }
}

// === impl WaveStatus ===

impl WaveStatus {
    /// The status as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            WaveStatus::Pending => "pending",
            WaveStatus::Running => "running",
            WaveStatus::Done => "done",
            WaveStatus::Stopped => "stopped",
        }
    }
}

/// One agent of the run, and the commands sent to it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TargetRecord {
    pub service: ServiceName,
    pub instance: InstanceId,
    /// Index into [`RunRecord::waves`].
    pub wave: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<CommandRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<CommandRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize: Option<CommandRecord>,
    /// The public keys (base64) whose signature makes this agent's results count, fixed when
    /// the run was created ([`crate::trust`]); empty for an agent that signs nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_keys: Vec<String>,
    /// Why this migrated service failed its health check during a bake (a wave's `pause`): it
    /// counts as a failed service, and is rolled back with the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_failure: Option<String>,
}

/// A command: recorded before it is sent (so a resumed run re-sends the same command ID, which
/// agents dedupe), then when it was sent and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CommandRecord {
    #[serde(deserialize_with = "command_of_any_version")]
    pub command: Command,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub sent_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// No result came within the deadline.
    #[serde(default)]
    pub timed_out: bool,
    /// The command never reached the bus: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_delivered: Option<String>,
    /// Why the coordinator sent it (for rollbacks: the run failed, a rehearsal, a request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The digest of the command as signed and sent
    /// ([`flotilla_bus::signing::command_digest`]): a refusal counts only if it names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

// === impl TargetRecord ===

impl TargetRecord {
    /// The commands sent to this target: migrate, rollback, finalize, those that exist.
    pub fn commands(&self) -> impl Iterator<Item = &CommandRecord> {
        [&self.migrate, &self.rollback, &self.finalize]
            .into_iter()
            .flatten()
    }

    /// [`TargetRecord::commands`], to change.
    pub fn commands_mut(&mut self) -> impl Iterator<Item = &mut CommandRecord> {
        [&mut self.migrate, &mut self.rollback, &mut self.finalize]
            .into_iter()
            .flatten()
    }
}

// === impl RunRecord ===

impl RunRecord {
    /// A new record for `targets` in `waves`.
    pub fn new(
        run_id: RunId,
        plan_name: &str,
        plan_path: &str,
        plan_text: &str,
        waves: &[Wave],
        targets: &[(ServiceName, InstanceId)],
        rehearse: bool,
    ) -> Self {
        let now = OffsetDateTime::now_utc();
        let mut record = RunRecord {
            schema: RUN_SCHEMA.into(),
            run_id,
            plan_name: plan_name.to_owned(),
            plan_path: plan_path.to_owned(),
            plan_text: plan_text.to_owned(),
            plan_digest: Some(plan_digest(plan_text)),
            started_by: Some(StartedBy::this_process()),
            plan_files: Vec::new(),
            rehearse,
            finalize: Finalize::Auto,
            status: RunStatus::Running,
            stage: Stage::Migrating,
            started_at: now,
            updated_at: now,
            finished_at: None,
            coordinator: coordinator_name(),
            notes: Vec::new(),
            waves: Vec::new(),
            targets: Vec::new(),
            trace_parent: None,
            correlation: None,
            cross_service: None,
            chunked_targets: true,
            target_count: None,
        };
        // A set, not `targets.contains`: tens of thousands of agents, several waves.
        let known: std::collections::HashSet<&(ServiceName, InstanceId)> = targets.iter().collect();
        for (w, wave) in waves.iter().enumerate() {
            let mut members = Vec::new();
            // Placed waves list their agents; unplaced ones take every agent of their services.
            let mine: Vec<&(ServiceName, InstanceId)> = match &wave.placed {
                Some(placed) => placed
                    .targets
                    .iter()
                    .filter(|t| known.contains(t))
                    .collect(),
                None => wave
                    .services
                    .iter()
                    .flat_map(|service| targets.iter().filter(move |(s, _)| s == service))
                    .collect(),
            };
            for (s, i) in mine {
                members.push(record.targets.len());
                record.targets.push(TargetRecord {
                    service: s.clone(),
                    instance: i.clone(),
                    wave: w,
                    migrate: None,
                    rollback: None,
                    finalize: None,
                    agent_keys: Vec::new(),
                    bake_failure: None,
                });
            }
            record.waves.push(WaveRecord {
                name: wave.name.clone(),
                max_parallel: wave.cap_for(members.len()),
                targets: members,
                selector: wave.selector.as_ref().map(ToString::to_string),
                limit: wave
                    .placed
                    .as_ref()
                    .and_then(|p| p.limit.as_ref())
                    .map(ToString::to_string),
                status: WaveStatus::Pending,
                pause: wave.pause,
                started_at: None,
                paused_at: None,
                paused_until: None,
                pause_ended_at: None,
                analysis: Vec::new(),
            });
        }
        record.target_count = Some(record.targets.len());
        record
    }

    /// How many targets the run has, also from a header alone (a [`super::Store::list`]).
    pub fn target_total(&self) -> usize {
        self.target_count.unwrap_or(self.targets.len())
    }

    /// The index of the target that `command_id` was sent to.
    pub fn find_target(&self, command_id: CommandId) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.commands().any(|c| c.command.command_id == command_id))
    }

    /// Every command recorded for every target.
    pub fn commands(&self) -> impl Iterator<Item = &CommandRecord> {
        self.targets.iter().flat_map(TargetRecord::commands)
    }

    /// The wave whose pause began and has not ended (the run is baking or `paused` after it).
    pub fn open_pause(&self) -> Option<usize> {
        self.waves
            .iter()
            .position(|w| w.paused_at.is_some() && w.pause_ended_at.is_none())
    }

    /// True when the run may be resumed.
    pub fn resumable(&self) -> bool {
        matches!(
            self.status,
            RunStatus::Running | RunStatus::Cancelled | RunStatus::Unresolved
        )
    }
}

/// The check across the fleet whose recorded verdict failed, named for people: the
/// cross-service checks first (they run first), then the correlation check.
pub fn failed_verdict(
    cross_service: &Option<CrossServiceVerdict>,
    correlation: &Option<CorrelationVerdict>,
) -> Option<&'static str> {
    if cross_service.as_ref().is_some_and(|c| !c.ok) {
        Some("the cross-service checks")
    } else if correlation.as_ref().is_some_and(|c| !c.ok()) {
        Some("the correlation check")
    } else {
        None
    }
}

/// `host:pid` of this process.
pub(crate) fn coordinator_name() -> String {
    format!("{}:{}", started_by::host(), std::process::id())
}

/// A recorded command, read also when an older coordinator recorded it as
/// `flotilla.command.v1` (the same fields; only its delivery changed), so that runs recorded
/// before an upgrade stay readable, and resumable: a resume sends it as v2.
fn command_of_any_version<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Command, D::Error> {
    let mut value = serde_json::Value::deserialize(deserializer)?;
    if let Some(schema) = value.get_mut("schema")
        && schema == flotilla_schemas::LEGACY_COMMAND_SCHEMA
    {
        *schema = flotilla_schemas::CommandSchema::VALUE.into();
    }
    serde_json::from_value(value).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run recorded by a coordinator before per-agent delivery stays readable: its commands
    /// read as v2 (and are sent as v2 by a resume). Another version is still refused.
    #[test]
    fn commands_recorded_as_v1_read_as_v2() {
        let record = |schema: &str| {
            serde_json::json!({
                "command": {
                    "schema": schema,
                    "command_id": "0190b1c2-0000-7000-8000-000000000001",
                    "run_id": "0190b1c2-0000-7000-8000-000000000002",
                    "service": "inference", "instance": "a",
                    "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
                    "action": { "kind": "finalize", "migration": "0190b1c2-0000-7000-8000-000000000003" },
                },
            })
        };
        let old: CommandRecord = serde_json::from_value(record("flotilla.command.v1")).unwrap();
        let sent = serde_json::to_value(&old).unwrap();
        assert_eq!(sent["command"]["schema"], "flotilla.command.v2");
        assert!(serde_json::from_value::<CommandRecord>(record("flotilla.command.v3")).is_err());
    }

    #[test]
    fn a_wave_recorded_before_selectors_loads_without_them() {
        let old = serde_json::json!({
            "name": "all", "max_parallel": null, "targets": [0, 1], "status": "done"
        });
        let wave: WaveRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!((wave.selector, wave.limit), (None, None));
        let again = serde_json::to_value(WaveRecord {
            selector: None,
            limit: None,
            pause: None,
            ..serde_json::from_value(old.clone()).unwrap()
        })
        .unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn run_status_text_is_its_json_spelling() {
        for status in RunStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }
}
