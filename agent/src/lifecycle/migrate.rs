//! A migration: precheck with baseline, backup, apply, restart, validate; a failure after the
//! backup rolls back.

use std::time::Duration;

use flotilla_schemas::{
    Check, Command, CommandId, GateReport, Gates, HttpCheck, Measurements, MemorySource, Outcome,
    Phase, RunResult, Step, Workload, WorkloadFigures, WorkloadReport,
};
use tracing::Instrument;

use super::Lifecycle;
use super::check::{MigrateSpec, Rendered};
use super::error::{PhaseError, PhaseFailure, Place};
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::backup::Backup;
use crate::journal::{JournalError, Record};
use crate::steps::{self, RootDir};
use crate::{checks, crashpoint, health, metrics, workload};

/// What precheck resolved, for the later phases.
pub(super) struct Prepared {
    /// The steps with their fields expanded.
    pub(super) steps: Vec<Step>,
    /// Content of `write_file` steps after placeholders are resolved, in step order.
    pub(super) contents: Rendered,
    /// Health checks with their placeholders resolved.
    pub(super) health: Vec<HttpCheck>,
    /// Functional checks with their placeholders resolved.
    pub(super) checks: Vec<Check>,
    /// Workloads with their placeholders resolved, and what each measured before the change.
    pub(super) workloads: Vec<(Workload, WorkloadFigures)>,
}

/// What a migration measured and judged, for its result.
#[derive(Default)]
pub(super) struct Findings {
    pub(super) measurements: Measurements,
    pub(super) gates: Vec<GateReport>,
    pub(super) workloads: Vec<WorkloadReport>,
}

impl Lifecycle {
    pub(super) async fn migrate(
        &mut self,
        command: &Command,
        spec: &MigrateSpec<'_>,
        tracker: &mut Tracker<'_>,
    ) -> Result<RunResult, JournalError> {
        let mut findings = Findings::default();
        let precheck = self.precheck(spec, command.run_id, &mut findings.measurements);
        let prepared = match tracker.run(Phase::Precheck, precheck).await {
            Ok(prepared) => prepared,
            Err(failure) => {
                return Ok(refused(
                    command,
                    failure.to_string(),
                    tracker.phases.clone(),
                ));
            }
        };
        let id = command.command_id;
        let backup = match tracker.run(Phase::Backup, self.back_up(id)).await {
            Ok(backup) => backup,
            Err(failure) => {
                return Ok(refused(
                    command,
                    failure.to_string(),
                    tracker.phases.clone(),
                ));
            }
        };
        findings.measurements.backup_files = Some(backup.manifest.files());
        findings.measurements.backup_bytes = Some(backup.manifest.bytes());
        // The root is about to change: the backup and the `applying` record must both be
        // durable first, and one barrier makes them so (see `make_durable`).
        if let Err(failure) = self.make_durable(id).await? {
            let _ = self.backups.discard(id);
            return Ok(refused(
                command,
                failure.to_string(),
                tracker.phases.clone(),
            ));
        }
        crashpoint::reached(&self.config.agent.state_dir, "backed_up");

        findings.workloads = prepared
            .workloads
            .iter()
            .map(|(w, before)| WorkloadReport {
                name: w.name().to_owned(),
                before: before.clone(),
                after: None,
            })
            .collect();
        let change = async {
            let applied = tracker
                .run(
                    Phase::Apply,
                    self.apply(&prepared.steps, &prepared.contents),
                )
                .await?;
            // The written files' fsyncs run while the service restarts and is validated
            // (see `apply`); `finished` is written only once they returned.
            let durable = tokio::task::spawn_blocking(move || applied.sync());
            let validated = self
                .restart_and_validate(command, spec, &prepared, &mut findings, tracker)
                .await;
            let synced = durable.await;
            validated?;
            let error = match synced {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => PhaseError::Step(e),
                Err(error) => PhaseError::Task {
                    what: "apply",
                    error,
                },
            };
            Err(PhaseFailure {
                phase: Phase::Apply,
                error,
            })
        };
        let outcome = change.await;
        let Findings {
            measurements,
            gates,
            workloads,
        } = findings;
        let finished = match outcome {
            Ok(()) => result(command, Outcome::Succeeded, None, measurements),
            Err(failure) => {
                let (outcome, reason) = self.roll_back(id, failure.to_string(), tracker).await;
                result(command, outcome, Some(reason), measurements)
            }
        };
        Ok(RunResult {
            phases: tracker.phases.clone(),
            gates,
            workloads,
            ..finished
        })
    }

    /// After the files changed: the restart (a job's run, for a job) and the validation that
    /// judges it, each a phase, with the crash points the fault tests stop at.
    async fn restart_and_validate(
        &mut self,
        command: &Command,
        spec: &MigrateSpec<'_>,
        prepared: &Prepared,
        findings: &mut Findings,
        tracker: &mut Tracker<'_>,
    ) -> Result<(), PhaseFailure> {
        if let Some(job) = self.job_config() {
            // A job's "restart" is its run, and its figures are what validation judges.
            let run = self.job_restart_phase(&job, &mut findings.measurements.job_after);
            tracker.run(Phase::Restart, run).await?;
            crashpoint::reached(&self.config.agent.state_dir, "restarted");
            let ids = (command.command_id, command.run_id);
            let validation = self.job_validate(&job, ids, spec.gates, prepared, findings);
            tracker.run(Phase::Validate, validation).await?;
            crashpoint::reached(&self.config.agent.state_dir, "validated");
            return Ok(());
        }
        let startup = tracker
            .run(Phase::Restart, async {
                self.supervisor.restart().await.map_err(PhaseError::Service)
            })
            .await?;
        crashpoint::reached(&self.config.agent.state_dir, "restarted");
        findings.measurements.startup_ms_after = Some(startup.as_millis() as u64);
        let validation = self.validate(command.run_id, spec, prepared, findings);
        tracker.run(Phase::Validate, validation).await?;
        crashpoint::reached(&self.config.agent.state_dir, "validated");
        Ok(())
    }

    /// The precheck of a migration: [`Lifecycle::check`], then the baseline (startup time,
    /// memory, or a job's run; each workload once) that validation compares with.
    pub(super) async fn precheck(
        &self,
        spec: &MigrateSpec<'_>,
        command_run_id: flotilla_schemas::RunId,
        measurements: &mut Measurements,
    ) -> Result<Prepared, PhaseError> {
        let checked = self.check(spec, command_run_id, false).await?;
        measurements.startup_ms_before =
            self.supervisor.last_startup().map(|d| d.as_millis() as u64);
        if let Some(memory) = self.memory(None) {
            measurements.rss_bytes_before = Some(memory.bytes);
            measurements.memory_source = Some(memory.source);
        }
        measurements.job_before = self.job_baseline().await?;
        // The baseline: each workload, once, before anything changes.
        let mut workloads = Vec::with_capacity(checked.workloads.len());
        for workload in checked.workloads {
            let before = self.measure(&workload, command_run_id).await;
            workloads.push((workload, before));
        }
        Ok(Prepared {
            steps: checked.steps,
            contents: checked.contents,
            health: checked.health,
            checks: checked.checks,
            workloads,
        })
    }

    /// Makes the backup of `id` and the journal's `applying` record durable before anything
    /// changes, with one barrier when the journal is on the backups' file system: the record is
    /// written (not fsynced), then one `syncfs` commits both. Why that is safe: apply starts only
    /// once the barrier returned, so after a power loss either the barrier returned (both are
    /// durable: recovery restores the backup, as before) or the root is untouched; then the
    /// journal may hold `applying` without a whole backup, which recovery recognises
    /// (`BackupStore::is_complete`) and answers "nothing had changed". A crash of the process
    /// alone loses nothing written. Elsewhere: the backups' `syncfs`, then the record's fsync
    /// (the record durable only after the backup is). Either way the barrier also commits the
    /// command's `accepted` record, written before it without an fsync (`durable_later`). The inner error is the backup's
    /// `syncfs` (refused, the backup dropped); the outer, the journal's (which stops the agent).
    async fn make_durable(
        &mut self,
        id: CommandId,
    ) -> Result<Result<(), PhaseError>, JournalError> {
        let shared = self.backups.shares_file_system_with(self.journal.path());
        let backups = self.backups.clone();
        let sync = || async move {
            tokio::task::spawn_blocking(move || backups.sync())
                .await
                .map_err(|error| PhaseError::Task {
                    what: "backup",
                    error,
                })?
                .map_err(PhaseError::Backup)
        };
        if shared {
            self.journal
                .append_lazily(Record::Applying { command_id: id })?;
            Ok(sync().await)
        } else {
            if let Err(e) = sync().await {
                return Ok(Err(e));
            }
            self.journal.append(Record::Applying { command_id: id })?;
            Ok(Ok(()))
        }
    }

    /// Backs the service root up for migration `id`, not yet durably (`make_durable`).
    async fn back_up(&self, id: CommandId) -> Result<Backup, PhaseError> {
        let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
        // Off the runtime's thread: a big tree takes seconds to copy.
        let backup = tokio::task::spawn_blocking(move || backups.take_unsynced(&root, id))
            .await
            .map_err(|error| PhaseError::Task {
                what: "backup",
                error,
            })?
            .map_err(PhaseError::Backup)?;
        self.ops.backup(backup.manifest.bytes());
        Ok(backup)
    }

    /// The service's memory now; with `like` (the baseline's source), from that source only.
    pub(super) fn memory(&self, like: Option<MemorySource>) -> Option<metrics::Memory> {
        metrics::service_memory(self.supervisor.pid()?, like)
    }

    /// Runs a workload once, in a span that carries its figures.
    pub(super) async fn measure(
        &self,
        workload: &Workload,
        run_id: flotilla_schemas::RunId,
    ) -> WorkloadFigures {
        let span = tracing::info_span!(
            "workload",
            flotilla.run_id = %run_id,
            flotilla.service = %self.config.service.name,
            flotilla.instance = %self.config.agent.instance,
            flotilla.workload = workload.name(),
            workload.samples = tracing::field::Empty,
            workload.errors = tracing::field::Empty,
            workload.p95_ms = tracing::field::Empty,
            workload.duration_ms = tracing::field::Empty,
            workload.throughput = tracing::field::Empty,
        );
        let figures = workload::measure(&self.context(run_id), workload)
            .instrument(span.clone())
            .await;
        span.record("workload.samples", figures.samples);
        span.record("workload.errors", figures.errors);
        if let Some(p95) = figures.p95_ms {
            span.record("workload.p95_ms", p95);
        }
        if let Some(duration) = figures.duration_ms {
            span.record("workload.duration_ms", duration);
        }
        if let Some(throughput) = figures.throughput {
            span.record("workload.throughput", throughput);
        }
        span.in_scope(|| {
            tracing::info!(
                workload = workload.name(),
                samples = figures.samples,
                errors = figures.errors,
                p95_ms = figures.p95_ms,
                duration_ms = figures.duration_ms,
                throughput = figures.throughput,
                "workload measured"
            )
        });
        figures
    }

    /// Carries out the steps in order, with the content precheck rendered. Returns the files
    /// written, not yet fsynced: the caller fsyncs them while the service restarts and is
    /// validated, and writes `finished` only after. Why that is safe: what runs meanwhile reads
    /// the files from the page cache, which a crash of the process alone (kill -9) keeps, so
    /// only a power loss can lose them, and a power loss before `finished` is durable leaves
    /// the journal at `applying`, which recovery answers by restoring the backup (made
    /// durable before the first step), as it did when each file was fsynced by its step. The
    /// order that matters is unchanged: every file durable before `finished` is. A failed
    /// fsync fails the migration (`apply: …`), which is rolled back.
    pub(super) async fn apply(
        &mut self,
        steps: &[Step],
        rendered: &Rendered,
    ) -> Result<steps::Pending, PhaseError> {
        let root =
            RootDir::open_deferring_fsync(&self.config.service.root).map_err(PhaseError::Root)?;
        for (index, (step, content)) in steps.iter().zip(rendered).enumerate() {
            let outcome = match step {
                Step::WriteFile { path, mode, .. } => {
                    let content = content
                        .as_deref()
                        .expect("precheck rendered every write_file");
                    root.write_file(path, content.as_bytes(), *mode)
                        .map_err(PhaseError::Step)
                }
                Step::ReplaceText {
                    path,
                    find,
                    replace,
                } => root
                    .replace_text(path, find, replace)
                    .map_err(PhaseError::Step),
                Step::Delete { path } => root.delete(path).map_err(PhaseError::Step),
                Step::RunCommand {
                    program,
                    args,
                    timeout_ms,
                    env,
                } => steps::run_command(
                    &self.config.service.root,
                    program,
                    args,
                    env,
                    Duration::from_millis(*timeout_ms),
                    &self.launcher,
                )
                .await
                .map_err(PhaseError::Step),
                Step::Restart => self
                    .supervisor
                    .restart()
                    .await
                    .map(|_| ())
                    .map_err(PhaseError::Service),
            };
            outcome.map_err(|e| e.at(Place::step(index, step)))?;
            if index == 0 {
                crashpoint::reached(&self.config.agent.state_dir, "applying");
            }
        }
        Ok(root.into_unsynced())
    }

    /// Health checks, functional checks, then the regression gates against the baseline.
    pub(super) async fn validate(
        &mut self,
        run_id: flotilla_schemas::RunId,
        spec: &MigrateSpec<'_>,
        prepared: &Prepared,
        findings: &mut Findings,
    ) -> Result<(), PhaseError> {
        let default_check;
        let health = if spec.health.is_empty() {
            default_check = [self.default_health_check()];
            &default_check[..]
        } else {
            &prepared.health[..]
        };
        self.health_checks(health, run_id).await?;
        let cx = self.context(run_id);
        for check in &prepared.checks {
            let passed = checks::run(&cx, check).await.map_err(PhaseError::Check)?;
            tracing::info!(check = %passed, "functional check passed");
        }
        let measurements = &mut findings.measurements;
        if let Some(memory) = self.memory(measurements.memory_source) {
            measurements.rss_bytes_after = Some(memory.bytes);
            measurements.memory_source = Some(memory.source);
        }
        findings.gates = evaluate_gates(spec.gates, measurements);
        if findings.gates.iter().any(|g| !g.passed) {
            self.confirm_gates(health, run_id, spec.gates, findings)
                .await?;
        }
        for ((workload, before), report) in
            prepared.workloads.iter().zip(findings.workloads.iter_mut())
        {
            let after = self.measure(workload, run_id).await;
            findings
                .gates
                .extend(workload::gates(workload.name(), before, &after, spec.gates));
            report.after = Some(after);
        }
        let tripped = regressions(&findings.gates, findings.measurements.memory_source);
        if tripped.is_empty() {
            Ok(())
        } else {
            Err(PhaseError::Regressions(tripped))
        }
    }

    /// One start is one sample: a start slowed by a busy host would roll a healthy service
    /// back. A tripped startup or memory gate is confirmed by a second restart, keeping the
    /// better figures; a real regression trips both times.
    async fn confirm_gates(
        &mut self,
        health: &[HttpCheck],
        run_id: flotilla_schemas::RunId,
        gates: &Gates,
        findings: &mut Findings,
    ) -> Result<(), PhaseError> {
        tracing::info!("a startup or memory gate tripped: confirming with a second restart");
        let restarted = self
            .supervisor
            .restart()
            .await
            .map_err(PhaseError::ConfirmRestart)?;
        self.health_checks(health, run_id).await?;
        let measurements = &mut findings.measurements;
        let again = restarted.as_millis() as u64;
        measurements.startup_ms_after = measurements
            .startup_ms_after
            .map(|first| first.min(again))
            .or(Some(again));
        let again = self.memory(measurements.memory_source).map(|m| m.bytes);
        measurements.rss_bytes_after = match (measurements.rss_bytes_after, again) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        findings.gates = evaluate_gates(gates, measurements);
        Ok(())
    }

    /// Runs the health checks in order; the first failure ends them.
    async fn health_checks(
        &self,
        checks: &[HttpCheck],
        run_id: flotilla_schemas::RunId,
    ) -> Result<(), PhaseError> {
        for check in checks {
            let url = check
                .url
                .as_deref()
                .unwrap_or(&self.config.service.health_url);
            health::check(&self.http, url, check, run_id)
                .await
                .map_err(PhaseError::Health)?;
        }
        Ok(())
    }
}

/// The tripped gates, each described with its figures (and the memory figures' source).
fn regressions(gates: &[GateReport], memory_source: Option<MemorySource>) -> Vec<String> {
    gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| {
            let source = match (g.gate.as_str(), memory_source) {
                ("memory_bytes", Some(source)) => format!(" ({})", source.as_str()),
                _ => String::new(),
            };
            format!(
                "{} regression: {} after, {} before, limit {}{source}",
                g.gate, g.after, g.before, g.limit
            )
        })
        .collect()
}

/// Compares the figures after the change with the baseline. A gate without both figures is not
/// evaluated (e.g. no startup baseline when the agent could not start the service itself).
pub(super) fn evaluate_gates(gates: &Gates, m: &Measurements) -> Vec<GateReport> {
    let gate = |name: &str, before: Option<u64>, after: Option<u64>, pct: f64, slack: u64| {
        Some(GateReport::regression(name, before?, after?, pct, slack))
    };
    [
        gate(
            "startup_ms",
            m.startup_ms_before,
            m.startup_ms_after,
            gates.startup_max_increase_pct,
            gates.startup_slack_ms,
        ),
        gate(
            "memory_bytes",
            m.rss_bytes_before,
            m.rss_bytes_after,
            gates.memory_max_increase_pct,
            gates.memory_slack_bytes,
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_trip_only_past_both_the_relative_limit_and_the_slack() {
        let gates = Gates::default();
        let m = |before, after| Measurements {
            startup_ms_before: Some(before),
            startup_ms_after: Some(after),
            ..Default::default()
        };
        // +40% but only 20 ms: within the 100 ms slack.
        assert!(evaluate_gates(&gates, &m(50, 70))[0].passed);
        // Twice a one-second start: tripped.
        let report = &evaluate_gates(&gates, &m(1000, 2000))[0];
        assert!(!report.passed);
        assert_eq!(report.limit, 1200);
        // No baseline: not evaluated.
        assert!(
            evaluate_gates(
                &gates,
                &Measurements {
                    startup_ms_after: Some(5),
                    ..Default::default()
                }
            )
            .is_empty()
        );
    }
}
