//! Putting a migration's backup back: after a failed phase, on the coordinator's request, and
//! the second rollback that finds it already done.

use flotilla_schemas::{Command, CommandId, Measurements, Outcome, Phase, RunResult};

use super::Lifecycle;
use super::error::{PhaseError, PhaseFailure};
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::backup::{BackupStore, Restored};
use crate::crashpoint;
use flotilla_telemetry::error_chain;

impl Lifecycle {
    /// Restores the backup of `migration`, restarts the service and proves it healthy.
    pub(super) async fn roll_back(
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
                    .map_err(|e| PhaseError::Restore(Box::new(e)))?;
                crashpoint::reached(&self.config.agent.state_dir, "restored");
                if let Some(job) = self.job_config() {
                    // A job is not re-run on rollback unless configured (crate::job).
                    return self.job_after_restore(&job, migration).await;
                }
                self.supervisor
                    .start()
                    .await
                    .map_err(PhaseError::StartAfterRestore)?;
                self.healthy(run_id)
                    .await
                    .map_err(PhaseError::UnhealthyAfterRestore)
            })
            .await;
        match restored {
            Ok(()) => (Outcome::RolledBack, cause),
            Err(failure) => (Outcome::RollbackFailed, format!("{cause}; then {failure}")),
        }
    }

    /// Puts the backup of `migration` back at the service root (see [`restore`]); a swapped-out
    /// tree is queued for removal. Blocks: for recovery, before the agent serves.
    pub(super) fn restore(
        &mut self,
        migration: CommandId,
        full_check: bool,
    ) -> Result<Restored, PhaseError> {
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
    pub(super) async fn restore_off_thread(
        &mut self,
        migration: CommandId,
    ) -> Result<Restored, PhaseError> {
        let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
        let how = tokio::task::spawn_blocking(move || restore(&backups, &root, migration, false))
            .await
            .map_err(|error| PhaseError::Task {
                what: "restore",
                error,
            })??;
        self.queue_swapped_out(&how);
        Ok(how)
    }

    /// Queues the tree a restore swapped out, if any, for removal after the answer.
    pub(super) fn queue_swapped_out(&mut self, how: &Restored) {
        if let Restored::Swapped {
            swapped_out: Some(path),
        } = how
        {
            self.swapped_out.push(path.clone());
        }
    }

    /// A rollback asked for after the migration had succeeded (the run failed elsewhere).
    pub(super) async fn rollback_migration(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        if let Some(reason) = self.of_another_run(command, migration, "rollback") {
            return refused(command, reason, Vec::new());
        }
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

    /// Why a rollback or finalize of `migration` under `command`'s run must be refused: the
    /// journal holds that migration under another run. A run's commands act only on that run's
    /// migrations, so a command replayed or forged under another run's ID changes nothing.
    pub(super) fn of_another_run(
        &self,
        command: &Command,
        migration: CommandId,
        what: &str,
    ) -> Option<String> {
        let entry = self.journal.get(migration)?;
        let run = entry
            .command
            .as_ref()
            .map(|c| c.run_id)
            .or(entry.result.as_ref().map(|r| r.run_id))?;
        (run != command.run_id).then(|| {
            format!(
                "migration {migration} belongs to run {run}, not to run {} that this {what} names: nothing changed",
                command.run_id
            )
        })
    }

    /// A second rollback of a migration whose backup an earlier rollback already swapped in:
    /// there is nothing left to restore. It says so when the root still equals the backup (and
    /// the service is healthy on it), and refuses when the root changed since (a later
    /// migration): restoring then would undo that one.
    pub(super) async fn already_rolled_back(
        &mut self,
        command: &Command,
        migration: CommandId,
        tracker: &mut Tracker<'_>,
    ) -> RunResult {
        let run_id = command.run_id;
        let checked = tracker
            .run(Phase::Rollback, async {
                let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
                tokio::task::spawn_blocking(move || root_equals_backup(&backups, &root, migration))
                    .await
                    .map_err(|error| PhaseError::Task {
                        what: "check",
                        error,
                    })?
                    .map_err(|e| PhaseError::RootChanged(Box::new(e)))?;
                self.healthy(run_id)
                    .await
                    .map_err(PhaseError::UnhealthyOnRestored)
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
            // Restored, but not healthy on it: the rollback failed (a changed root is refused).
            Err(
                failure @ PhaseFailure {
                    error: PhaseError::UnhealthyOnRestored(_),
                    ..
                },
            ) => RunResult {
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
}

/// Puts the backup of `migration` back at `root`. With `full_check` (recovery), or when an
/// earlier restore had already consumed the backup, the root is then re-hashed and compared with
/// the manifest.
pub(super) fn restore(
    backups: &BackupStore,
    root: &std::path::Path,
    migration: CommandId,
    full_check: bool,
) -> Result<Restored, PhaseError> {
    let how = backups
        .restore(migration, root)
        .map_err(PhaseError::Backup)?;
    if full_check || how == Restored::AlreadyRestored {
        root_equals_backup(backups, root, migration)?;
    }
    Ok(how)
}

/// Re-hashes `root` and compares it with the manifest of `migration`'s backup.
pub(super) fn root_equals_backup(
    backups: &BackupStore,
    root: &std::path::Path,
    migration: CommandId,
) -> Result<(), PhaseError> {
    let backup = backups.load(migration).map_err(PhaseError::Backup)?;
    let found = crate::tree::scan(root).map_err(PhaseError::Tree)?;
    let diff = crate::tree::differences(&backup.manifest, &found);
    if diff.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = diff.iter().take(5).map(String::as_str).collect();
    Err(PhaseError::Differs {
        migration,
        differences: format!(
            "{}{}",
            shown.join(", "),
            if diff.len() > 5 { ", …" } else { "" }
        ),
    })
}
