//! One command's life at the agent:
//! `accepted → precheck → backup → apply → restart → validate → done`, or on any failure after
//! the backup `→ rollback → rolled_back | rollback_failed`. Every transition that matters for
//! recovery is journalled before it is acted on.

use std::time::{Duration, Instant};

use flotilla_schemas::{
    Action, Check, CheckVerdict, Command, CommandId, GateReport, Gates, HttpCheck, Inspection,
    Measurements, MemorySource, Outcome, Phase, PhaseReport, PhaseStatus, Precondition, Preview,
    RunResult, Step, Workload, WorkloadFigures, WorkloadReport,
};
use time::OffsetDateTime;
use tracing::Instrument;

use crate::backup::{self, BackupStore, Restored};
use crate::config::AgentConfig;
use crate::events::Events;
use crate::journal::{Journal, JournalError, Record};
use crate::run_vars::RunVars;
use crate::steps::{self, RootDir};
use crate::supervisor::Supervisor;
use crate::template::Renderer;
use crate::{checks, confine, crashpoint, health, inspect, metrics, preview, workload};
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
    /// How steps, checks and job workloads start their programs.
    pub launcher: crate::children::Launcher,
    /// Scrubs secret values from what the agent publishes, journals and logs.
    pub redactor: crate::redact::Redactor,
    /// Trees that restores swapped out, to remove once the answer is out
    /// ([`Lifecycle::remove_swapped_out`]).
    pub swapped_out: Vec<std::path::PathBuf>,
    /// Where `write_file` sources (files shipped with the plan) come from; set by the session.
    pub plan_files: Option<crate::plan_files::PlanFiles>,
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
    /// Health checks with their placeholders resolved.
    health: Vec<HttpCheck>,
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

/// What [`Lifecycle::check`] resolved: the declared work with its placeholders resolved.
struct Checked {
    contents: Rendered,
    health: Vec<HttpCheck>,
    checks: Vec<Check>,
    workloads: Vec<Workload>,
}

/// A failure of step `index` (from 0), as every reason names it: `step 2 (write_file): …`.
fn at_step(index: usize, step: &Step, e: &dyn std::fmt::Display) -> String {
    format!("step {} ({}): {e}", index + 1, step.name())
}

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
            // Remembered (a replay is answered from the journal), with one write and one fsync.
            self.journal.append_all(vec![
                Record::Accepted {
                    command: command.clone(),
                },
                Record::Finished {
                    result: result.clone(),
                },
            ])?;
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
            // The session answers previews without the journal; one that got here anyway is
            // still only a preview.
            Action::Preview { .. } => self.preview(&command, events).await,
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
                let (backups, root) = (backups.clone(), root.clone());
                // Off the runtime's thread: a big tree takes seconds to copy.
                tokio::task::spawn_blocking(move || backups.take(&root, id))
                    .await
                    .map_err(|e| format!("backup task: {e}"))?
                    .map_err(|e| error_chain(&e))
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
        // One record, one fsync: the backup is durable and the root is about to change.
        self.journal.append(Record::Applying { command_id: id })?;
        crashpoint::reached(&self.config.agent.state_dir, "backed_up");

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
                let (outcome, reason) = self.roll_back(id, failure.to_string(), tracker).await;
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

    /// The precheck of a migration: [`Lifecycle::check`], then the baseline (startup time,
    /// memory, each workload once) that validation compares with.
    async fn precheck(
        &self,
        spec: &MigrateSpec<'_>,
        command_run_id: flotilla_schemas::RunId,
        measurements: &mut Measurements,
    ) -> Result<Prepared, String> {
        let checked = self.check(spec, command_run_id, false).await?;
        measurements.startup_ms_before =
            self.supervisor.last_startup().map(|d| d.as_millis() as u64);
        if let Some(memory) = self.memory(None) {
            measurements.rss_bytes_before = Some(memory.bytes);
            measurements.memory_source = Some(memory.source);
        }
        // The baseline: each workload, once, before anything changes.
        let mut workloads = Vec::with_capacity(checked.workloads.len());
        for workload in checked.workloads {
            let before = self.measure(&workload, command_run_id).await;
            workloads.push((workload, before));
        }
        Ok(Prepared {
            contents: checked.contents,
            health: checked.health,
            checks: checked.checks,
            workloads,
        })
    }

    /// Checks everything that can be checked before a change, changing nothing: preconditions,
    /// paths, allowed programs, that every placeholder resolves, and that the service is healthy
    /// now. A migration and its dry run both call it, so they cannot disagree. With
    /// `mask_secrets`, secret values in the rendered content are [`crate::template::MASK`].
    async fn check(
        &self,
        spec: &MigrateSpec<'_>,
        command_run_id: flotilla_schemas::RunId,
        mask_secrets: bool,
    ) -> Result<Checked, String> {
        let steps = spec.steps;
        let vars = self.vars();
        let run = self.run_vars(command_run_id);
        let renderer = Renderer {
            vars: &vars,
            secrets: &self.config.secrets,
            run: &run,
            mask_secrets,
        };
        let root = RootDir::open(&self.config.service.root).map_err(|e| error_chain(&e))?;
        for condition in spec.preconditions {
            checks::precondition(&root, condition)?;
        }
        let rendered_health = spec
            .health
            .iter()
            .enumerate()
            .map(|(index, check)| {
                checks::render_http(&renderer, check)
                    .map_err(|e| format!("health check {}: {e}", index + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
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
            let at = |e: &dyn std::fmt::Display| at_step(index, step, e);
            let content = match step {
                Step::WriteFile {
                    path,
                    content,
                    source,
                    ..
                } => {
                    confine::relative_path(path).map_err(|e| at(&e))?;
                    // A shipped file is fetched and its digest checked here, before any change.
                    let template = crate::plan_files::template(
                        self.plan_files.as_ref(),
                        content,
                        source.as_ref(),
                    )
                    .await
                    .map_err(|e| at(&error_chain(&e)))?;
                    Some(renderer.render_file(path, &template).map_err(|e| at(&e))?)
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
        Ok(Checked {
            contents: rendered,
            health: rendered_health,
            checks: rendered_checks,
            workloads: rendered_workloads,
        })
    }

    /// A dry run of a migration: the precheck, the free space the backup needs, then each step
    /// played against the current files in memory. Changes nothing and journals nothing; the
    /// reason it is refused with is the one the migration would stop on.
    pub async fn preview(&self, command: &Command, events: &Events) -> RunResult {
        if let Some(reason) = self.refusal(command) {
            return refused(command, reason, Vec::new());
        }
        let Action::Preview {
            steps,
            preconditions,
            checks,
            workloads,
        } = &command.action
        else {
            return refused(command, "not a preview command".into(), Vec::new());
        };
        let gates = Gates::default();
        let spec = MigrateSpec {
            steps,
            health: &[],
            gates: &gates,
            preconditions,
            checks,
            workloads,
        };
        let mut tracker = Tracker {
            events,
            command,
            phases: Vec::new(),
        };
        let checked = tracker
            .run(Phase::Precheck, self.check(&spec, command.run_id, true))
            .await;
        let phases = tracker.phases;
        let checked = match checked {
            Ok(checked) => checked,
            Err(failure) => return refused(command, failure.to_string(), phases),
        };
        let would_fail = |phase, reason| PhaseFailure { phase, reason }.to_string();
        let backup_bytes = match self.backups.check_space(&self.config.service.root) {
            Ok(bytes) => bytes,
            Err(e) => return refused(command, would_fail(Phase::Backup, error_chain(&e)), phases),
        };
        let root = match RootDir::open(&self.config.service.root) {
            Ok(root) => root,
            Err(e) => return refused(command, would_fail(Phase::Apply, error_chain(&e)), phases),
        };
        let secrets = inspect::known_secret_values(&self.config.secrets);
        let (shown, failure) = preview::play(&root, steps, &checked.contents, &secrets);
        let preview = Some(Preview {
            steps: shown,
            backup_bytes: Some(backup_bytes),
        });
        match failure {
            None => RunResult {
                phases,
                preview,
                ..result(command, Outcome::Succeeded, None, Measurements::default())
            },
            Some((index, e)) => RunResult {
                preview,
                ..refused(
                    command,
                    would_fail(Phase::Apply, at_step(index, &steps[index], &e)),
                    phases,
                )
            },
        }
    }

    /// The service's memory now; with `like` (the baseline's source), from that source only.
    fn memory(&self, like: Option<MemorySource>) -> Option<metrics::Memory> {
        metrics::service_memory(self.supervisor.pid()?, like)
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
            &self.launcher,
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

    /// The run variables of `run_id` for this agent, with the current span's trace context.
    fn run_vars(&self, run_id: flotilla_schemas::RunId) -> RunVars {
        RunVars::current(
            run_id,
            self.config.service.name.as_str(),
            self.config.agent.instance.as_str(),
        )
    }

    async fn apply(&mut self, steps: &[Step], rendered: &Rendered) -> Result<(), String> {
        let root = RootDir::open(&self.config.service.root).map_err(|e| error_chain(&e))?;
        for (index, (step, content)) in steps.iter().zip(rendered).enumerate() {
            let at = |e: String| at_step(index, step, &e);
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
                    &self.launcher,
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
                headers: Default::default(),
            }];
            &default_check[..]
        } else {
            &prepared.health[..]
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
                &self.launcher,
            )
            .await?;
            tracing::info!(check = %passed, "functional check passed");
        }
        if let Some(memory) = self.memory(measurements.memory_source) {
            measurements.rss_bytes_after = Some(memory.bytes);
            measurements.memory_source = Some(memory.source);
        }
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
                let again = self.memory(measurements.memory_source).map(|m| m.bytes);
                measurements.rss_bytes_after = match (measurements.rss_bytes_after, again) {
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
                let source = match (g.gate.as_str(), measurements.memory_source) {
                    ("memory_bytes", Some(source)) => format!(" ({})", source.as_str()),
                    _ => String::new(),
                };
                format!(
                    "{} regression: {} after, {} before, limit {}{source}",
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

    /// Restores the backup of `migration`, restarts the service and proves it healthy.
    async fn roll_back(
        &mut self,
        migration: CommandId,
        cause: String,
        tracker: &mut Tracker<'_>,
    ) -> (Outcome, String) {
        let run_id = tracker.command.run_id;
        let restored = tracker
            .run(Phase::Rollback, async {
                self.supervisor.stop().await;
                self.restore_off_thread(migration)
                    .await
                    .map_err(|e| format!("restore: {e}"))?;
                crashpoint::reached(&self.config.agent.state_dir, "restored");
                self.supervisor
                    .start()
                    .await
                    .map_err(|e| format!("restart after restore: {}", error_chain(&e)))?;
                self.healthy(run_id)
                    .await
                    .map_err(|e| format!("unhealthy after restore: {e}"))
            })
            .await;
        match restored {
            Ok(()) => (Outcome::RolledBack, cause),
            Err(failure) => (Outcome::RollbackFailed, format!("{cause}; then {failure}")),
        }
    }

    /// Puts the backup of `migration` back at the service root (see [`restore`]); a swapped-out
    /// tree is queued for removal. Blocks: for recovery, before the agent serves.
    fn restore(&mut self, migration: CommandId, full_check: bool) -> Result<Restored, String> {
        let how = restore(
            &self.backups,
            &self.config.service.root,
            migration,
            full_check,
        )?;
        self.queue_swapped_out(&how);
        Ok(how)
    }

    /// [`Lifecycle::restore`] on a blocking thread, for a rollback while the agent serves.
    async fn restore_off_thread(&mut self, migration: CommandId) -> Result<Restored, String> {
        let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
        let how = tokio::task::spawn_blocking(move || restore(&backups, &root, migration, false))
            .await
            .map_err(|e| format!("restore task: {e}"))??;
        self.queue_swapped_out(&how);
        Ok(how)
    }

    fn queue_swapped_out(&mut self, how: &Restored) {
        if let Restored::Swapped {
            swapped_out: Some(path),
        } = how
        {
            self.swapped_out.push(path.clone());
        }
    }

    /// The agent's own health check of the service, with the startup timeout.
    async fn healthy(&self, run_id: flotilla_schemas::RunId) -> Result<(), String> {
        let check = HttpCheck {
            url: None,
            method: None,
            body: None,
            expect_status: 200,
            body_contains: None,
            timeout_ms: self.config.service.startup_timeout.as_millis() as u64,
            headers: Default::default(),
        };
        health::check(&self.http, &self.config.service.health_url, &check, run_id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Compacts the journal when `always`, or when it has grown enough (see
    /// [`Journal::compaction_due`]), keeping what [`crate::journal::Retention`] says.
    pub fn compact_journal(&mut self, always: bool) -> Result<(), JournalError> {
        if !always && !self.journal.compaction_due() {
            return Ok(());
        }
        let skew = time::Duration::try_from(self.config.security.clock_skew)
            .unwrap_or(time::Duration::minutes(1));
        let backups = &self.backups;
        let backup_kept = |id| backups.exists(id);
        let retention = crate::journal::Retention {
            now: OffsetDateTime::now_utc(),
            remember_after_expiry: skew * 2,
            backup_kept: &backup_kept,
        };
        self.journal.compact(&retention)?;
        Ok(())
    }

    /// Removes, in the background, the trees that restores swapped out: after the answer, so
    /// that the coordinator does not wait for the deletion.
    pub fn remove_swapped_out(&mut self) {
        for path in self.swapped_out.drain(..) {
            tokio::task::spawn_blocking(move || backup::remove_swapped_out(&path));
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
        if let Err(e) = self.backups.load(migration) {
            return refused(
                command,
                format!("cannot roll back: {}", error_chain(&e)),
                Vec::new(),
            );
        }
        if self.backups.is_restored(migration) {
            return self.already_rolled_back(command, migration, tracker).await;
        }
        let (outcome, reason) = self
            .roll_back(
                migration,
                "rollback requested by the coordinator".into(),
                tracker,
            )
            .await;
        RunResult {
            phases: tracker.phases.clone(),
            ..result(command, outcome, Some(reason), Measurements::default())
        }
    }

    /// A second rollback of a migration whose backup an earlier rollback already swapped in:
    /// there is nothing left to restore. It says so when the root still equals the backup (and
    /// the service is healthy on it), and refuses when the root changed since (a later
    /// migration): restoring then would undo that one.
    async fn already_rolled_back(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let run_id = command.run_id;
        let mut unhealthy = false;
        let checked = tracker
            .run(Phase::Rollback, async {
                let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
                tokio::task::spawn_blocking(move || root_equals_backup(&backups, &root, migration))
                    .await
                    .map_err(|e| format!("check task: {e}"))?
                    .map_err(|e| format!("already rolled back by an earlier command, and {e}"))?;
                self.healthy(run_id).await.map_err(|e| {
                    unhealthy = true;
                    format!("already restored, but the service is not healthy on it: {e}")
                })
            })
            .await;
        let phases = tracker.phases.clone();
        match checked {
            Ok(()) => RunResult {
                phases,
                ..result(
                    command,
                    Outcome::RolledBack,
                    Some(format!(
                        "already rolled back: an earlier rollback restored the backup of migration {migration}, and the service root still equals it"
                    )),
                    Measurements::default(),
                )
            },
            Err(failure) if unhealthy => RunResult {
                phases,
                ..result(
                    command,
                    Outcome::RollbackFailed,
                    Some(failure.to_string()),
                    Measurements::default(),
                )
            },
            Err(failure) => refused(command, failure.to_string(), phases),
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
                let run = self.run_vars(command.run_id);
                let renderer = Renderer {
                    vars: &vars,
                    secrets: &self.config.secrets,
                    run: &run,
                    mask_secrets: false,
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
                                &self.launcher,
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
        crashpoint::reached(&self.config.agent.state_dir, "finalizing");
        let dropped = tracker
            .run(Phase::Finalize, async {
                // Off the runtime's thread: removing a big tree takes a while.
                tokio::task::spawn_blocking(move || backups.discard(migration))
                    .await
                    .map_err(|e| format!("finalize task: {e}"))?
                    .map_err(|e| error_chain(&e))
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

    /// Finishes what a crash interrupted: a migration that had backed up is restored, a
    /// rollback is carried out (its restore picks up where it stopped), a finalize drops the
    /// backup; a command that had not changed anything is refused. Runs before the service
    /// starts and before the agent takes new commands. Returns the results to publish.
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
            let restored = |restore: Result<Restored, String>, what: &str| match restore {
                Ok(_) => RunResult {
                    phases: vec![recover_phase(
                        PhaseStatus::Succeeded,
                        Some("restored the backup".into()),
                    )],
                    ..result(
                        &command,
                        Outcome::RolledBack,
                        Some(format!(
                            "the agent was interrupted {what}; the backup was restored"
                        )),
                        Measurements::default(),
                    )
                },
                Err(e) => RunResult {
                    phases: vec![recover_phase(PhaseStatus::Failed, Some(e.clone()))],
                    ..result(
                        &command,
                        Outcome::RollbackFailed,
                        Some(format!(
                            "the agent was interrupted {what} and the restore failed: {e}"
                        )),
                        Measurements::default(),
                    )
                },
            };
            let nothing_changed = || RunResult {
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
            };
            let result = match &command.action {
                Action::Migrate { .. } if entry.applying || entry.backed_up => {
                    // Recovery re-hashes the root: it must end on the backup exactly.
                    restored(self.restore(id, true), "mid-migration")
                }
                Action::Rollback { migration } => {
                    let migration = *migration;
                    let migrated = self
                        .journal
                        .get(migration)
                        .and_then(|e| e.result.as_ref())
                        .map(|r| r.outcome);
                    if migrated == Some(Outcome::Succeeded) && self.backups.exists(migration) {
                        // The coordinator asked for it: carry it out. The restore knows whether
                        // its swap already happened.
                        restored(self.restore(migration, true), "during a rollback")
                    } else {
                        nothing_changed()
                    }
                }
                Action::Finalize { migration } => match self.backups.discard(*migration) {
                    Ok(()) => RunResult {
                        phases: vec![recover_phase(
                            PhaseStatus::Succeeded,
                            Some("dropped the backup".into()),
                        )],
                        ..result(
                            &command,
                            Outcome::Finalized,
                            Some("the agent was interrupted while finalizing; the backup was dropped".into()),
                            Measurements::default(),
                        )
                    },
                    Err(e) => refused(
                        &command,
                        format!(
                            "the agent was interrupted while finalizing and cannot drop the backup: {}",
                            error_chain(&e)
                        ),
                        Vec::new(),
                    ),
                },
                _ => {
                    let _ = self.backups.discard(id);
                    nothing_changed()
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

/// Puts the backup of `migration` back at `root`. With `full_check` (recovery), or when an
/// earlier restore had already consumed the backup, the root is then re-hashed and compared with
/// the manifest.
fn restore(
    backups: &BackupStore,
    root: &std::path::Path,
    migration: CommandId,
    full_check: bool,
) -> Result<Restored, String> {
    let how = backups
        .restore(migration, root)
        .map_err(|e| error_chain(&e))?;
    if full_check || how == Restored::AlreadyRestored {
        root_equals_backup(backups, root, migration)?;
    }
    Ok(how)
}

/// Re-hashes `root` and compares it with the manifest of `migration`'s backup.
fn root_equals_backup(
    backups: &BackupStore,
    root: &std::path::Path,
    migration: CommandId,
) -> Result<(), String> {
    let backup = backups.load(migration).map_err(|e| error_chain(&e))?;
    let found = crate::tree::scan(root).map_err(|e| error_chain(&e))?;
    let diff = crate::tree::differences(&backup.manifest, &found);
    if diff.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = diff.iter().take(5).map(String::as_str).collect();
    Err(format!(
        "the service root differs from the backup of {migration}: {}{}",
        shown.join(", "),
        if diff.len() > 5 { ", …" } else { "" }
    ))
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

/// The result of `command`: `outcome`, now, with no phases yet.
pub(crate) fn result(
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
        preview: None,
        replayed: false,
        command_digest: None,
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
