//! The precheck that a migration and its dry run (preview) share, and the dry run itself.

use flotilla_schemas::{
    Action, Check, Command, Gates, HttpCheck, Measurements, Outcome, Phase, Precondition, Preview,
    RunResult, Step, Workload,
};

use super::Lifecycle;
use super::results::{at_step, refused, result};
use super::tracker::{PhaseFailure, Tracker};
use crate::events::Events;
use crate::steps::{self, RootDir};
use crate::template::Renderer;
use crate::{checks, confine, health, inspect, preview, workload};
use flotilla_telemetry::error_chain;

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
    pub(super) contents: Rendered,
    pub(super) health: Vec<HttpCheck>,
    pub(super) checks: Vec<Check>,
    pub(super) workloads: Vec<Workload>,
}

impl Lifecycle {
    /// Checks everything that can be checked before a change, changing nothing: preconditions,
    /// paths, allowed programs, that every placeholder resolves, and that the service is healthy
    /// now. A migration and its dry run both call it, so they cannot disagree. With
    /// `mask_secrets`, secret values in the rendered content are [`crate::template::MASK`].
    pub(super) async fn check(
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
                Step::WriteFile { path, content, .. } => {
                    confine::relative_path(path).map_err(|e| at(&e))?;
                    Some(renderer.render_file(path, content).map_err(|e| at(&e))?)
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
}
