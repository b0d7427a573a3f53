//! What a run produced, for people (a table) and machines (JSON).

use std::fmt::Write as _;

use flotilla_schemas::{
    CommandId, InstanceId, Measurements, Outcome, PhaseReport, RunId, ServiceName,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::exit;

/// How one service ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceStatus {
    Succeeded,
    RolledBack,
    RollbackFailed,
    Refused,
    /// The agent did not report within the plan's `command_timeout`.
    TimedOut,
    /// The command never reached the bus.
    NotDelivered,
}

impl ServiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceStatus::Succeeded => "succeeded",
            ServiceStatus::RolledBack => "rolled_back",
            ServiceStatus::RollbackFailed => "rollback_failed",
            ServiceStatus::Refused => "refused",
            ServiceStatus::TimedOut => "timed_out",
            ServiceStatus::NotDelivered => "not_delivered",
        }
    }

    /// The status an agent's outcome maps to.
    pub fn from_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Succeeded | Outcome::Finalized => ServiceStatus::Succeeded,
            Outcome::RolledBack => ServiceStatus::RolledBack,
            Outcome::RollbackFailed => ServiceStatus::RollbackFailed,
            Outcome::Refused => ServiceStatus::Refused,
        }
    }
}

/// One service instance's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub service: ServiceName,
    pub instance: InstanceId,
    pub status: ServiceStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub command_id: CommandId,
    pub phases: Vec<PhaseReport>,
    pub measurements: Measurements,
}

/// How the whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every service migrated, validated and finalized.
    Succeeded,
    /// Something failed; see the services.
    Failed,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: RunId,
    pub plan: String,
    pub status: RunStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    pub duration_ms: u64,
    /// True when the agents dropped their backups: the run is closed.
    pub finalized: bool,
    pub services: Vec<ServiceReport>,
}

impl RunReport {
    /// The exit code this run deserves: the most serious status wins.
    pub fn exit_code(&self) -> u8 {
        let has = |s: ServiceStatus| self.services.iter().any(|r| r.status == s);
        if has(ServiceStatus::RollbackFailed) {
            exit::ROLLBACK_FAILED
        } else if has(ServiceStatus::TimedOut) || has(ServiceStatus::NotDelivered) {
            exit::TIMED_OUT
        } else if self.status == RunStatus::Succeeded {
            exit::OK
        } else {
            exit::FAILED
        }
    }

    /// A table for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let width = self
            .services
            .iter()
            .map(|s| s.service.as_str().len() + s.instance.as_str().len() + 1)
            .max()
            .unwrap_or(7)
            .max(7);
        let _ = writeln!(
            out,
            "run {} ({}): {}",
            self.run_id,
            self.plan,
            self.status_text()
        );
        let _ = writeln!(
            out,
            "{:width$}  {:15}  {:>8}  {:>8}  reason",
            "SERVICE", "STATUS", "TIME", "STARTUP"
        );
        for s in &self.services {
            let total: u64 = s.phases.iter().map(|p| p.duration_ms).sum();
            let startup = s
                .measurements
                .startup_ms_after
                .map(|ms| format!("{ms}ms"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:width$}  {:15}  {:>8}  {:>8}  {}",
                format!("{}/{}", s.service, s.instance),
                s.status.as_str(),
                format!("{total}ms"),
                startup,
                s.reason.as_deref().unwrap_or(""),
            );
        }
        let _ = writeln!(out, "finished in {:.1}s", self.duration_ms as f64 / 1000.0);
        out
    }

    fn status_text(&self) -> String {
        let count = |s: ServiceStatus| self.services.iter().filter(|r| r.status == s).count();
        match self.status {
            RunStatus::Succeeded => format!(
                "succeeded, {} service(s) migrated and finalized",
                self.services.len()
            ),
            RunStatus::Failed => format!(
                "FAILED: {} succeeded, {} rolled back, {} refused, {} timed out, {} rollback failed",
                count(ServiceStatus::Succeeded),
                count(ServiceStatus::RolledBack),
                count(ServiceStatus::Refused),
                count(ServiceStatus::TimedOut) + count(ServiceStatus::NotDelivered),
                count(ServiceStatus::RollbackFailed),
            ),
        }
    }
}
