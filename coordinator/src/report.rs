//! What a run produced, built from its record: a table for people, JSON for machines, Markdown
//! (the migration guide), JUnit XML for CI and a self-contained HTML page with a timeline.

use std::fmt::Write as _;

use flotilla_schemas::{
    CommandId, GateReport, InstanceId, Measurements, Outcome, Phase, PhaseReport, PhaseStatus,
    RunId, ServiceName,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::exit;
use crate::store::{
    AnalysisVerdict, CommandRecord, RunRecord, Stage, StartedBy, TargetRecord, WaveStatus,
};

pub use crate::store::RunStatus;

pub(crate) mod gate;
mod html;
mod junit;
mod markdown;
mod memory;

/// How one service ended (or stands, while the run goes on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Succeeded,
    RolledBack,
    RollbackFailed,
    Refused,
    /// The agent did not report within the service's `command_timeout`.
    TimedOut,
    /// The command never reached the bus.
    NotDelivered,
    /// Never dispatched: the run stopped before this service's turn (or has not reached it).
    NotStarted,
    /// Dispatched, no result yet.
    InFlight,
}

/// Why a service failed, distinct for each cause (the failure taxonomy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The command never reached the bus.
    NotDelivered,
    /// No result within the deadline: the agent is silent or stuck.
    TimedOut,
    /// Refused before anything changed (precheck, precondition, stale or bad command).
    Refused,
    /// Backup, apply or restart failed; the agent rolled the service back.
    FailedApply,
    /// Health, functional checks or regression gates failed; the agent rolled it back.
    FailedValidation,
    /// The agent was interrupted mid-migration and restored the backup when it came back.
    Interrupted,
    /// The restore failed too: a human must look.
    RollbackFailed,
}

/// One service instance's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: ServiceName,
    pub instance: InstanceId,
    pub wave: String,
    pub status: ServiceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The migrate command's ID (absent when it was never dispatched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
    pub phases: Vec<PhaseReport>,
    pub measurements: Measurements,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateReport>,
    /// Functional performance workloads: figures before and after the change.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<flotilla_schemas::WorkloadReport>,
    /// True when this service was restored from its backup and proved healthy after a
    /// successful migration (a rehearsal, a fleet rollback): its rollback is tested.
    pub rollback_validated: bool,
    /// When the agent reported the restore, for a service rolled back after it had succeeded.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub rolled_back_at: Option<OffsetDateTime>,
    /// True when the agent dropped its backup.
    pub finalized: bool,
}

/// One wave in the report.
#[derive(Debug, Clone, Serialize)]
pub struct WaveReport {
    pub name: String,
    pub status: WaveStatus,
    pub max_parallel: Option<u32>,
    pub services: Vec<String>,
    /// The wave's selector, which picked its services (`service/instance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The operator's selector (`migrate -l`), which every target of the run matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The wave's `pause` (`"10m"`, `"manual"`), and when it began and ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub started_at: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub paused_at: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub paused_until: Option<OffsetDateTime>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub pause_ended_at: Option<OffsetDateTime>,
    /// The verdicts of its analysis gates (`[[wave.analysis]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisVerdict>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: RunId,
    pub plan: String,
    pub status: RunStatus,
    pub stage: Stage,
    pub rehearsal: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub duration_ms: u64,
    /// When the record was last written: a `running` run whose record stopped changing lost
    /// its coordinator (`flotilla resume` it).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// True when every migrated service's agent dropped its backup: the run is closed.
    pub finalized: bool,
    pub coordinator: String,
    /// Who started the run, on which host, with which signing key (absent for older runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
    /// `sha256:<hex>` of the plan's text as recorded (absent for older runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_digest: Option<String>,
    /// The run's trace ID (of its root span): every span and log of the run is in this trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub waves: Vec<WaveReport>,
    pub services: Vec<ServiceReport>,
    /// The cross-service correlation check (`flotilla verify`'s report), when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation: Option<crate::store::CorrelationVerdict>,
    /// The cross-service checks (communication, configuration consistency), when they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cross_service: Option<crate::store::CrossServiceVerdict>,
    /// The plan, for the migration guide.
    #[serde(skip)]
    plan_text: String,
}

// === impl ServiceStatus ===

impl ServiceStatus {
    /// The status as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Succeeded => "succeeded",
            ServiceStatus::RolledBack => "rolled_back",
            ServiceStatus::RollbackFailed => "rollback_failed",
            ServiceStatus::Refused => "refused",
            ServiceStatus::TimedOut => "timed_out",
            ServiceStatus::NotDelivered => "not_delivered",
            ServiceStatus::NotStarted => "not_started",
            ServiceStatus::InFlight => "in_flight",
        }
    }

    /// The status an agent's outcome maps to.
    pub fn from_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded | Outcome::Finalized => ServiceStatus::Succeeded,
            Outcome::RolledBack => ServiceStatus::RolledBack,
            Outcome::RollbackFailed => ServiceStatus::RollbackFailed,
            Outcome::Refused => ServiceStatus::Refused,
        }
    }
}

impl FailureKind {
    /// The kind as written in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::NotDelivered => "not delivered",
            FailureKind::TimedOut => "timed out",
            FailureKind::Refused => "refused",
            FailureKind::FailedApply => "failed apply",
            FailureKind::FailedValidation => "failed validation",
            FailureKind::Interrupted => "interrupted",
            FailureKind::RollbackFailed => "rollback failed",
        }
    }
}

// === impl ServiceReport ===

impl ServiceReport {
    /// The phases that failed, each as `phase: detail`.
    pub(crate) fn failed_phases(&self) -> Vec<String> {
        self.phases
            .iter()
            .filter(|p| p.status == PhaseStatus::Failed)
            .filter_map(|p| {
                p.detail
                    .as_ref()
                    .map(|d| format!("{}: {d}", p.phase.as_str()))
            })
            .collect()
    }

    /// What went wrong with this service, in one line: its failure kind with the reason (or
    /// the failed phases), the failed phases alone, or `none`. A reason without a failure (a
    /// rehearsal's restore, a rollback on request or because another service failed, a service
    /// not started) is not this service's problem: its status and the run's notes tell it.
    pub(crate) fn problem(&self) -> String {
        let failed = self.failed_phases();
        match (self.failure, &self.reason) {
            (Some(kind), Some(reason)) => format!("{}: {reason}", kind.as_str()),
            (Some(kind), None) if !failed.is_empty() => {
                format!("{}: {}", kind.as_str(), failed.join("; "))
            }
            (Some(kind), None) => kind.as_str().to_owned(),
            (None, _) if !failed.is_empty() => failed.join("; "),
            (None, _) => "none".into(),
        }
    }

    /// The report of a service in `wave` of which nothing is known yet: not started.
    fn not_started(service: ServiceName, instance: InstanceId, wave: String) -> Self {
        ServiceReport {
            service,
            instance,
            wave,
            status: ServiceStatus::NotStarted,
            failure: None,
            reason: None,
            command_id: None,
            phases: Vec::new(),
            measurements: Measurements::default(),
            gates: Vec::new(),
            workloads: Vec::new(),
            rollback_validated: false,
            rolled_back_at: None,
            finalized: false,
        }
    }

    fn from_target(record: &RunRecord, target: &TargetRecord) -> Self {
        let wave = record.waves.get(target.wave).map(|w| w.name.clone());
        let mut report = ServiceReport::not_started(
            target.service.clone(),
            target.instance.clone(),
            wave.unwrap_or_default(),
        );
        let Some(migrate) = &target.migrate else {
            if record.stage != Stage::Migrating || record.status != crate::store::RunStatus::Running
            {
                report.reason = Some("not started: the run stopped before its turn".into());
            }
            return report;
        };
        report.command_id = Some(migrate.command.command_id);
        match (&migrate.result, &migrate.not_delivered) {
            (None, Some(why)) => {
                report.status = ServiceStatus::NotDelivered;
                report.failure = Some(FailureKind::NotDelivered);
                report.reason = Some(why.clone());
            }
            (None, None) if migrate.timed_out => {
                report.status = ServiceStatus::TimedOut;
                report.failure = Some(FailureKind::TimedOut);
                report.reason =
                    Some("no result within command_timeout: the agent is silent or stuck".into());
            }
            (None, None) => {
                report.status = if migrate.sent_at.is_some() {
                    ServiceStatus::InFlight
                } else {
                    ServiceStatus::NotStarted
                };
            }
            (Some(result), _) => {
                report.status = ServiceStatus::from_outcome(result.outcome);
                report.reason = result.reason.clone();
                report.phases = result.phases.clone();
                report.measurements = result.measurements.clone();
                report.gates = result.gates.clone();
                report.workloads = result.workloads.clone();
                report.failure = failure_kind(result.outcome, &result.phases);
            }
        }
        // A migrate the coordinator gave up on still gets a rollback (the agent may have applied
        // it late): its answer tells what happened.
        if matches!(
            report.status,
            ServiceStatus::Succeeded | ServiceStatus::TimedOut | ServiceStatus::NotDelivered
        ) && let Some(rollback) = &target.rollback
        {
            report.apply_rollback(rollback);
        }
        // Its own failure, found after it had succeeded, outweighs why it was rolled back.
        if let Some(why) = &target.bake_failure {
            report.failure = Some(FailureKind::FailedValidation);
            report.reason = Some(why.clone());
        }
        report.finalized = target
            .finalize
            .as_ref()
            .and_then(|f| f.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::Finalized);
        report
    }

    fn apply_rollback(&mut self, rollback: &CommandRecord) {
        let cause = rollback
            .cause
            .clone()
            .unwrap_or_else(|| "rolled back".into());
        match (&rollback.result, rollback.timed_out) {
            (Some(result), _) => {
                self.phases.extend(result.phases.clone());
                self.rolled_back_at = Some(result.at);
                match result.outcome {
                    Outcome::RolledBack => {
                        self.status = ServiceStatus::RolledBack;
                        self.rollback_validated = true;
                        self.reason = Some(cause);
                    }
                    Outcome::RollbackFailed => {
                        self.status = ServiceStatus::RollbackFailed;
                        self.failure = Some(FailureKind::RollbackFailed);
                        self.reason = result.reason.clone();
                    }
                    _ => {
                        let rollback = format!(
                            "rollback {}: {}",
                            result.outcome.as_str(),
                            result.reason.clone().unwrap_or_default()
                        );
                        self.reason = Some(match self.reason.take() {
                            Some(before) if self.status == ServiceStatus::TimedOut => {
                                format!("{before}; {rollback}")
                            }
                            _ => rollback,
                        });
                    }
                }
            }
            (None, true) => {
                self.status = ServiceStatus::TimedOut;
                self.failure = Some(FailureKind::TimedOut);
                self.reason = Some("rollback: no result within command_timeout".into());
            }
            (None, false) => match &rollback.not_delivered {
                Some(why) => {
                    self.status = ServiceStatus::NotDelivered;
                    self.failure = Some(FailureKind::NotDelivered);
                    self.reason = Some(format!(
                        "rollback not delivered ({why}): the service may still be migrated"
                    ));
                }
                None => self.reason = Some(format!("{cause} (rollback in flight)")),
            },
        }
    }
}

/// When the run last moved: the header's last write, or the latest command sent or answered
/// (those are written under the targets' own keys).
fn last_activity(record: &RunRecord) -> OffsetDateTime {
    record
        .commands()
        .flat_map(|c| [c.sent_at, c.result.as_ref().map(|r| r.at)])
        .flatten()
        .fold(record.updated_at, OffsetDateTime::max)
}

/// The failure taxonomy of one migrate result.
fn failure_kind(outcome: Outcome, phases: &[PhaseReport]) -> Option<FailureKind> {
    let failed = phases
        .iter()
        .find(|p| p.status == PhaseStatus::Failed && p.phase != Phase::Rollback)
        .map(|p| p.phase);
    match outcome {
        Outcome::Succeeded | Outcome::Finalized => None,
        Outcome::Refused => Some(FailureKind::Refused),
        Outcome::RollbackFailed => Some(FailureKind::RollbackFailed),
        Outcome::RolledBack => Some(match failed {
            Some(Phase::Validate) => FailureKind::FailedValidation,
            Some(Phase::Recover) | None => FailureKind::Interrupted,
            Some(_) => FailureKind::FailedApply,
        }),
    }
}

// === impl RunReport ===

impl RunReport {
    /// The report of a run, from its record.
    pub fn from_record(record: &RunRecord) -> Self {
        let services: Vec<ServiceReport> = record
            .targets
            .iter()
            .map(|t| ServiceReport::from_target(record, t))
            .collect();
        let end = record.finished_at.unwrap_or(record.updated_at);
        let migrated = services
            .iter()
            .filter(|s| s.status == ServiceStatus::Succeeded || s.rollback_validated)
            .count();
        RunReport {
            run_id: record.run_id,
            plan: record.plan_name.clone(),
            status: record.status,
            stage: record.stage,
            rehearsal: record.rehearse,
            started_at: record.started_at,
            finished_at: record.finished_at,
            duration_ms: (end - record.started_at).whole_milliseconds().max(0) as u64,
            updated_at: last_activity(record),
            finalized: migrated > 0 && services.iter().all(|s| s.finalized),
            coordinator: record.coordinator.clone(),
            started_by: record.started_by.clone(),
            plan_digest: record.plan_digest.clone(),
            trace_id: record
                .trace_parent
                .as_deref()
                .and_then(crate::verify::trace_id_of)
                .map(str::to_owned),
            notes: record.notes.clone(),
            correlation: record.correlation.clone(),
            cross_service: record.cross_service.clone(),
            waves: record
                .waves
                .iter()
                .map(|w| WaveReport {
                    name: w.name.clone(),
                    status: w.status,
                    max_parallel: w.max_parallel,
                    selector: w.selector.clone(),
                    limit: w.limit.clone(),
                    pause: w.pause.map(|p| p.to_string()),
                    started_at: w.started_at,
                    paused_at: w.paused_at,
                    paused_until: w.paused_until,
                    pause_ended_at: w.pause_ended_at,
                    analysis: w.analysis.clone(),
                    services: w
                        .targets
                        .iter()
                        .map(|&t| {
                            format!(
                                "{}/{}",
                                record.targets[t].service, record.targets[t].instance
                            )
                        })
                        .collect(),
                })
                .collect(),
            services,
            plan_text: record.plan_text.clone(),
        }
    }

    /// The exit code this run deserves: the most serious status wins.
    pub fn exit_code(&self) -> u8 {
        let has = |s: ServiceStatus| self.services.iter().any(|r| r.status == s);
        if has(ServiceStatus::RollbackFailed) {
            exit::ROLLBACK_FAILED
        } else if has(ServiceStatus::TimedOut) || has(ServiceStatus::NotDelivered) {
            exit::TIMED_OUT
        } else {
            match self.status {
                RunStatus::Succeeded | RunStatus::Rehearsed | RunStatus::Running => exit::OK,
                // Paused for the operator: a success, unless a service failed within the budget.
                RunStatus::AwaitingFinalize
                    if self.count(ServiceStatus::Succeeded) == self.services.len() =>
                {
                    exit::OK
                }
                RunStatus::AwaitingFinalize => exit::FAILED,
                // Paused for the operator: a success, unless a service failed so far.
                RunStatus::Paused if self.failed_so_far() == 0 => exit::OK,
                RunStatus::Paused => exit::FAILED,
                RunStatus::Cancelled => exit::CANCELLED,
                RunStatus::Unresolved => exit::TIMED_OUT,
                RunStatus::SucceededWithFailures | RunStatus::Failed | RunStatus::RolledBack => {
                    exit::FAILED
                }
            }
        }
    }

    /// A table for the terminal; text from data is shown on one line, controls escaped.
    pub fn to_text(&self) -> String {
        use crate::sanitize::one_line;
        let mut out = String::new();
        let width = self
            .services
            .iter()
            .map(|s| s.service.as_str().len() + s.instance.as_str().len() + 1)
            .max()
            .unwrap_or(7)
            .max(7);
        let wave_width = self
            .services
            .iter()
            .map(|s| s.wave.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let _ = writeln!(
            out,
            "run {} ({}): {}",
            self.run_id,
            one_line(&self.plan),
            self.status_text()
        );
        if let Some(next) = self.next_step() {
            let _ = writeln!(out, "  next: {next}");
        }
        if let Some(origin) = self.origin() {
            let _ = writeln!(out, "  by: {}", one_line(&origin));
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {}", one_line(note));
        }
        for (wave, v) in self.analysis_verdicts() {
            let _ = writeln!(out, "  analysis: {}", one_line(&v.line(wave)));
        }
        let _ = writeln!(
            out,
            "{:width$}  {:wave_width$}  {:15}  {:>8}  {:>8}  reason",
            "SERVICE", "WAVE", "STATUS", "TIME", "STARTUP"
        );
        for s in &self.services {
            let total: u64 = s.phases.iter().map(|p| p.duration_ms).sum();
            let startup = gate::restart_compact(&s.measurements);
            let reason = match (s.failure, s.reason.as_deref()) {
                (Some(kind), Some(reason)) => format!("[{}] {reason}", kind.as_str()),
                (Some(kind), None) => format!("[{}]", kind.as_str()),
                (None, reason) => reason.unwrap_or("").to_owned(),
            };
            let _ = writeln!(
                out,
                "{:width$}  {:wave_width$}  {:15}  {:>8}  {:>8}  {}",
                format!("{}/{}", s.service, s.instance),
                one_line(&s.wave),
                s.status.as_str(),
                format!("{total}ms"),
                startup,
                one_line(&reason),
            );
        }
        let _ = writeln!(out, "took {:.1}s", self.duration_ms as f64 / 1000.0);
        out
    }

    /// What the operator has to decide, for a run that waits on them.
    pub fn next_step(&self) -> Option<String> {
        let run = self.run_id;
        match self.status {
            RunStatus::AwaitingFinalize => Some(format!(
                "`flotilla finalize {run}` drops the backups, or `flotilla rollback {run}` restores the fleet"
            )),
            RunStatus::Paused => Some(format!(
                "`flotilla promote {run}` starts the next wave, or `flotilla rollback {run}` restores the fleet"
            )),
            _ => None,
        }
    }

    /// The services that ended other than succeeded or not started.
    fn failed_so_far(&self) -> usize {
        self.services
            .iter()
            .filter(|s| {
                !matches!(
                    s.status,
                    ServiceStatus::Succeeded | ServiceStatus::NotStarted
                )
            })
            .count()
    }

    /// Who started the run and from which plan, in one line: `alice@ops-1 (signing key AbCd…),
    /// plan sha256:…`; `None` for a run older than these fields.
    pub(crate) fn origin(&self) -> Option<String> {
        match (&self.started_by, &self.plan_digest) {
            (None, None) => None,
            (Some(by), None) => Some(by.text()),
            (None, Some(digest)) => Some(format!("plan {digest}")),
            (Some(by), Some(digest)) => Some(format!("{}, plan {digest}", by.text())),
        }
    }

    fn count(&self, status: ServiceStatus) -> usize {
        self.services.iter().filter(|r| r.status == status).count()
    }

    fn status_text(&self) -> String {
        let count = |s| self.count(s);
        let tally = format!(
            "{} succeeded, {} rolled back, {} refused, {} timed out, {} rollback failed, {} not started",
            count(ServiceStatus::Succeeded),
            count(ServiceStatus::RolledBack),
            count(ServiceStatus::Refused),
            count(ServiceStatus::TimedOut) + count(ServiceStatus::NotDelivered),
            count(ServiceStatus::RollbackFailed),
            count(ServiceStatus::NotStarted),
        );
        match self.status {
            RunStatus::Succeeded => format!(
                "succeeded, {} service(s) migrated and finalized",
                self.services.len()
            ),
            RunStatus::Rehearsed => format!(
                "rehearsed: {} service(s) migrated, validated and rolled back; rollback validated",
                self.services
                    .iter()
                    .filter(|s| s.rollback_validated)
                    .count()
            ),
            RunStatus::Running => {
                let idle = (OffsetDateTime::now_utc() - self.updated_at).whole_seconds();
                format!(
                    "running, stage {} (record last written {idle}s ago by {}; if that coordinator is gone, `flotilla resume {}`): {tally}",
                    self.stage.as_str(),
                    self.coordinator,
                    self.run_id
                )
            }
            RunStatus::Cancelled => format!("CANCELLED, resumable: {tally}"),
            RunStatus::SucceededWithFailures => {
                format!("succeeded within the failure budget: {tally}")
            }
            RunStatus::Paused => format!(
                "paused after a wave, waiting for promote: {} service(s) migrated, backups kept: {tally}",
                count(ServiceStatus::Succeeded)
            ),
            RunStatus::AwaitingFinalize => {
                let migrated = count(ServiceStatus::Succeeded);
                let head = format!(
                    "awaiting finalize: {migrated} service(s) migrated and proven, backups kept"
                );
                if migrated == self.services.len() {
                    head
                } else {
                    format!("{head}: {tally}")
                }
            }
            RunStatus::Failed if self.rehearsal => {
                match crate::store::failed_verdict(&self.cross_service, &self.correlation) {
                    Some(check) => {
                        format!("REHEARSAL FAILED: {check} failed: {tally}")
                    }
                    None => format!("REHEARSAL FAILED: {tally}"),
                }
            }
            RunStatus::Failed => format!("FAILED: {tally}"),
            RunStatus::RolledBack => format!("rolled back on request: {tally}"),
            RunStatus::Unresolved => {
                format!(
                    "UNRESOLVED: a rollback got no answer, those services may still be migrated: {tally}"
                )
            }
        }
    }

    /// The Markdown report: the run's summary and, per service, the migration guide.
    pub fn to_markdown(&self) -> String {
        markdown::render(self)
    }

    /// JUnit XML: one test suite per wave, one test case per service.
    pub fn to_junit(&self) -> String {
        junit::render(self)
    }

    /// The self-contained HTML report; its timeline is drawn from `events`, the run's events
    /// stream (commands without events fall back to their results' phases).
    /// `trace_url` (`…/trace/{trace_id}`) links the run's trace to a tracing UI.
    pub(crate) fn to_html(
        &self,
        record: &RunRecord,
        events: &[crate::events::RunEvent],
        trace_url: Option<&str>,
    ) -> String {
        html::render(self, record, events, trace_url)
    }
}

#[cfg(test)]
mod tests;

// === impl AnalysisVerdict (in reports) ===

impl RunReport {
    /// Every wave's analysis verdicts, with the wave's name.
    pub(crate) fn analysis_verdicts(&self) -> impl Iterator<Item = (&str, &AnalysisVerdict)> {
        self.waves
            .iter()
            .flat_map(|w| w.analysis.iter().map(move |v| (w.name.as_str(), v)))
    }
}

impl AnalysisVerdict {
    /// One line for people: the wave, the gate, the verdict and what it found.
    pub(crate) fn line(&self, wave: &str) -> String {
        let verdict = match (self.passed, self.inconclusive) {
            (true, false) => "passed",
            (true, true) => "inconclusive (warn)",
            (false, true) => "inconclusive (fail)",
            (false, false) => "failed",
        };
        format!("wave {wave:?} {:?} {verdict}: {}", self.name, self.detail)
    }
}
