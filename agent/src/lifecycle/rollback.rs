//! Putting a migration's backup back: after a failed phase, on the coordinator's request, and
//! the second rollback that finds it already done.

use flotilla_schemas::{Command, CommandId, HttpCheck, Measurements, Outcome, Phase, RunResult};

use super::Lifecycle;
use super::results::{refused, result};
use super::tracker::Tracker;
use crate::backup::{BackupStore, Restored};
use crate::{crashpoint, health};
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
    pub(super) fn restore(
        &mut self,
        migration: CommandId,
        full_check: bool,
    ) -> Result<Restored, String> {
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
    ) -> Result<Restored, String> {
        let (backups, root) = (self.backups.clone(), self.config.service.root.clone());
        let how = tokio::task::spawn_blocking(move || restore(&backups, &root, migration, false))
            .await
            .map_err(|e| format!("restore task: {e}"))??;
        self.queue_swapped_out(&how);
        Ok(how)
    }

    pub(super) fn queue_swapped_out(&mut self, how: &Restored) {
        if let Restored::Swapped {
            swapped_out: Some(path),
        } = how
        {
            self.swapped_out.push(path.clone());
        }
    }

    /// The agent's own health check of the service, with the startup timeout.
    pub(super) async fn healthy(&self, run_id: flotilla_schemas::RunId) -> Result<(), String> {
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

    /// A rollback asked for after the migration had succeeded (the run failed elsewhere).
    pub(super) async fn rollback_migration(
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
    pub(super) async fn already_rolled_back(
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
}

/// Puts the backup of `migration` back at `root`. With `full_check` (recovery), or when an
/// earlier restore had already consumed the backup, the root is then re-hashed and compared with
/// the manifest.
pub(super) fn restore(
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
pub(super) fn root_equals_backup(
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
