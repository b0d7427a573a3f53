//! The Flotilla wire contract.
//!
//! Everything the coordinator and the agents say to each other is defined here, once: message
//! types with their schema versions, the subjects they travel on, and validated identifiers.
//! This crate does no I/O, so another implementation can speak Flotilla from these types (or
//! from the JSON Schema files generated from them under `schemas/json/`) alone.

mod codec;
pub mod fields;
mod ids;
pub mod labels;
pub mod messages;
pub mod paths;
pub mod placeholder;
pub mod subjects;
mod version;

pub use codec::{DecodeError, MAX_MESSAGE_BYTES, decode, encode, schema_of};
pub use ids::{CommandId, IdError, InstanceId, RunId, ServiceName};
pub use messages::{
    Action, AgentState, Check, CheckVerdict, Command, CommandSchema, ConfigShape, GateReport,
    Gates, HttpCheck, Inconclusive, Inspection, JobOutputReport, JobRun, LEGACY_COMMAND_SCHEMA,
    Measurements, MemorySource, Outcome, Phase, PhaseReport, PhaseStatus, PlanFile, Precondition,
    Presence, Preview, Progress, ProgressSchema, Registration, RegistrationSchema, ResultSchema,
    RunResult, SettingProbe, SettingReport, Step, StepPreview, WireMessage, Workload,
    WorkloadFigures, WorkloadReport,
};
pub use version::SchemaTag;

/// The header that carries the run's correlation ID next to the W3C `traceparent`.
pub const HEADER_RUN_ID: &str = "Flotilla-Run-Id";

/// The NATS header that carries the `traceparent` of the run's root span. The standard
/// `traceparent` header carries the coordinator's producer span; the agent parents its
/// consumer span on the run's root (which is made durable before anything is dispatched) and
/// links the producer span, so a coordinator killed before exporting its producer spans leaves
/// no orphan in the trace.
pub const HEADER_RUN_TRACEPARENT: &str = "Flotilla-Run-Traceparent";

/// The HTTP header the agent sends to its service so the service's logs join the run.
pub const HTTP_CORRELATION_HEADER: &str = "x-flotilla-run-id";
