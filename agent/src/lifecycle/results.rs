//! The results and reasons that every flow builds.

use flotilla_schemas::{Command, Measurements, Outcome, PhaseReport, RunResult, Step};
use time::OffsetDateTime;

use super::Lifecycle;
use crate::run_vars::RunVars;

/// A failure of step `index` (from 0), as every reason names it: `step 2 (write_file): …`.
pub(super) fn at_step(index: usize, step: &Step, e: &dyn std::fmt::Display) -> String {
    format!("step {} ({}): {e}", index + 1, step.name())
}

impl Lifecycle {
    /// Whether `program` is on the agent's allow-list (exact match).
    pub(super) fn allowed(&self, program: &str) -> bool {
        self.config
            .commands
            .allow
            .iter()
            .any(|allowed| allowed == program)
    }

    pub(super) fn vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut vars = self.config.vars.clone();
        vars.entry("service".into())
            .or_insert_with(|| self.config.service.name.to_string());
        vars.entry("instance".into())
            .or_insert_with(|| self.config.agent.instance.to_string());
        vars
    }

    /// The run variables of `run_id` for this agent, with the current span's trace context.
    pub(super) fn run_vars(&self, run_id: flotilla_schemas::RunId) -> RunVars {
        RunVars::current(
            run_id,
            self.config.service.name.as_str(),
            self.config.agent.instance.as_str(),
        )
    }
}

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
