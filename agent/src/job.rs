//! Run-once jobs (`kind = "job"`): a service that is *run* where a service is restarted, and
//! judged by its run rather than by a health endpoint.
//!
//! - precheck: no restart step (the restart phase runs the job; a step would run it twice),
//!   the job's own dry run (`check_command`) on the current files, then the baseline run (see
//!   [`JobBaseline`]), which must be good;
//! - restart phase: the dry run on the new files, then the run: its exit code must be a
//!   success code within `timeout`;
//! - validate phase: its outputs, the plan's functional checks (a `log` check reads its log),
//!   the gates — duration against the baseline (the `latency_*` gates, as for a job workload),
//!   peak memory (the `memory_*` gates, and `max_peak_memory_bytes`) — and the workloads;
//! - rollback: the files come back (the outputs of the last good run with them); the job is run
//!   again only with `rerun_on_rollback`.
//!
//! The agent never runs a job on its own: not at its start, not after recovery. The phases
//! call it from `crate::lifecycle::job`.

pub(crate) mod baseline;
mod config;
pub(crate) mod gates;
pub(crate) mod outputs;
pub(crate) mod run;

pub use config::{JobBaseline, JobConfig, JobOutput};
