//! Why a phase failed, typed. A result carries it as text: its error chain
//! ([`flotilla_telemetry::error_chain`]) is the phase's detail, and with the phase's name in front
//! ([`PhaseFailure`]) the result's reason. Variants marked "as shown" render their cause without
//! its sources, as the reasons always have: the texts are part of the agent's contract (tests,
//! docs and operators match them).

use flotilla_schemas::{CommandId, Phase, Step};
use flotilla_telemetry::error_chain;

use crate::backup::BackupError;
use crate::expand::ExpandError;
use crate::health::HealthError;
use crate::steps::StepError;
use crate::supervisor::SupervisorError;
use crate::template::TemplateError;
use crate::tree::TreeError;

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PhaseError {
    /// The service root cannot be opened.
    #[error(transparent)]
    Root(StepError),
    /// A precondition of the plan does not hold (the check's own words).
    #[error("{0}")]
    Precondition(String),
    /// Something the plan declares, named by where it is, failed.
    #[error("{at}")]
    At {
        at: Place,
        #[source]
        error: Box<PhaseError>,
    },
    /// A field of a step, precondition, check, workload or health check cannot be expanded
    /// (as shown).
    #[error("{0}")]
    Render(ExpandError),
    /// A placeholder of a written file does not resolve (as shown).
    #[error("{0}")]
    Template(TemplateError),
    /// A file shipped with the plan cannot be fetched or does not match its digest.
    #[error(transparent)]
    Shipped(crate::plan_files::ShippedError),
    /// A step failed, or a program is not allowed (as shown).
    #[error("{0}")]
    Step(StepError),
    /// Every precheck probe failed ([`crate::health::PRECHECK_PROBES`]); the last failure.
    #[error("the service is not healthy before the migration: {0}")]
    UnhealthyBefore(HealthError),
    /// A blocking task of the phase did not finish (a panic, or the runtime shutting down).
    #[error("{what} task: {error}")]
    Task {
        what: &'static str,
        error: tokio::task::JoinError,
    },
    #[error(transparent)]
    Backup(BackupError),
    #[error(transparent)]
    Tree(TreeError),
    /// The service did not (re)start healthy.
    #[error(transparent)]
    Service(SupervisorError),
    /// A health check failed (as shown).
    #[error("{0}")]
    Health(HealthError),
    /// A functional check failed (its own words).
    #[error("{0}")]
    Check(String),
    /// A run-once job's dry run, run, outputs or gates failed (as [`crate::job`] words it).
    #[error("{0}")]
    Job(String),
    #[error("restart to confirm a gate")]
    ConfirmRestart(#[source] SupervisorError),
    /// Gates tripped, each described.
    #[error("{}", .0.join("; "))]
    Regressions(Vec<String>),
    #[error("the service root differs from the backup of {migration}: {differences}")]
    Differs {
        migration: CommandId,
        differences: String,
    },
    #[error("restore")]
    Restore(#[source] Box<PhaseError>),
    #[error("restart after restore")]
    StartAfterRestore(#[source] SupervisorError),
    #[error("unhealthy after restore: {0}")]
    UnhealthyAfterRestore(HealthError),
    #[error("already rolled back by an earlier command, and {}", error_chain(.0.as_ref()))]
    RootChanged(Box<PhaseError>),
    #[error("already restored, but the service is not healthy on it: {0}")]
    UnhealthyOnRestored(HealthError),
}

impl PhaseError {
    /// This error, at `at`.
    pub(super) fn at(self, at: Place) -> Self {
        PhaseError::At {
            at,
            error: Box::new(self),
        }
    }
}

/// Where in the plan something failed, as every reason names it (counted from 1).
#[derive(Debug)]
pub(crate) enum Place {
    /// `step 2 (write_file)`
    Step { index: usize, name: &'static str },
    /// `check 1 (http)`
    Check { index: usize, kind: &'static str },
    /// `workload <name>`
    Workload(String),
    /// `health check 1`
    HealthCheck { index: usize },
    /// `precondition 1`
    Precondition { index: usize },
    /// `config file "config/service.toml"` (of an inspection)
    ConfigFile(String),
}

impl Place {
    /// Step `index` (from 0) of the plan.
    pub(super) fn step(index: usize, step: &Step) -> Self {
        Place::Step {
            index,
            name: step.name(),
        }
    }
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Step { index, name } => write!(f, "step {} ({name})", index + 1),
            Place::Check { index, kind } => write!(f, "check {} ({kind})", index + 1),
            Place::Workload(name) => write!(f, "workload {name}"),
            Place::HealthCheck { index } => write!(f, "health check {}", index + 1),
            Place::Precondition { index } => write!(f, "precondition {}", index + 1),
            Place::ConfigFile(path) => write!(f, "config file {path:?}"),
        }
    }
}

/// A failure of the phase named in it; its message (`<phase>: <error chain>`) becomes the
/// result's reason.
#[derive(Debug)]
pub(super) struct PhaseFailure {
    pub(super) phase: Phase,
    pub(super) error: PhaseError,
}

impl std::fmt::Display for PhaseFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.phase.as_str(), error_chain(&self.error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons read as they did when they were built as strings.
    #[test]
    fn reasons_name_the_phase_the_place_and_the_cause() {
        let not_allowed = PhaseError::Step(StepError::NotAllowed {
            program: "rm".into(),
        });
        let failure = PhaseFailure {
            phase: Phase::Precheck,
            error: not_allowed.at(Place::Check {
                index: 1,
                kind: "command",
            }),
        };
        let expected = format!(
            "precheck: check 2 (command): {}",
            StepError::NotAllowed {
                program: "rm".into()
            }
        );
        assert_eq!(failure.to_string(), expected);
        let restore = PhaseError::Restore(Box::new(PhaseError::Differs {
            migration: CommandId::new(),
            differences: "a.conf".into(),
        }));
        assert!(error_chain(&restore).starts_with("restore: the service root differs from"));
        let twice = PhaseError::RootChanged(Box::new(PhaseError::Check("x".into())));
        assert_eq!(
            error_chain(&twice),
            "already rolled back by an earlier command, and x"
        );
    }
}
