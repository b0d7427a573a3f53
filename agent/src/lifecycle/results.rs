//! The results that every flow builds.

use flotilla_schemas::{Command, Measurements, Outcome, PhaseReport, RunResult};
use time::OffsetDateTime;

/// The result of `command`: `outcome`, now, with no phases yet.
pub(crate) fn result(
    command: &Command,
    outcome: Outcome,
    reason: Option<String>,
    measurements: Measurements,
) -> RunResult {
    RunResult {
        reason,
        measurements,
        ..RunResult::of(command, OffsetDateTime::now_utc(), outcome)
    }
}

pub(super) fn refused(command: &Command, reason: String, phases: Vec<PhaseReport>) -> RunResult {
    RunResult {
        phases,
        ..result(
            command,
            Outcome::Refused,
            Some(reason),
            Measurements::default(),
        )
    }
}
