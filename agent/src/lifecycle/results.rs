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
        schema: Default::default(),
        run_id: command.run_id,
        command_id: command.command_id,
        service: command.service.clone(),
        instance: command.instance.clone(),
        at: OffsetDateTime::now_utc(),
        outcome,
        reason,
        phases: Vec::new(),
        measurements,
        gates: Vec::new(),
        workloads: Vec::new(),
        inspection: None,
        preview: None,
        replayed: false,
        command_digest: None,
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
