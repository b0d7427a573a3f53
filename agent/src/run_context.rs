//! What checks and workloads need to reach the service during one run.

use std::path::Path;

use flotilla_schemas::RunId;

use crate::children::Launcher;

/// The service as one run's checks and workloads reach it.
#[derive(Clone, Copy)]
pub struct RunContext<'a> {
    pub http: &'a reqwest::Client,
    /// The service root: where programs run and relative log paths point.
    pub root: &'a Path,
    /// The URL of a check that names none.
    pub health_url: &'a str,
    /// Sent along with every request (trace context and correlation ID).
    pub run_id: RunId,
    /// How programs are started.
    pub launcher: &'a Launcher,
}
