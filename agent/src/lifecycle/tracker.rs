//! A command's phases as they run: live progress, spans, and the phase reports of its result
//! (with each phase's start, as progress is not stored).

use std::time::Instant;

use flotilla_schemas::{Command, Phase, PhaseReport, PhaseStatus};
use tracing::Instrument;

use super::error::{PhaseError, PhaseFailure};
use crate::events::Events;
use flotilla_telemetry::error_chain;

/// Collects phase reports and publishes progress as phases start and end.
pub(super) struct Tracker<'a> {
    pub(super) events: &'a Events,
    pub(super) ops: crate::ops::Ops,
    pub(super) command: &'a Command,
    pub(super) phases: Vec<PhaseReport>,
}

impl Tracker<'_> {
    /// Runs the phase `work`, reporting its start and end; its failure names the phase.
    pub(super) async fn run<T, F>(&mut self, phase: Phase, work: F) -> Result<T, PhaseFailure>
    where
        F: Future<Output = Result<T, PhaseError>>,
    {
        self.events
            .progress(self.command, phase, PhaseStatus::Started, None, None)
            .await;
        let started = Instant::now();
        let started_at = time::OffsetDateTime::now_utc();
        let span = tracing::info_span!(
            "phase",
            otel.name = phase.as_str(),
            flotilla.run_id = %self.command.run_id,
            flotilla.service = %self.command.service,
            flotilla.instance = %self.command.instance,
            flotilla.phase = phase.as_str(),
        );
        let outcome = work.instrument(span).await;
        let elapsed = started.elapsed();
        let (status, detail) = match &outcome {
            Ok(_) => (PhaseStatus::Succeeded, None),
            Err(error) => (PhaseStatus::Failed, Some(error_chain(error))),
        };
        tracing::info!(
            phase = phase.as_str(),
            ?status,
            elapsed_ms = elapsed.as_millis() as u64,
            detail,
            "phase ended"
        );
        self.ops.phase(phase, status, elapsed);
        self.events
            .progress(self.command, phase, status, Some(elapsed), detail.clone())
            .await;
        self.phases.push(PhaseReport {
            phase,
            status,
            duration_ms: elapsed.as_millis() as u64,
            detail,
            started_at: Some(started_at),
        });
        outcome.map_err(|error| PhaseFailure { phase, error })
    }
}
