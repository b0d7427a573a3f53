//! Finishing, at start, what a crash interrupted.

use flotilla_schemas::{
    Action, Command, Measurements, Outcome, Phase, PhaseReport, PhaseStatus, RunResult,
};

use super::Lifecycle;
use super::error::PhaseError;
use super::results::{refused, result};
use crate::backup::Restored;
use crate::journal::{Entry, JournalError, Record};
use flotilla_telemetry::error_chain;

impl Lifecycle {
    /// Finishes what a crash interrupted: a migration that had backed up is restored, a
    /// rollback is carried out (its restore picks up where it stopped), a finalize drops the
    /// backup; a command that had not changed anything is refused. Runs before the service
    /// starts and before the agent takes new commands. Returns the results to publish.
    pub fn recover(&mut self) -> Result<Vec<RunResult>, JournalError> {
        let mut results = Vec::new();
        for entry in self.journal.unfinished() {
            let result = self.recover_one(entry);
            tracing::warn!(
                command_id = %result.command_id,
                outcome = result.outcome.as_str(),
                "recovered an interrupted command"
            );
            self.journal.append(Record::Finished {
                result: result.clone(),
            })?;
            results.push(result);
        }
        Ok(results)
    }

    /// The result of one interrupted command, once what it left is finished or undone.
    fn recover_one(&mut self, entry: Entry) -> RunResult {
        let command = entry.command.expect("unfinished entries have a command");
        let id = command.command_id;
        match &command.action {
            Action::Migrate { .. } if entry.applying && !self.backups.is_complete(id) => {
                // `applying` without a whole backup: the one barrier that makes both durable
                // never returned (a power loss), and apply waits for it: the root is the tree
                // before the migration, as after a rollback (the outcome the coordinator files
                // for an acked command; a refusal would need the command's digest).
                let _ = self.backups.discard(id);
                recovered(
                    &command,
                    Outcome::RolledBack,
                    PhaseStatus::Succeeded,
                    "nothing had changed".into(),
                    "the agent was interrupted before its backup was durable; nothing had \
                     changed"
                        .into(),
                )
            }
            Action::Migrate { .. } if entry.applying || entry.backed_up => {
                // Recovery re-hashes the root: it must end on the backup exactly.
                restored(&command, self.restore(id, true), "mid-migration")
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
                    let restore = self.restore(migration, true);
                    restored(&command, restore, "during a rollback")
                } else {
                    nothing_changed(&command)
                }
            }
            Action::Finalize { migration } => match self.backups.discard(*migration) {
                Ok(()) => recovered(
                    &command,
                    Outcome::Finalized,
                    PhaseStatus::Succeeded,
                    "dropped the backup".into(),
                    "the agent was interrupted while finalizing; the backup was dropped".into(),
                ),
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
                nothing_changed(&command)
            }
        }
    }
}

/// The result of a restore that recovery carried out, interrupted `what`.
fn restored(command: &Command, restore: Result<Restored, PhaseError>, what: &str) -> RunResult {
    match restore {
        Ok(_) => recovered(
            command,
            Outcome::RolledBack,
            PhaseStatus::Succeeded,
            "restored the backup".into(),
            format!("the agent was interrupted {what}; the backup was restored"),
        ),
        Err(e) => {
            let e = error_chain(&e);
            let reason = format!("the agent was interrupted {what} and the restore failed: {e}");
            recovered(
                command,
                Outcome::RollbackFailed,
                PhaseStatus::Failed,
                e,
                reason,
            )
        }
    }
}

/// The result of a command interrupted before it changed anything.
fn nothing_changed(command: &Command) -> RunResult {
    recovered(
        command,
        Outcome::Refused,
        PhaseStatus::Succeeded,
        "nothing had changed".into(),
        "the agent was interrupted before changing anything".into(),
    )
}

/// A recovered command's result: `outcome` for `reason`, with one recover phase.
fn recovered(
    command: &Command,
    outcome: Outcome,
    status: PhaseStatus,
    detail: String,
    reason: String,
) -> RunResult {
    RunResult {
        phases: vec![PhaseReport {
            phase: Phase::Recover,
            status,
            duration_ms: 0,
            detail: Some(detail),
            started_at: None,
        }],
        ..result(command, outcome, Some(reason), Measurements::default())
    }
}
