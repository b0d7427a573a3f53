//! Registration: an agent's entry in the agent registry, so that discovery knows whom to wait
//! for without the broker keeping anything per agent but one small key.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::labels::Labels;
use crate::version::schema_tag;
use crate::{InstanceId, SchemaTag, ServiceName};

schema_tag!(RegistrationSchema, "flotilla.registration.v1");

/// One agent's entry in the registry bucket (key `<service>.<instance>`), written by the agent
/// at start and refreshed rarely. Whether it is active is judged from the time the broker
/// stored it, not from the agent's clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Registration {
    pub schema: RegistrationSchema,
    pub service: ServiceName,
    pub instance: InstanceId,
    /// The agent's own version (semver).
    pub version: String,
    pub host: String,
    /// The agent's labels, as in its presence.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The ID of the agent's result-signing key (as `flotilla agents` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// When this incarnation of the agent started.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub started_at: OffsetDateTime,
    /// When the agent wrote this entry, by its own clock.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub refreshed_at: OffsetDateTime,
}

impl SchemaTag for Registration {
    const SCHEMA: &'static str = RegistrationSchema::VALUE;
}
