//! The commands that change no files: inspect (the cross-service stage, and the checks of a
//! pause between waves) and finalize (drops the backup).

use flotilla_schemas::fields::Table;
use flotilla_schemas::{
    Check, CheckVerdict, Command, CommandId, Inspection, Measurements, Outcome, Phase, RunResult,
    SettingProbe, SettingReport,
};

use super::Lifecycle;
use super::error::{PhaseError, Place};
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::expand::{expand, expand_text};
use crate::run_context::RunContext;
use crate::steps::RootDir;
use crate::template::Renderer;
use crate::{checks, crashpoint, inspect};

mod revalidate;

/// What an inspect command asks for.
pub(super) struct Asked<'a> {
    pub(super) checks: &'a [Check],
    pub(super) config_files: &'a [String],
    pub(super) settings: &'a [SettingProbe],
    /// A migration of the run to validate again (a pause between waves).
    pub(super) revalidate: Option<CommandId>,
}

impl Lifecycle {
    /// The cross-service stage: runs the checks and reports the shape of the configuration
    /// files, changing nothing. The coordinator judges the verdicts across the fleet.
    pub(super) async fn inspect(
        &mut self,
        command: &Command,
        asked: Asked<'_>,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let Asked {
            checks,
            config_files,
            settings,
            revalidate,
        } = asked;
        // Read before anything runs: a migration that is not this run's, or not migrated,
        // refuses the inspection.
        let baseline = match revalidate.map(|m| self.baseline(command, m)).transpose() {
            Ok(baseline) => baseline,
            Err(reason) => return refused(command, reason, Vec::new()),
        };
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
                // Expanded where this service's vars are known, before any check runs: a file
                // that cannot be named refuses the inspection.
                let takes = Table::CrossService.field(None, "config_files");
                let paths = config_files
                    .iter()
                    .enumerate()
                    .map(|(i, path)| {
                        expand_text(&renderer, takes, &format!("config_files[{i}]"), path)
                            .map_err(|e| PhaseError::Render(e).at(Place::ConfigFile(path.clone())))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let cx = self.context(command.run_id);
                let mut verdicts = Vec::new();
                for check in checks {
                    verdicts.push(self.verdict(&renderer, &cx, check).await);
                }
                let mut gates = Vec::new();
                if let Some(baseline) = &baseline {
                    gates = self.gates_now(baseline).await;
                    for check in &baseline.checks {
                        verdicts.push(self.verdict(&renderer, &cx, check).await);
                    }
                }
                let root = RootDir::open(&self.config.service.root).map_err(PhaseError::Root)?;
                // A file outside the root is refused, not reported missing: nothing outside is
                // ever looked at.
                for path in &paths {
                    super::check::beneath(&root, path, true)
                        .map_err(|e| e.at(Place::ConfigFile(path.clone())))?;
                }
                let secrets = inspect::known_secret_forms(&self.config.secrets);
                let config = paths
                    .iter()
                    .map(|path| inspect::config_shape(&root, path, &secrets))
                    .collect();
                let settings = self.settings(&renderer, &root, settings, command.run_id);
                Ok::<_, PhaseError>(Inspection {
                    checks: verdicts,
                    config,
                    settings,
                    gates,
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

    /// The settings of `probes`, each file name rendered (`${var:…}`) first; a name that cannot
    /// be rendered leaves its setting not found, saying why. In the probes' order.
    fn settings(
        &self,
        renderer: &Renderer<'_>,
        root: &RootDir,
        probes: &[SettingProbe],
        run: flotilla_schemas::RunId,
    ) -> Vec<SettingReport> {
        // A setting's file is named like a config file: a path, expanded the same way.
        let takes = Table::CrossService.field(None, "config_files");
        probes
            .iter()
            .map(
                |probe| match expand_text(renderer, takes, "settings.file", &probe.file) {
                    Ok(file) => {
                        let rendered = SettingProbe {
                            file,
                            ..probe.clone()
                        };
                        let mut found =
                            inspect::settings(root, std::slice::from_ref(&rendered), run);
                        found
                            .pop()
                            .unwrap_or_else(|| unrendered(probe, "no answer".into()))
                    }
                    Err(e) => unrendered(probe, e.to_string()),
                },
            )
            .collect()
    }

    /// Renders and runs one check of the cross-service stage; a check that cannot run fails.
    async fn verdict(
        &self,
        renderer: &Renderer<'_>,
        cx: &RunContext<'_>,
        check: &Check,
    ) -> CheckVerdict {
        let verdict = match expand(renderer, Table::Check, check) {
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

/// A setting whose file name could not be rendered: not found, and why.
fn unrendered(probe: &SettingProbe, why: String) -> SettingReport {
    SettingReport {
        name: probe.name.clone(),
        file: probe.file.clone(),
        key: probe.key.clone(),
        found: false,
        digest: None,
        detail: Some(why),
    }
}
