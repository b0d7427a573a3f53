//! The kinds of command the run record keeps, and where each is kept on a target.

use flotilla_schemas::CommandId;

use super::{CommandRecord, TargetRecord};

/// The kinds of command the run record keeps for each target, one of each at most (the
/// inspections of the cross-service stage are not kept). The one spelling of them in the
/// coordinator: the engine, `watch` and the reports name them through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Migrate,
    Rollback,
    Finalize,
}

impl ActionKind {
    /// Every kind, in the order a run sends them.
    pub const ALL: [ActionKind; 3] = [
        ActionKind::Migrate,
        ActionKind::Rollback,
        ActionKind::Finalize,
    ];

    /// The kind as written in the run record and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Migrate => "migrate",
            ActionKind::Rollback => "rollback",
            ActionKind::Finalize => "finalize",
        }
    }
}

impl TargetRecord {
    /// The target's command of `kind`, if one was recorded.
    pub fn slot(&self, kind: ActionKind) -> &Option<CommandRecord> {
        match kind {
            ActionKind::Migrate => &self.migrate,
            ActionKind::Rollback => &self.rollback,
            ActionKind::Finalize => &self.finalize,
        }
    }

    /// [`TargetRecord::slot`], to change.
    pub fn slot_mut(&mut self, kind: ActionKind) -> &mut Option<CommandRecord> {
        match kind {
            ActionKind::Migrate => &mut self.migrate,
            ActionKind::Rollback => &mut self.rollback,
            ActionKind::Finalize => &mut self.finalize,
        }
    }

    /// The kind of the target's recorded command `command_id` (`None`: not one of its recorded
    /// commands, e.g. an inspection).
    pub fn kind_of(&self, command_id: CommandId) -> Option<ActionKind> {
        ActionKind::ALL.into_iter().find(|&kind| {
            self.slot(kind)
                .as_ref()
                .is_some_and(|c| c.command.command_id == command_id)
        })
    }
}
