//! One command's life at the agent:
//! `accepted → precheck → backup → apply → restart → validate → done`, or on any failure after
//! the backup `→ rollback → rolled_back | rollback_failed`. Every transition that matters for
//! recovery is journalled before it is acted on.

use std::time::{Duration, Instant};

use flotilla_schemas::{
    Action, Check, CheckVerdict, Command, CommandId, GateReport, Gates, HttpCheck, Inspection,
    Measurements, Outcome, Phase, PhaseReport, PhaseStatus, Precondition, RunResult, Step,
    Workload, WorkloadFigures, WorkloadReport,
};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::backup::{self, BackupStore};
use crate::config::AgentConfig;
use crate::events::Events;
use crate::journal::{Journal, JournalError, Record};
use crate::steps::{self, RootDir};
use crate::supervisor::Supervisor;
use crate::template::Renderer;
use crate::{checks, confine, crashpoint, health, inspect, metrics, workload};
use flotilla_telemetry::error_chain;

/// A failure of the phase named in it; its message becomes the result's reason.
struct PhaseFailure {
    phase: Phase,
    reason: String,
}

/// Drives commands for one service.
pub struct Lifecycle {
    pub config: AgentConfig,
    pub journal: Journal,
    pub backups: BackupStore,
    pub supervisor: Supervisor,
    pub http: reqwest::Client,
}

/// Collects phase reports and publishes progress as phases start and end.
struct Tracker<'a> {
    events: &'a Events,
    command: &'a Command,
    phases: Vec<PhaseReport>,
}

impl Tracker<'_> {
    async fn run<T, F>(&mut self, phase: Phase, work: F) -> Result<T, PhaseFailure>
    where
        F: Future<Output = Result<T, String>>,
    {
        self.events
            .progress(self.command, phase, PhaseStatus::Started, None, None)
            .await;
        let started = Instant::now();
        let span = tracing::info_span!(
            "phase",
            otel.name = phase.as_str(),
            flotilla.run_id = %self.command.run_id,
            flotilla.service = %self.command.service,
            flotilla.instance = %self.command.instance,
            flotilla.phase = phase.as_str(),
        );
        let outcome = work.instrument(span).await;
        let elapsed = started.elapsed();
        let (status, detail) = match &outcome {
            Ok(_) => (PhaseStatus::Succeeded, None),
            Err(reason) => (PhaseStatus::Failed, Some(reason.clone())),
        };
        tracing::info!(
            phase = phase.as_str(),
            ?status,
            elapsed_ms = elapsed.as_millis() as u64,
            detail,
            "phase ended"
        );
        self.events
            .progress(self.command, phase, status, Some(elapsed), detail.clone())
            .await;
        self.phases.push(PhaseReport {
            phase,
            status,
            duration_ms: elapsed.as_millis() as u64,
            detail,
        });
        outcome.map_err(|reason| PhaseFailure { phase, reason })
    }
}

/// What a migrate command asks for.
struct MigrateSpec<'a> {
    steps: &'a [Step],
    health: &'a [HttpCheck],
    gates: &'a Gates,
    preconditions: &'a [Precondition],
    checks: &'a [Check],
    workloads: &'a [Workload],
}

/// What precheck resolved, for the later phases.
struct Prepared {
    /// Content of `write_file` steps after placeholders are resolved, in step order.
    contents: Rendered,
    /// Functional checks with their placeholders resolved.
    checks: Vec<Check>,
    /// Workloads with their placeholders resolved, and what each measured before the change.
    workloads: Vec<(Workload, WorkloadFigures)>,
}

/// What [`Lifecycle::accept`] decided.
pub enum Acceptance {
    /// Already answered: publish this result.
    Done(Box<RunResult>),
    /// Journalled: go on with [`Lifecycle::execute`].
    Proceed,
}

/// Content of `write_file` steps after placeholders are resolved, in step order.
type Rendered = Vec<Option<String>>;

impl Lifecycle {
    /// Journals a new command, or answers at once for one that is already known (its stored
    /// result, marked replayed) or must be refused. Once this returns `Proceed`, the journal owns
    /// the command: the broker may forget it, a crash is recovered from the journal.
    pub fn accept(&mut self, command: &Command) -> Result<Acceptance, JournalError> {
        if let Some(result) = self
            .journal
            .get(command.command_id)
            .and_then(|e| e.result.clone())
        {
            tracing::info!(command_id = %command.command_id, "command already handled, re-sending its result");
            return Ok(Acceptance::Done(Box::new(RunResult {
                replayed: true,
                ..result
            })));
        }
        if let Some(reason) = self.refusal(command) {
            let result = refused(command, reason, Vec::new());
            self.journal.append(Record::Accepted {
                command: command.clone(),
            })?;
            self.journal.append(Record::Finished {
                result: result.clone(),
            })?;
            return Ok(Acceptance::Done(Box::new(result)));
        }
        self.journal.append(Record::Accepted {
            command: command.clone(),
        })?;
        crashpoint::reached(&self.config.agent.state_dir, "accepted");
        Ok(Acceptance::Proceed)
    }

    /// Carries out a command that [`Lifecycle::accept`] took; returns its journalled result.
    pub async fn execute(
        &mut self,
        command: Command,
        events: &Events,
    ) -> Result<RunResult, JournalError> {
        let mut tracker = Tracker {
            events,
            command: &command,
            phases: Vec::new(),
        };
        let result = match &command.action {
            Action::Migrate {
                steps,
                health,
                gates,
                preconditions,
                checks,
                workloads,
            } => {
                let spec = MigrateSpec {
                    steps,
                    health,
                    gates,
                    preconditions,
                    checks,
                    workloads,
                };
                self.migrate(&command, &spec, &mut tracker).await?
            }
            Action::Rollback { migration } => {
                self.rollback_migration(&command, *migration, &mut tracker)
                    .await
            }
            Action::Finalize { migration } => {
                self.finalize(&command, *migration, &mut tracker).await
            }
            Action::Inspect {
                checks,
                config_files,
            } => {
                self.inspect(&command, checks, config_files, &mut tracker)
                    .await
            }
        };
        self.journal.append(Record::Finished {
            result: result.clone(),
        })?;
        Ok(result)
    }

    /// Why the command must be refused outright, if it must.
    fn refusal(&self, command: &Command) -> Option<String> {
        if command.service != self.config.service.name
            || command.instance != self.config.agent.instance
        {
            return Some(format!(
                "command is addressed to {}/{}, this agent is {}/{}",
                command.service,
                command.instance,
                self.config.service.name,
                self.config.agent.instance
            ));
        }
        let now = OffsetDateTime::now_utc();
        let skew = self.config.security.clock_skew;
        if command.expires_at + skew < now {
            return Some(format!("command expired at {}", command.expires_at));
        }
        if command.issued_at > now + skew {
            return Some(format!(
                "command is issued in the future ({}), beyond the allowed clock skew",
                command.issued_at
            ));
        }
        None
    }

    async fn migrate(
        &mut self,
        command: &Command,
        spec: &MigrateSpec<'_>,
        tracker: &mut Tracker<'_>,
    ) -> Result<RunResult, JournalError> {
        let mut measurements = Measurements::default();
        let prepared = match tracker
            .run(
                Phase::Precheck,
                self.precheck(spec, command.run_id, &mut measurements),
            )
            .await
        {
            Ok(prepared) => prepared,
            Err(failure) => {
                return Ok(refused(
                    command,
                    failure.to_string(),
                    tracker.phases.clone(),
                ));
            }
        };
        let root = self.config.service.root.clone();
        let backups = self.backups.clone();
        let id = command.command_id;
        let backup = tracker
            .run(Phase::Backup, async {
                backups.take(&root, id).map_err(|e| error_chain(&e))
            })
            .await;
        let backup = match backup {
            Ok(backup) => backup,
            Err(failure) => {
                return Ok(refused(
                    command,
                    failure.to_string(),
                    tracker.phases.clone(),
                ));
            }
        };
        measurements.backup_files = Some(backup.manifest.files());
        measurements.backup_bytes = Some(backup.manifest.bytes());
        self.journal.append(Record::BackedUp { command_id: id })?;
        crashpoint::reached(&self.config.agent.state_dir, "backed_up");
        self.journal.append(Record::Applying { command_id: id })?;

        let mut gate_reports = Vec::new();
        let mut workload_reports: Vec<WorkloadReport> = prepared
            .workloads
            .iter()
            .map(|(w, before)| WorkloadReport {
                name: w.name().to_owned(),
                before: before.clone(),
                after: None,
            })
            .collect();
        let change = async {
            tracker
                .run(Phase::Apply, self.apply(spec.steps, &prepared.contents))
                .await?;
            let startup = tracker
                .run(Phase::Restart, async {
                    self.supervisor.restart().await.map_err(|e| error_chain(&e))
                })
                .await?;
            crashpoint::reached(&self.config.agent.state_dir, "restarted");
            measurements.startup_ms_after = Some(startup.as_millis() as u64);
            let validation = self.validate(
                command,
                spec,
                &prepared,
                &mut measurements,
                &mut gate_reports,
                &mut workload_reports,
            );
            tracker.run(Phase::Validate, validation).await?;
            crashpoint::reached(&self.config.agent.state_dir, "validated");
            Ok::<_, PhaseFailure>(())
        };
        let finished = match change.await {
            Ok(()) => result(command, Outcome::Succeeded, None, measurements),
            Err(failure) => {
                let (outcome, reason) = self.roll_back(&backup, failure.to_string(), tracker).await;
                result(command, outcome, Some(reason), measurements)
            }
        };
        Ok(RunResult {
            phases: tracker.phases.clone(),
            gates: gate_reports,
            workloads: workload_reports,
            ..finished
        })
    }

    /// Checks everything that can be checked before a change: paths, allowed programs, that
    /// every placeholder resolves, and that the service is healthy now. Takes the baseline.
    async fn precheck(
        &self,
        spec: &MigrateSpec<'_>,
        command_run_id: flotilla_schemas::RunId,
        measurements: &mut Measurements,
    ) -> Result<Prepared, String> {
        let steps = spec.steps;
        let vars = self.vars();
        let renderer = Renderer {
            vars: &vars,
            secrets: &self.config.secrets,
        };
        let root = RootDir::open(&self.config.service.root).map_err(|e| error_chain(&e))?;
        for condition in spec.preconditions {
            checks::precondition(&root, condition)?;
        }
        let mut rendered_checks = Vec::with_capacity(spec.checks.len());
        for (index, check) in spec.checks.iter().enumerate() {
            let at =
                |e: &dyn std::fmt::Display| format!("check {} ({}): {e}", index + 1, check.kind());
            if let Check::Command { program, .. } = check
                && !self.allowed(program)
            {
                return Err(at(&steps::StepError::NotAllowed {
                    program: program.clone(),
                }));
            }
            rendered_checks.push(checks::render(&renderer, check).map_err(|e| at(&e))?);
        }
        let mut rendered_workloads = Vec::with_capacity(spec.workloads.len());
        for workload in spec.workloads {
            let at = |e: &dyn std::fmt::Display| format!("workload {}: {e}", workload.name());
            if let Workload::Job { program, .. } = workload
                && !self.allowed(program)
            {
                return Err(at(&steps::StepError::NotAllowed {
                    program: program.clone(),
                }));
            }
            rendered_workloads.push(workload::render(&renderer, workload).map_err(|e| at(&e))?);
        }
        let mut rendered = Vec::with_capacity(steps.len());
        for (index, step) in steps.iter().enumerate() {
            let at =
                |e: &dyn std::fmt::Display| format!("step {} ({}): {e}", index + 1, step.name());
            let content = match step {
                Step::WriteFile { path, content, .. } => {
                    confine::relative_path(path).map_err(|e| at(&e))?;
                    Some(renderer.render(content).map_err(|e| at(&e))?)
                }
                Step::ReplaceText { path, .. } | Step::Delete { path } => {
                    confine::relative_path(path).map_err(|e| at(&e))?;
                    None
                }
                Step::RunCommand { program, .. } => {
                    if !self.allowed(program) {
                        return Err(at(&steps::StepError::NotAllowed {
                            program: program.clone(),
                        }));
                    }
                    None
                }
                Step::Restart => None,
            };
            rendered.push(content);
        }
        health::probe(
            &self.http,
            &self.config.service.health_url,
            Some(200),
            None,
            Some(command_run_id),
        )
        .await
        .map_err(|e| format!("the service is not healthy before the migration: {e}"))?;
        measurements.startup_ms_before =
            self.supervisor.last_startup().map(|d| d.as_millis() as u64);
        measurements.rss_bytes_before = self.supervisor.pid().and_then(metrics::tree_rss);
        // The baseline: each workload, once, before anything changes.
        let mut workloads = Vec::with_capacity(rendered_workloads.len());
        for workload in rendered_workloads {
            let before = self.measure(&workload, command_run_id).await;
            workloads.push((workload, before));
        }
        Ok(Prepared {
            contents: rendered,
            checks: rendered_checks,
            workloads,
        })
    }

    /// Runs a workload once, in a span that carries its figures.
    async fn measure(
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
        let figures = workload::measure(
            &self.http,
            &self.config.service.root,
            workload,
            run_id,
            self.config.commands.run_as,
        )
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

    /// Whether `program` is on the agent's allow-list (exact match).
    fn allowed(&self, program: &str) -> bool {
        self.config
            .commands
            .allow
            .iter()
            .any(|allowed| allowed == program)
    }

    fn vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut vars = self.config.vars.clone();
        vars.entry("service".into())
            .or_insert_with(|| self.config.service.name.to_string());
        vars.entry("instance".into())
            .or_insert_with(|| self.config.agent.instance.to_string());
        vars
    }

    async fn apply(&mut self, steps: &[Step], rendered: &Rendered) -> Result<(), String> {
        let root = RootDir::open(&self.config.service.root).map_err(|e| error_chain(&e))?;
        for (index, (step, content)) in steps.iter().zip(rendered).enumerate() {
            let at = |e: String| format!("step {} ({}): {e}", index + 1, step.name());
            let outcome = match step {
                Step::WriteFile { path, mode, .. } => {
                    let content = content
                        .as_deref()
                        .expect("precheck rendered every write_file");
                    root.write_file(path, content.as_bytes(), *mode)
                        .map_err(|e| e.to_string())
                }
                Step::ReplaceText {
                    path,
                    find,
                    replace,
                } => root
                    .replace_text(path, find, replace)
                    .map_err(|e| e.to_string()),
                Step::Delete { path } => root.delete(path).map_err(|e| e.to_string()),
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
                    self.config.commands.run_as,
                )
                .await
                .map_err(|e| e.to_string()),
                Step::Restart => self
                    .supervisor
                    .restart()
                    .await
                    .map(|_| ())
                    .map_err(|e| error_chain(&e)),
            };
            outcome.map_err(at)?;
            if index == 0 {
                crashpoint::reached(&self.config.agent.state_dir, "applying");
            }
        }
        Ok(())
    }

    /// Health checks, then the regression gates against the baseline.
    async fn validate(
        &mut self,
        command: &Command,
        spec: &MigrateSpec<'_>,
        prepared: &Prepared,
        measurements: &mut Measurements,
        reports: &mut Vec<GateReport>,
        workload_reports: &mut [WorkloadReport],
    ) -> Result<(), String> {
        let default_check;
        let checks = if spec.health.is_empty() {
            default_check = [HttpCheck {
                url: None,
                method: None,
                body: None,
                expect_status: 200,
                body_contains: None,
                timeout_ms: self.config.service.startup_timeout.as_millis() as u64,
            }];
            &default_check[..]
        } else {
            spec.health
        };
        for check in checks {
            let url = check
                .url
                .as_deref()
                .unwrap_or(&self.config.service.health_url);
            health::check(&self.http, url, check, command.run_id)
                .await
                .map_err(|e| e.to_string())?;
        }
        for check in &prepared.checks {
            let passed = checks::run(
                &self.http,
                &self.config.service.root,
                check,
                &self.config.service.health_url,
                command.run_id,
                self.config.commands.run_as,
            )
            .await?;
            tracing::info!(check = %passed, "functional check passed");
        }
        measurements.rss_bytes_after = self.supervisor.pid().and_then(metrics::tree_rss);
        *reports = evaluate_gates(spec.gates, measurements);
        // One start is one sample: a start slowed by a busy host would roll a healthy service
        // back. A tripped startup or memory gate is confirmed by a second restart, keeping the
        // better figures; a real regression trips both times.
        if reports.iter().any(|g| !g.passed) {
            tracing::info!("a startup or memory gate tripped: confirming with a second restart");
            let restarted = self
                .supervisor
                .restart()
                .await
                .map_err(|e| format!("restart to confirm a gate: {}", error_chain(&e)))?;
            for check in checks {
                let url = check
                    .url
                    .as_deref()
                    .unwrap_or(&self.config.service.health_url);
                health::check(&self.http, url, check, command.run_id)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            {
                let again = restarted.as_millis() as u64;
                measurements.startup_ms_after = measurements
                    .startup_ms_after
                    .map(|first| first.min(again))
                    .or(Some(again));
                let rss = self.supervisor.pid().and_then(metrics::tree_rss);
                measurements.rss_bytes_after = match (measurements.rss_bytes_after, rss) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                *reports = evaluate_gates(spec.gates, measurements);
            }
        }
        for ((workload, before), report) in
            prepared.workloads.iter().zip(workload_reports.iter_mut())
        {
            let after = self.measure(workload, command.run_id).await;
            reports.extend(workload::gates(workload.name(), before, &after, spec.gates));
            report.after = Some(after);
        }
        let tripped: Vec<String> = reports
            .iter()
            .filter(|g| !g.passed)
            .map(|g| {
                format!(
                    "{} regression: {} after, {} before, limit {}",
                    g.gate, g.after, g.before, g.limit
                )
            })
            .collect();
        if tripped.is_empty() {
            Ok(())
        } else {
            Err(tripped.join("; "))
        }
    }

    /// Restores `backup`, restarts the service and proves it healthy.
    async fn roll_back(
        &mut self,
        backup: &backup::Backup,
        cause: String,
        tracker: &mut Tracker<'_>,
    ) -> (Outcome, String) {
        let root = self.config.service.root.clone();
        let restored = tracker
            .run(Phase::Rollback, async {
                self.supervisor.stop().await;
                backup::restore(backup, &root)
                    .map_err(|e| format!("restore: {}", error_chain(&e)))?;
                self.supervisor
                    .start()
                    .await
                    .map_err(|e| format!("restart after restore: {}", error_chain(&e)))?;
                let check = HttpCheck {
                    url: None,
                    method: None,
                    body: None,
                    expect_status: 200,
                    body_contains: None,
                    timeout_ms: self.config.service.startup_timeout.as_millis() as u64,
                };
                health::check(
                    &self.http,
                    &self.config.service.health_url,
                    &check,
                    tracker.command.run_id,
                )
                .await
                .map_err(|e| format!("unhealthy after restore: {e}"))?;
                Ok(())
            })
            .await;
        match restored {
            Ok(()) => (Outcome::RolledBack, cause),
            Err(failure) => (Outcome::RollbackFailed, format!("{cause}; then {failure}")),
        }
    }

    /// A rollback asked for after the migration had succeeded (the run failed elsewhere).
    async fn rollback_migration(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let migrated = self
            .journal
            .get(migration)
            .and_then(|e| e.result.as_ref())
            .map(|r| r.outcome);
        if migrated != Some(Outcome::Succeeded) {
            let state = migrated.map_or("unknown to this agent", Outcome::as_str);
            return refused(
                command,
                format!("migration {migration} is {state}: nothing to roll back"),
                Vec::new(),
            );
        }
        let backup = match self.backups.load(migration) {
            Ok(backup) => backup,
            Err(e) => {
                return refused(
                    command,
                    format!("cannot roll back: {}", error_chain(&e)),
                    Vec::new(),
                );
            }
        };
        let (outcome, reason) = self
            .roll_back(
                &backup,
                "rollback requested by the coordinator".into(),
                tracker,
            )
            .await;
        RunResult {
            phases: tracker.phases.clone(),
            ..result(command, outcome, Some(reason), Measurements::default())
        }
    }

    /// The cross-service stage: runs the checks and reports the shape of the configuration
    /// files, changing nothing. The coordinator judges the verdicts across the fleet.
    async fn inspect(
        &mut self,
        command: &Command,
        checks: &[Check],
        config_files: &[String],
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let inspection = tracker
            .run(Phase::Inspect, async {
                let vars = self.vars();
                let renderer = Renderer {
                    vars: &vars,
                    secrets: &self.config.secrets,
                };
                let mut verdicts = Vec::new();
                for check in checks {
                    let kind = check.kind().to_owned();
                    let verdict = match checks::render(&renderer, check) {
                        Err(e) => Err(e.to_string()),
                        Ok(Check::Command { program, .. }) if !self.allowed(&program) => {
                            Err(steps::StepError::NotAllowed { program }.to_string())
                        }
                        Ok(check) => {
                            checks::run(
                                &self.http,
                                &self.config.service.root,
                                &check,
                                &self.config.service.health_url,
                                command.run_id,
                                self.config.commands.run_as,
                            )
                            .await
                        }
                    };
                    let (passed, detail) = match verdict {
                        Ok(detail) => (true, detail),
                        Err(detail) => (false, detail),
                    };
                    verdicts.push(CheckVerdict {
                        kind,
                        passed,
                        detail,
                    });
                }
                let root = RootDir::open(&self.config.service.root).map_err(|e| error_chain(&e))?;
                let secrets = inspect::known_secret_values(&self.config.secrets);
                let config = config_files
                    .iter()
                    .map(|path| inspect::config_shape(&root, path, &secrets))
                    .collect();
                Ok::<_, String>(Inspection {
                    checks: verdicts,
                    config,
                })
            })
            .await;
        match inspection {
            Ok(inspection) => RunResult {
                phases: tracker.phases.clone(),
                inspection: Some(inspection),
                ..result(command, Outcome::Succeeded, None, Measurements::default())
            },
            Err(failure) => refused(command, failure.to_string(), tracker.phases.clone()),
        }
    }

    /// Drops the backup of a migration: the run is closed.
    async fn finalize(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let backups = self.backups.clone();
        let dropped = tracker
            .run(Phase::Finalize, async {
                backups.discard(migration).map_err(|e| error_chain(&e))
            })
            .await;
        match dropped {
            Ok(()) => RunResult {
                phases: tracker.phases.clone(),
                ..result(command, Outcome::Finalized, None, Measurements::default())
            },
            Err(failure) => refused(command, failure.to_string(), tracker.phases.clone()),
        }
    }

    /// Finishes what a crash interrupted: a migration that had backed up is restored; one that
    /// had not changed anything is refused. Runs before the service starts and before the agent
    /// takes new commands. Returns the results to publish.
    pub fn recover(&mut self) -> Result<Vec<RunResult>, JournalError> {
        let mut results = Vec::new();
        for entry in self.journal.unfinished() {
            let command = entry.command.expect("unfinished entries have a command");
            let id = command.command_id;
            let recover_phase = |status, detail: Option<String>| PhaseReport {
                phase: Phase::Recover,
                status,
                duration_ms: 0,
                detail,
            };
            let result = if entry.applying || entry.backed_up {
                let restored = self
                    .backups
                    .load(id)
                    .and_then(|b| backup::restore(&b, &self.config.service.root));
                match restored {
                    Ok(()) => RunResult {
                        phases: vec![recover_phase(
                            PhaseStatus::Succeeded,
                            Some("restored the backup".into()),
                        )],
                        ..result(
                            &command,
                            Outcome::RolledBack,
                            Some(
                                "the agent was interrupted mid-migration; the backup was restored"
                                    .into(),
                            ),
                            Measurements::default(),
                        )
                    },
                    Err(e) => RunResult {
                        phases: vec![recover_phase(PhaseStatus::Failed, Some(error_chain(&e)))],
                        ..result(
                            &command,
                            Outcome::RollbackFailed,
                            Some(format!(
                                "the agent was interrupted mid-migration and the restore failed: {}",
                                error_chain(&e)
                            )),
                            Measurements::default(),
                        )
                    },
                }
            } else {
                let _ = self.backups.discard(id);
                RunResult {
                    phases: vec![recover_phase(
                        PhaseStatus::Succeeded,
                        Some("nothing had changed".into()),
                    )],
                    ..result(
                        &command,
                        Outcome::Refused,
                        Some("the agent was interrupted before changing anything".into()),
                        Measurements::default(),
                    )
                }
            };
            tracing::warn!(command_id = %id, outcome = result.outcome.as_str(), "recovered an interrupted command");
            self.journal.append(Record::Finished {
                result: result.clone(),
            })?;
            results.push(result);
        }
        Ok(results)
    }
}

/// Compares the figures after the change with the baseline. A gate without both figures is not
/// evaluated (e.g. no startup baseline when the agent could not start the service itself).
fn evaluate_gates(gates: &Gates, m: &Measurements) -> Vec<GateReport> {
    let gate = |name: &str, before: Option<u64>, after: Option<u64>, pct: f64, slack: u64| {
        let (before, after) = (before?, after?);
        let limit =
            ((before as f64 * (1.0 + pct / 100.0)) as u64).max(before.saturating_add(slack));
        Some(GateReport {
            gate: name.to_owned(),
            before,
            after,
            limit,
            passed: after <= limit,
            higher_is_better: false,
            inconclusive: false,
        })
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

impl std::fmt::Display for PhaseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.phase.as_str(), self.reason)
    }
}

fn result(
    command: &Command,
    outcome: Outcome,
    reason: Option<String>,
    measurements: Measurements,
) -> RunResult {
    RunResult {
        schema: Default::default(),
        run_id: command.run_id,
        command_id: command.command_id,
        service: command.service.clone(),
        instance: command.instance.clone(),
        at: OffsetDateTime::now_utc(),
        outcome,
        reason,
        phases: Vec::new(),
        measurements,
        gates: Vec::new(),
        workloads: Vec::new(),
        inspection: None,
        replayed: false,
    }
}

fn refused(command: &Command, reason: String, phases: Vec<PhaseReport>) -> RunResult {
    RunResult {
        phases,
        ..result(
            command,
            Outcome::Refused,
            Some(reason),
            Measurements::default(),
        )
    }
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
