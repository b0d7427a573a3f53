//! Progress events: one per phase start and end, so a run can be watched as it happens.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::version::schema_tag;
use crate::{CommandId, InstanceId, RunId, SchemaTag, ServiceName};

schema_tag!(ProgressSchema, "flotilla.progress.v1");

/// A phase of the agent's lifecycle for one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Accepted,
    Precheck,
    Backup,
    Apply,
    Restart,
    Validate,
    Rollback,
    Finalize,
    Recover,
    Inspect,
}

impl Phase {
    /// The phase's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Accepted => "accepted",
            Phase::Precheck => "precheck",
            Phase::Backup => "backup",
            Phase::Apply => "apply",
            Phase::Restart => "restart",
            Phase::Validate => "validate",
            Phase::Rollback => "rollback",
            Phase::Finalize => "finalize",
            Phase::Recover => "recover",
            Phase::Inspect => "inspect",
        }
    }
}

/// Where a phase stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PhaseStatus {
    Started,
    Succeeded,
    Failed,
}

/// One step forward (or back) in an agent's handling of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Progress {
    pub schema: ProgressSchema,
    pub run_id: RunId,
    pub command_id: CommandId,
    pub service: ServiceName,
    pub instance: InstanceId,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub at: OffsetDateTime,
    pub phase: Phase,
    pub status: PhaseStatus,
    /// How long the phase took, on `succeeded` and `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A human-readable detail, e.g. the reason of a failure. Never holds a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SchemaTag for Progress {
    const SCHEMA: &'static str = ProgressSchema::VALUE;
}
