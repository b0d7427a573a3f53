//! One command's life at the agent:
//! `accepted → precheck → backup → apply → restart → validate → done`, or on any failure after
//! the backup `→ rollback → rolled_back | rollback_failed`. Every transition that matters for
//! recovery is journalled before it is acted on.

mod check;
mod context;
mod error;
mod inspect;
mod job;
mod migrate;
mod recover;
mod results;
mod rollback;
mod tracker;

use flotilla_schemas::{Action, Command, RunResult};
use time::OffsetDateTime;

use crate::backup::{self, BackupStore};
use crate::config::AgentConfig;
use crate::crashpoint;
use crate::events::Events;
use crate::journal::{Journal, JournalError, Record};
use crate::supervisor::Supervisor;

use check::MigrateSpec;
use results::refused;
/// The journal's tests build results as the lifecycle does.
#[cfg(test)]
pub(crate) use results::result;
use tracker::Tracker;

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
    /// Metrics and probes (`[http]`): what the agent did, for its operators.
    pub ops: crate::ops::Ops,
}

/// What [`Lifecycle::accept`] decided.
pub enum Acceptance {
    /// Already answered: publish this result.
    Done(Box<RunResult>),
    /// Journalled: go on with [`Lifecycle::execute`].
    Proceed,
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
            tracing::info!(
                command_id = %command.command_id,
                "command already handled, re-sending its result"
            );
            return Ok(Acceptance::Done(Box::new(RunResult {
                replayed: true,
                ..result
            })));
        }
        if let Some(result) = self.refused_outright(command) {
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
        let accepted = Record::Accepted {
            command: command.clone(),
        };
        if self.durable_later(command) {
            self.journal.append_lazily(accepted)?;
        } else {
            self.journal.append(accepted)?;
        }
        crashpoint::reached(&self.config.agent.state_dir, "accepted");
        Ok(Acceptance::Proceed)
    }

    /// Whether the `accepted` record of `command` needs no fsync of its own: a migration of a
    /// service (not a job) changes nothing before `make_durable`, whose barrier commits the
    /// journal up to its `applying` record, `accepted` included (one file, appended in order),
    /// and a migration that ends before it is answered only once its `finished` record is
    /// fsynced, which commits `accepted` with it. Until then a crash of the process alone loses
    /// nothing (the page cache survives it); a power loss may lose the record, and then nothing
    /// had changed: the restarted agent's catch-up read finds the command in the commands
    /// stream, which keeps the last one per agent and never waited for an ack, and the journal,
    /// not knowing it, carries it out then, once. A job's precheck may run the job (its
    /// baseline), and other commands act at once: their `accepted` is fsynced first.
    fn durable_later(&self, command: &Command) -> bool {
        matches!(command.action, Action::Migrate { .. }) && self.job_config().is_none()
    }

    /// Carries out a command that [`Lifecycle::accept`] took; returns its journalled result.
    pub async fn execute(
        &mut self,
        command: Command,
        events: &Events,
    ) -> Result<RunResult, JournalError> {
        let mut tracker = Tracker {
            events,
            ops: self.ops.clone(),
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
                settings,
                revalidate,
            } => {
                let asked = inspect::Asked {
                    checks,
                    config_files,
                    settings,
                    revalidate: *revalidate,
                };
                self.inspect(&command, asked, &mut tracker).await
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

    /// The refusal of a command that must be refused outright, if it must. It names this agent,
    /// whose subject and key it goes out on, even when the command named another (misaddressed):
    /// the reason says which.
    pub(super) fn refused_outright(&self, command: &Command) -> Option<RunResult> {
        let reason = self.refusal(command)?;
        Some(RunResult {
            service: self.config.service.name.clone(),
            instance: self.config.agent.instance.clone(),
            ..refused(command, reason, Vec::new())
        })
    }

    /// Why the command must be refused outright, if it must.
    pub(super) fn refusal(&self, command: &Command) -> Option<String> {
        if command.service != self.config.service.name
            || command.instance != self.config.agent.instance
        {
            return Some(format!(
                "refused by {}/{}: the command was addressed to {}/{}",
                self.config.service.name,
                self.config.agent.instance,
                command.service,
                command.instance,
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
}
