//! What every flow asks of the agent's configuration: allowed programs, placeholder variables,
//! the run's context, and the agent's own health check.

use flotilla_schemas::{HttpCheck, RunId};

use super::Lifecycle;
use super::error::PhaseError;
use crate::health::{self, HealthError};
use crate::run_context::RunContext;
use crate::run_vars::RunVars;
use crate::steps::StepError;

impl Lifecycle {
    /// Whether `program` is on the agent's allow-list (exact match).
    pub(super) fn allowed(&self, program: &str) -> Result<(), PhaseError> {
        let allowed = self.config.commands.allow.iter().any(|a| a == program);
        if allowed {
            Ok(())
        } else {
            Err(PhaseError::Step(StepError::NotAllowed {
                program: program.to_owned(),
            }))
        }
    }

    /// The plan's placeholder variables: the configured ones, with `service` and `instance`.
    pub(super) fn vars(&self) -> std::collections::BTreeMap<String, String> {
        let mut vars = self.config.vars.clone();
        vars.entry("service".into())
            .or_insert_with(|| self.config.service.name.to_string());
        vars.entry("instance".into())
            .or_insert_with(|| self.config.agent.instance.to_string());
        vars
    }

    /// The run variables of `run_id` for this agent, with the current span's trace context.
    pub(super) fn run_vars(&self, run_id: RunId) -> RunVars {
        RunVars::current(
            run_id,
            self.config.service.name.as_str(),
            self.config.agent.instance.as_str(),
        )
    }

    /// How the checks and workloads of `run_id` reach the service.
    pub(super) fn context(&self, run_id: RunId) -> RunContext<'_> {
        RunContext {
            http: &self.http,
            root: &self.config.service.root,
            health_url: &self.config.service.health_url,
            run_id,
            launcher: &self.launcher,
        }
    }

    /// The agent's own health check of the service: a 200 within the startup timeout.
    pub(super) fn default_health_check(&self) -> HttpCheck {
        HttpCheck {
            url: None,
            method: None,
            body: None,
            expect_status: 200,
            body_contains: None,
            timeout_ms: self.config.service.startup_timeout.as_millis() as u64,
            headers: Default::default(),
        }
    }

    /// Runs [`Lifecycle::default_health_check`] against the service (nothing for a job).
    pub(super) async fn healthy(&self, run_id: RunId) -> Result<(), HealthError> {
        if self.job_config().is_some() {
            // A job has no health endpoint; its restored files are proved by the restore.
            return Ok(());
        }
        let check = self.default_health_check();
        health::check(&self.http, &self.config.service.health_url, &check, run_id)
            .await
            .map(|_| ())
    }
}
