//! The precheck that a migration and its dry run (preview) share, and the dry run itself.

use flotilla_schemas::fields::Table;
use flotilla_schemas::{
    Action, Check, Command, Gates, HttpCheck, Measurements, Outcome, Phase, Precondition, Preview,
    RunResult, Step, Workload,
};

use super::Lifecycle;
use super::error::{PhaseError, PhaseFailure, Place};
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::events::Events;
use crate::expand::expand;
use crate::steps::RootDir;
use crate::template::Renderer;
use crate::{checks, health, inspect, preview};

/// What a migrate command asks for.
pub(super) struct MigrateSpec<'a> {
    pub(super) steps: &'a [Step],
    pub(super) health: &'a [HttpCheck],
    pub(super) gates: &'a Gates,
    pub(super) preconditions: &'a [Precondition],
    pub(super) checks: &'a [Check],
    pub(super) workloads: &'a [Workload],
}

/// Content of `write_file` steps after placeholders are resolved, in step order.
pub(super) type Rendered = Vec<Option<String>>;

/// What [`Lifecycle::check`] resolved: the declared work with its placeholders resolved.
pub(super) struct Checked {
    /// The steps with every field expanded (a `write_file`'s template is in `contents`).
    pub(super) steps: Vec<Step>,
    pub(super) contents: Rendered,
    pub(super) health: Vec<HttpCheck>,
    pub(super) checks: Vec<Check>,
    pub(super) workloads: Vec<Workload>,
}

impl Lifecycle {
    /// Checks everything that can be checked before a change, changing nothing: that every
    /// field expands (placeholders resolve, paths stay inside the root once expanded),
    /// preconditions, allowed programs, and that the service is healthy now. A migration and
    /// its dry run both call it, so they cannot disagree. With `mask_secrets`, secret values in
    /// the rendered content are [`crate::template::MASK`].
    pub(super) async fn check(
        &self,
        spec: &MigrateSpec<'_>,
        command_run_id: flotilla_schemas::RunId,
        mask_secrets: bool,
    ) -> Result<Checked, PhaseError> {
        let vars = self.vars();
        let run = self.run_vars(command_run_id);
        let renderer = Renderer {
            vars: &vars,
            secrets: &self.config.secrets,
            run: &run,
            mask_secrets,
        };
        let root = RootDir::open(&self.config.service.root).map_err(PhaseError::Root)?;
        for (index, condition) in spec.preconditions.iter().enumerate() {
            let at = || Place::Precondition { index };
            let condition = expand(&renderer, Table::Precondition, condition)
                .map_err(|e| PhaseError::Render(e).at(at()))?;
            checks::precondition(&root, &condition).map_err(PhaseError::Precondition)?;
        }
        let health = spec
            .health
            .iter()
            .enumerate()
            .map(|(index, check)| {
                expand(&renderer, Table::Health, check)
                    .map_err(|e| PhaseError::Render(e).at(Place::HealthCheck { index }))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (steps, contents) = self.render_steps(&renderer, &root, spec.steps).await?;
        let checked = Checked {
            steps,
            contents,
            health,
            checks: self.render_checks(&renderer, spec.checks)?,
            workloads: self.render_workloads(&renderer, spec.workloads)?,
        };
        if let Some(job) = self.job_config() {
            // A job has no health endpoint: its own dry run instead (crate::job).
            self.job_precheck(&job, spec.steps).await?;
            return Ok(checked);
        }
        health::precheck(&self.http, &self.config.service.health_url, command_run_id)
            .await
            .map_err(PhaseError::UnhealthyBefore)?;
        Ok(checked)
    }

    /// The functional checks, expanded; each runs only an allowed program.
    fn render_checks(
        &self,
        renderer: &Renderer<'_>,
        declared: &[Check],
    ) -> Result<Vec<Check>, PhaseError> {
        let mut rendered = Vec::with_capacity(declared.len());
        for (index, check) in declared.iter().enumerate() {
            let at = || Place::Check {
                index,
                kind: check.kind(),
            };
            let check: Check = expand(renderer, Table::Check, check)
                .map_err(|e| PhaseError::Render(e).at(at()))?;
            if let Check::Command { program, .. } = &check {
                self.allowed(program).map_err(|e| e.at(at()))?;
            }
            rendered.push(check);
        }
        Ok(rendered)
    }

    /// The workloads, expanded; each job runs only an allowed program.
    fn render_workloads(
        &self,
        renderer: &Renderer<'_>,
        declared: &[Workload],
    ) -> Result<Vec<Workload>, PhaseError> {
        let mut rendered = Vec::with_capacity(declared.len());
        for workload in declared {
            let at = || Place::Workload(workload.name().to_owned());
            let workload: Workload = expand(renderer, Table::Workload, workload)
                .map_err(|e| PhaseError::Render(e).at(at()))?;
            if let Workload::Job { program, .. } = &workload {
                self.allowed(program).map_err(|e| e.at(at()))?;
            }
            rendered.push(workload);
        }
        Ok(rendered)
    }

    /// Every step with its fields expanded (paths held to the path rule once expanded, and
    /// resolved beneath the root with no symlink leading outside), and the content of each
    /// `write_file`, rendered for its expanded path; programs are checked against the
    /// allow-list.
    async fn render_steps(
        &self,
        renderer: &Renderer<'_>,
        root: &RootDir,
        declared: &[Step],
    ) -> Result<(Vec<Step>, Rendered), PhaseError> {
        let mut steps = Vec::with_capacity(declared.len());
        let mut rendered = Vec::with_capacity(declared.len());
        for (index, step) in declared.iter().enumerate() {
            let at = || Place::step(index, step);
            let step: Step =
                expand(renderer, Table::Step, step).map_err(|e| PhaseError::Render(e).at(at()))?;
            let content = match &step {
                Step::WriteFile {
                    path,
                    content,
                    source,
                    ..
                } => {
                    beneath(root, path, false).map_err(|e| e.at(at()))?;
                    // A shipped file is fetched and its digest checked here, before any change.
                    let template = crate::plan_files::template(
                        self.plan_files.as_ref(),
                        content,
                        source.as_ref(),
                    )
                    .await
                    .map_err(|e| PhaseError::Shipped(e).at(at()))?;
                    let content = renderer.render_file(path, &template);
                    Some(content.map_err(|e| PhaseError::Template(e).at(at()))?)
                }
                Step::ReplaceText { path, .. } => {
                    beneath(root, path, true).map_err(|e| e.at(at()))?;
                    None
                }
                Step::Delete { path } => {
                    beneath(root, path, false).map_err(|e| e.at(at()))?;
                    None
                }
                Step::RunCommand { program, .. } => {
                    self.allowed(program).map_err(|e| e.at(at()))?;
                    None
                }
                Step::Restart => None,
            };
            steps.push(step);
            rendered.push(content);
        }
        Ok((steps, rendered))
    }

    /// A dry run of a migration: the precheck, the free space the backup needs, then each step
    /// played against the current files in memory. Changes nothing and journals nothing; the
    /// reason it is refused with is the one the migration would stop on.
    pub async fn preview(&self, command: &Command, events: &Events) -> RunResult {
        if let Some(refusal) = self.refused_outright(command) {
            return refusal;
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
            ops: self.ops.clone(),
            command,
            phases: Vec::new(),
        };
        let checked = tracker
            .run(Phase::Precheck, self.check(&spec, command.run_id, true))
            .await;
        let phases = tracker.phases;
        match checked {
            Ok(checked) => self.play(command, &checked, phases),
            Err(failure) => refused(command, failure.to_string(), phases),
        }
    }

    /// The dry run after its precheck: the free space the backup needs, then each step played
    /// against the current files in memory; the result names the step that would fail.
    fn play(
        &self,
        command: &Command,
        checked: &Checked,
        phases: Vec<flotilla_schemas::PhaseReport>,
    ) -> RunResult {
        let would_fail = |phase, error| PhaseFailure { phase, error }.to_string();
        let backup_bytes = match self.backups.check_space(&self.config.service.root) {
            Ok(bytes) => bytes,
            Err(e) => {
                return refused(
                    command,
                    would_fail(Phase::Backup, PhaseError::Backup(e)),
                    phases,
                );
            }
        };
        let root = match RootDir::open(&self.config.service.root) {
            Ok(root) => root,
            Err(e) => {
                return refused(
                    command,
                    would_fail(Phase::Apply, PhaseError::Root(e)),
                    phases,
                );
            }
        };
        let secrets = inspect::known_secret_values(&self.config.secrets);
        let (shown, failure) = preview::play(&root, &checked.steps, &checked.contents, &secrets);
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
                    would_fail(
                        Phase::Apply,
                        PhaseError::Step(e).at(Place::step(index, &checked.steps[index])),
                    ),
                    phases,
                )
            },
        }
    }
}

/// Checks that a `path` stays beneath the root through the symlinks that exist now
/// (`follow_final`: the step reads through a final symlink too). The lexical rule was applied
/// when the path was expanded (`crate::expand`).
pub(super) fn beneath(root: &RootDir, path: &str, follow_final: bool) -> Result<(), PhaseError> {
    root.resolves_beneath(path, follow_final)
        .map_err(PhaseError::Step)
}
