//! The engine's side of [`crate::events::RunEvents`], the one reader of a run's events:
//! live progress goes to the engine's [`ProgressSink`] on the way, stored results come back to
//! be filed. Nothing the engine decides rests on progress: it may be lost, and it is not
//! stored, so a resumed run shows only the progress published after it resumed.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_schemas::RunResult;
use flotilla_schemas::subjects::Subjects;
use tokio::time::Instant;

use super::{ProgressSink, RolloutError};
use crate::events::{RunEvent, RunEvents};
use crate::store::RunRecord;
use crate::trust::ResultTrust;

/// Reads a run's events from its first: whatever was published before the coordinator started
/// listening (or while it was down) is not lost.
pub(super) struct Follower {
    events: RunEvents,
}

// === impl Follower ===

impl Follower {
    pub(super) async fn new(
        events: &jetstream::stream::Stream,
        subjects: &Subjects,
        record: &RunRecord,
    ) -> Result<Self, RolloutError> {
        let trust = ResultTrust::of(record);
        let events = RunEvents::on_stream(events.clone(), subjects, record.run_id, trust)
            .await
            .map_err(|e| RolloutError::Follow(Box::new(e)))?;
        Ok(Self { events })
    }

    /// Hears the run's live progress too, for the engine's display.
    pub(super) async fn hear_progress(self, client: &async_nats::Client) -> Self {
        Self {
            events: self.events.hear_progress(client).await,
        }
    }

    /// The notes on forged results ignored since the last call.
    pub(super) fn take_ignored(&mut self) -> Vec<String> {
        self.events.take_forged()
    }

    /// The next result of the run, passing progress to `sink` on the way (not the result: the
    /// caller shows it once it takes it); `None` at `deadline`.
    pub(super) async fn next_result(
        &mut self,
        deadline: Instant,
        sink: &mut impl ProgressSink,
    ) -> Option<RunResult> {
        loop {
            if let Some(result) = pass_on(self.events.next_until(deadline).await?, sink) {
                return Some(result);
            }
        }
    }

    /// Reads every event of the run already in the stream (bounded by `limit`) and returns its
    /// results: what agents published while no coordinator listened, or after it gave up.
    pub(super) async fn catch_up(
        &mut self,
        limit: Duration,
        sink: &mut impl ProgressSink,
    ) -> Vec<RunResult> {
        let events = self.events.read_stored(limit, Some(limit)).await;
        events
            .into_iter()
            .filter_map(|event| pass_on(event, sink))
            .collect()
    }
}

/// Shows `event` on `sink` if it is progress; returns it if it is a result. A result is shown
/// only once it is filed (see `filing`): one the engine refuses is never displayed as an outcome.
fn pass_on(event: RunEvent, sink: &mut impl ProgressSink) -> Option<RunResult> {
    match event {
        RunEvent::Progress(progress) => {
            sink.progress(&progress);
            None
        }
        RunEvent::Result(result) => Some(*result),
    }
}
