//! The commands that change no files: inspect (the cross-service stage) and finalize (drops the
//! backup).

use flotilla_schemas::{
    Check, CheckVerdict, Command, CommandId, Inspection, Measurements, Outcome, Phase, RunResult,
};

use super::Lifecycle;
use super::error::{PhaseError, Place};
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::run_context::RunContext;
use crate::steps::RootDir;
use crate::template::Renderer;
use crate::{checks, crashpoint, inspect};

impl Lifecycle {
    /// The cross-service stage: runs the checks and reports the shape of the configuration
    /// files, changing nothing. The coordinator judges the verdicts across the fleet.
    pub(super) async fn inspect(
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
                let cx = self.context(command.run_id);
                let mut verdicts = Vec::new();
                for check in checks {
                    verdicts.push(self.verdict(&renderer, &cx, check).await);
                }
                let root = RootDir::open(&self.config.service.root).map_err(PhaseError::Root)?;
                // A file outside the root is refused, not reported missing: nothing outside is
                // ever looked at.
                for path in config_files {
                    super::check::beneath(&root, path, true)
                        .map_err(|e| e.at(Place::ConfigFile(path.clone())))?;
                }
                let secrets = inspect::known_secret_values(&self.config.secrets);
                let config = config_files
                    .iter()
                    .map(|path| inspect::config_shape(&root, path, &secrets))
                    .collect();
                Ok::<_, PhaseError>(Inspection {
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

    /// Renders and runs one check of the cross-service stage; a check that cannot run fails.
    async fn verdict(
        &self,
        renderer: &Renderer<'_>,
        cx: &RunContext<'_>,
        check: &Check,
    ) -> CheckVerdict {
        let verdict = match checks::render(renderer, check) {
            Err(e) => Err(e.to_string()),
            Ok(check) => match &check {
                Check::Command { program, .. } => match self.allowed(program) {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => checks::run(cx, &check).await,
                },
                _ => checks::run(cx, &check).await,
            },
        };
        let (passed, detail) = match verdict {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        CheckVerdict {
            kind: check.kind().to_owned(),
            passed,
            detail,
        }
    }

    /// Drops the backup of a migration: the run is closed.
    pub(super) async fn finalize(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        if let Some(reason) = self.of_another_run(command, migration, "finalize") {
            return refused(command, reason, Vec::new());
        }
        let backups = self.backups.clone();
        crashpoint::reached(&self.config.agent.state_dir, "finalizing");
        let dropped = tracker
            .run(Phase::Finalize, async {
                // Off the runtime's thread: removing a big tree takes a while.
                tokio::task::spawn_blocking(move || backups.discard(migration))
                    .await
                    .map_err(|error| PhaseError::Task {
                        what: "finalize",
                        error,
                    })?
                    .map_err(PhaseError::Backup)
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
}
