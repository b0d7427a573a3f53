//! Presence: how an agent answers "who is out there?".

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::labels::Labels;
use crate::version::schema_tag;
use crate::{InstanceId, RunId, SchemaTag, ServiceName};

schema_tag!(PresenceSchema, "flotilla.presence.v1");

/// What the agent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// Waiting for commands.
    Idle,
    /// Handling a command.
    Busy,
    /// Finishing or undoing a migration that a crash interrupted.
    Recovering,
}

/// An agent's answer to a presence request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Presence {
    pub schema: PresenceSchema,
    pub service: ServiceName,
    pub instance: InstanceId,
    /// The agent's own version (semver).
    pub version: String,
    /// The command schemas this agent understands.
    pub accepts: Vec<String>,
    pub host: String,
    pub state: AgentState,
    /// The run the agent is working on, when busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<RunId>,
    /// The PID of the supervised service, when running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_pid: Option<u32>,
    /// The service's health endpoint, which other services' agents reach in the cross-service
    /// communication check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The agent's Ed25519 public key (base64), which signs every result and progress event it
    /// publishes; absent from agents older than signed results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_key: Option<String>,
    /// The agent's labels (`region`, `tier`, …), which plans and `flotilla migrate -l` select
    /// by; absent from agents older than labels, which have none.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub started_at: OffsetDateTime,
}

impl SchemaTag for Presence {
    const SCHEMA: &'static str = PresenceSchema::VALUE;
}
