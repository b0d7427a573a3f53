//! Finishing, at start, what a crash interrupted.

use flotilla_schemas::{Action, Measurements, Outcome, Phase, PhaseReport, PhaseStatus, RunResult};

use super::Lifecycle;
use super::results::{refused, result};
use crate::backup::Restored;
use crate::journal::{JournalError, Record};
use flotilla_telemetry::error_chain;

impl Lifecycle {
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
