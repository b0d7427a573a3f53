//! The engine's decisions, read from the run record: pure functions, unit-tested in
//! `decisions/tests.rs`. The engine's methods of the same names apply them to its record.

use flotilla_schemas::{CommandId, Outcome};

use super::{Engine, ProgressSink};
use crate::plan::OnFailure;
use crate::store::ActionKind;
use crate::store::{CommandRecord, RunRecord, TargetRecord};

/// True when the target has no command of `kind` that went out, or ended; or when its rollback
/// was given up on (never delivered, or no answer): a rollback is sent again, as a new command,
/// until its agent says how it ended, for the service may still be migrated.
pub(super) fn needs_dispatch(target: &TargetRecord, kind: ActionKind) -> bool {
    match target.slot(kind) {
        None => true,
        Some(c) if kind == ActionKind::Rollback && given_up(c) => true,
        Some(c) => c.sent_at.is_none() && c.not_delivered.is_none() && c.result.is_none(),
    }
}

/// True when the coordinator stopped waiting for the command without an answer: it was not
/// delivered before it expired, or its agent did not answer in time.
pub(super) fn given_up(command: &CommandRecord) -> bool {
    command.result.is_none() && (command.timed_out || command.not_delivered.is_some())
}

/// The targets (of `only`, when given) that a rollback must reach and whose agent has not said
/// how it ended: the fleet's state there is unknown, and the run must not claim an end state.
pub(super) fn unresolved_rollbacks(
    record: &RunRecord,
    only: Option<&flotilla_schemas::ServiceName>,
) -> Vec<usize> {
    (0..record.targets.len())
        .filter(|&t| {
            let target = &record.targets[t];
            only.is_none_or(|s| &target.service == s)
                && (migrated(target) || maybe_migrated(target))
                && target.rollback.as_ref().is_none_or(|r| r.result.is_none())
        })
        .collect()
}

/// True when the target's command of `kind` was sent and is still awaited.
pub(super) fn in_flight(target: &TargetRecord, kind: ActionKind) -> bool {
    target.slot(kind).as_ref().is_some_and(|c| {
        c.sent_at.is_some() && c.result.is_none() && !c.timed_out && c.not_delivered.is_none()
    })
}

/// True when the target's migration succeeded and it has not been finalized.
pub(super) fn migrated(target: &TargetRecord) -> bool {
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
pub(super) fn maybe_migrated(target: &TargetRecord) -> bool {
    target
        .migrate
        .as_ref()
        .is_some_and(|m| m.result.is_none() && (m.timed_out || m.not_delivered.is_some()))
}

/// True when a migrate command ended in anything but success (or never got an answer).
pub(crate) fn migrate_failed(target: &TargetRecord) -> bool {
    target.bake_failure.is_some()
        || target.migrate.as_ref().is_some_and(|m| match &m.result {
            Some(r) => r.outcome != Outcome::Succeeded,
            None => m.timed_out || m.not_delivered.is_some(),
        })
}

/// Targets whose migration ended in anything but success.
pub(super) fn failures(record: &RunRecord) -> usize {
    record.targets.iter().filter(|t| migrate_failed(t)).count()
}

/// True when an analysis gate of a wave failed (a value crossed, or inconclusive under
/// `inconclusive = "fail"`): the wave failed, which stops the run as a broken budget does.
pub(super) fn analysis_failed(record: &RunRecord) -> bool {
    record
        .waves
        .iter()
        .flat_map(|w| &w.analysis)
        .any(|v| !v.passed)
}

/// How many of `queued` commands to send now, with `flying` in flight under `cap`: none until a
/// tenth of the cap is free (or all that is left fits), then up to `batch`. Each batch reads the
/// cancel flag and counts the run's failures over every target; refilled one freed slot at a
/// time, 50,000 agents under a cap of 500 made tens of thousands of batches, and the
/// coordinator's CPU per agent doubled from 10,000 to 50,000.
pub(super) fn dispatch_now(cap: usize, flying: usize, queued: usize, batch: usize) -> usize {
    let room = cap.saturating_sub(flying).min(queued);
    let worth = (cap / 10).clamp(1, batch).min(queued);
    if room >= worth { room.min(batch) } else { 0 }
}

/// True when no more migrations may start: the budget is broken and the plan does not say
/// `on_failure = "continue"`.
pub(super) fn stops_dispatch(budget_broken: bool, on_failure: OnFailure) -> bool {
    budget_broken && on_failure != OnFailure::Continue
}

/// Where a run goes once its waves are over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterWaves {
    /// Proven, then finalized (a rehearsal is proven too, then restored).
    Finalize,
    /// The budget broke: every migrated service is rolled back.
    RollBack,
    /// The budget broke and the plan leaves the migrated services as they are: the run fails.
    Leave,
}

/// The decision after the waves. A rehearsal promises to leave the fleet as it was, whatever
/// the plan says, so it rolls back on a broken budget even with `on_failure = "leave"`.
pub(super) fn after_waves(
    budget_broken: bool,
    rehearse: bool,
    on_failure: OnFailure,
) -> AfterWaves {
    match on_failure {
        _ if !budget_broken => AfterWaves::Finalize,
        _ if rehearse => AfterWaves::RollBack,
        OnFailure::Rollback => AfterWaves::RollBack,
        OnFailure::Leave | OnFailure::Continue => AfterWaves::Leave,
    }
}

/// Why the run's services are rolled back, as recorded on each rollback command.
pub(super) fn rollback_cause(
    failed_check: Option<&str>,
    rehearse: bool,
    budget_broken: bool,
) -> String {
    match (failed_check, rehearse) {
        (Some(check), false) => format!("rolled back because {check} failed"),
        (Some(check), true) => format!("rehearsal: restored; {check} failed"),
        (None, true) if !budget_broken => {
            "rehearsal: restored after validation and proved healthy".to_owned()
        }
        (None, _) => "rolled back because another service of the run failed".to_owned(),
    }
}

/// True when a restored rehearsal counts as `rehearsed`: every rollback was proved and no
/// check a real run makes failed.
pub(super) fn rehearsed(record: &RunRecord, failed_check: Option<&str>) -> bool {
    let rolled_back_ok = record.targets.iter().all(|t| {
        t.rollback
            .as_ref()
            .and_then(|r| r.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::RolledBack)
    });
    failed_check.is_none() && rolled_back_ok
}

impl<P: ProgressSink> Engine<'_, P> {
    pub(super) fn needs_dispatch(&self, t: usize, kind: ActionKind) -> bool {
        needs_dispatch(&self.record.targets[t], kind)
    }

    pub(super) fn in_flight(&self, t: usize, kind: ActionKind) -> bool {
        in_flight(&self.record.targets[t], kind)
    }

    pub(super) fn migrated(&self, t: usize) -> bool {
        migrated(&self.record.targets[t])
    }

    pub(super) fn maybe_migrated(&self, t: usize) -> bool {
        maybe_migrated(&self.record.targets[t])
    }

    pub(super) fn failures(&self) -> usize {
        failures(&self.record)
    }

    /// Over the failure budget, or a wave's analysis failed (which fails the wave).
    pub(super) fn budget_broken(&self) -> bool {
        self.failures() > self.plan.allowed_failures(self.record.targets.len())
            || analysis_failed(&self.record)
    }
}

impl CommandRecord {
    pub(super) fn command_id(&self) -> CommandId {
        self.command.command_id
    }
}

#[cfg(test)]
mod tests;
