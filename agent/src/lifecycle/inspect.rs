//! The commands that change no files: inspect (the cross-service stage) and finalize (drops the
//! backup).

use flotilla_schemas::{
    Check, CheckVerdict, Command, CommandId, Inspection, Measurements, Outcome, Phase, RunResult,
};

use super::Lifecycle;
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::steps::{self, RootDir};
use crate::template::Renderer;
use crate::{checks, crashpoint, inspect};
use flotilla_telemetry::error_chain;

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
    pub(super) async fn finalize(
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
}
