//! The messages. Each starts with a `schema` field naming its type and version.

mod command;
mod presence;
mod progress;
mod registration;
mod result;

pub use command::{
    Action, Check, Command, CommandSchema, Gates, HttpCheck, Inconclusive, LEGACY_COMMAND_SCHEMA,
    PlanFile, Precondition, SettingProbe, Step, Workload,
};
pub use presence::{AgentState, Presence, PresenceSchema};
pub use progress::{Phase, PhaseStatus, Progress, ProgressSchema};
pub use registration::{Registration, RegistrationSchema};
pub use result::{
    CheckVerdict, ConfigShape, GateReport, Inspection, JobOutputReport, JobRun, Measurements,
    MemorySource, Outcome, PhaseReport, Preview, ResultSchema, RunResult, SettingReport,
    StepPreview, WorkloadFigures, WorkloadReport,
};

use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};

use crate::SchemaTag;

/// Every message type on the bus.
pub trait WireMessage: Serialize + DeserializeOwned + JsonSchema + SchemaTag {}

impl<T: Serialize + DeserializeOwned + JsonSchema + SchemaTag> WireMessage for T {}
