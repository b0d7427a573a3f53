//! The engine's decisions, read from the run record.

use flotilla_schemas::{CommandId, Outcome};

use super::{Engine, Kind, ProgressSink};
use crate::store::{CommandRecord, TargetRecord};

impl<'a, P: ProgressSink> Engine<'a, P> {
    pub(super) fn needs_dispatch(&self, t: usize, kind: Kind) -> bool {
        match slot(&self.record.targets[t], kind) {
            None => true,
            Some(c) => c.sent_at.is_none() && c.not_delivered.is_none() && c.result.is_none(),
        }
    }

    pub(super) fn in_flight(&self, t: usize, kind: Kind) -> bool {
        slot(&self.record.targets[t], kind)
            .as_ref()
            .is_some_and(|c| {
                c.sent_at.is_some()
                    && c.result.is_none()
                    && !c.timed_out
                    && c.not_delivered.is_none()
            })
    }

    /// True when the target's migration succeeded and it has not been finalized.
    pub(super) fn migrated(&self, t: usize) -> bool {
        let target = &self.record.targets[t];
        let succeeded = target
            .migrate
            .as_ref()
            .and_then(|m| m.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::Succeeded);
        let finalized = target
            .finalize
            .as_ref()
            .and_then(|f| f.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::Finalized);
        succeeded && !finalized
    }

    /// True when the coordinator gave up on the target's migrate command without an answer: the
    /// agent may have applied it after all. A rollback is sent to it too; the agent restores its
    /// backup if it did migrate, and refuses (changing nothing) if it did not. Both commands
    /// go through the agent's own queue in order, so the rollback cannot overtake the migrate.
    pub(super) fn maybe_migrated(&self, t: usize) -> bool {
        self.record.targets[t]
            .migrate
            .as_ref()
            .is_some_and(|m| m.result.is_none() && (m.timed_out || m.not_delivered.is_some()))
    }

    /// Targets whose migration ended in anything but success.
    pub(super) fn failures(&self) -> usize {
        self.record
            .targets
            .iter()
            .filter(|t| migrate_failed(t))
            .count()
    }

    pub(super) fn budget_broken(&self) -> bool {
        self.failures() > self.plan.allowed_failures(self.record.targets.len())
    }
}

/// True when a migrate command ended in anything but success (or never got an answer).
pub(crate) fn migrate_failed(target: &TargetRecord) -> bool {
    target.migrate.as_ref().is_some_and(|m| match &m.result {
        Some(r) => r.outcome != Outcome::Succeeded,
        None => m.timed_out || m.not_delivered.is_some(),
    })
}

pub(super) fn slot(target: &TargetRecord, kind: Kind) -> &Option<CommandRecord> {
    match kind {
        Kind::Migrate => &target.migrate,
        Kind::Rollback => &target.rollback,
        Kind::Finalize => &target.finalize,
    }
}

pub(super) fn slot_mut(target: &mut TargetRecord, kind: Kind) -> &mut Option<CommandRecord> {
    match kind {
        Kind::Migrate => &mut target.migrate,
        Kind::Rollback => &mut target.rollback,
        Kind::Finalize => &mut target.finalize,
    }
}

impl CommandRecord {
    pub(super) fn command_id(&self) -> CommandId {
        self.command.command_id
    }
}
