//! Reading a run's events.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use flotilla_bus::signing::SIGNATURE_HEADER;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Progress, RunId, RunResult, ServiceName, decode, schema_of};
use futures::StreamExt;
use tokio::time::Instant;

use super::{ProgressSink, RolloutError};
use crate::store::RunRecord;
use crate::trust::ResultTrust;

/// Reads a run's events from the events stream, from its first message: whatever was published
/// before the coordinator started listening (or while it was down) is not lost.
pub(super) struct Follower {
    messages: consumer::pull::Ordered,
    subjects: Subjects,
    events: jetstream::stream::Stream,
    filter: String,
    /// Stream sequence of the last event read.
    last: u64,
    /// The keys each agent's events must be signed with.
    trust: ResultTrust,
    /// Notes on the forged events ignored, not yet taken into the record.
    ignored: Vec<String>,
}

/// How long the run's events may stay silent before the follower reads them again from the
/// last one it saw. An ordered consumer loses what the broker pushed into a connection that
/// then died (a network cut, a reset), and notices only at the next event, which may never
/// come: without this, results published during a cut were never read and their commands
/// timed out although the agents had answered.
const RESYNC_AFTER: Duration = Duration::from_secs(5);

// === impl Follower ===

impl Follower {
    pub(super) async fn new(
        events: &jetstream::stream::Stream,
        subjects: &Subjects,
        record: &RunRecord,
    ) -> Result<Self, RolloutError> {
        let filter = subjects.run_events(&record.run_id);
        let messages = Self::follow(events, &filter, consumer::DeliverPolicy::All).await?;
        Ok(Self {
            messages,
            subjects: subjects.clone(),
            events: events.clone(),
            filter,
            last: 0,
            trust: ResultTrust::of(record),
            ignored: Vec::new(),
        })
    }

    /// The notes on forged events ignored since the last call.
    pub(super) fn take_ignored(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ignored)
    }

    /// Checks that an event comes from the agent it names: published on its subject (the
    /// broker's permissions) and signed by its key. A forged result is noted for the record; a
    /// forged progress event is only logged (it decides nothing).
    pub(super) fn authentic(
        &mut self,
        message: &async_nats::jetstream::Message,
        what: &str,
        service: &ServiceName,
        instance: &flotilla_schemas::InstanceId,
        run_id: &RunId,
    ) -> bool {
        let why = if message.subject.as_str() != self.subjects.event(run_id, service, instance) {
            Err("published on another agent's subject".to_owned())
        } else {
            let signature = message
                .headers
                .as_ref()
                .and_then(|h| h.get(SIGNATURE_HEADER))
                .map(|v| v.as_str());
            self.trust
                .check(service, instance, &message.payload, signature)
        };
        let Err(why) = why else { return true };
        tracing::warn!(subject = %message.subject, %service, %instance, "ignoring a forged {what}: {why}");
        if what == "result" {
            self.ignored.push(format!(
                "ignored 1 forged result for {service}/{instance}: {why}"
            ));
        }
        false
    }

    pub(super) async fn follow(
        events: &jetstream::stream::Stream,
        filter: &str,
        deliver_policy: consumer::DeliverPolicy,
    ) -> Result<consumer::pull::Ordered, RolloutError> {
        let consumer = events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| RolloutError::Follow(Box::new(e)))?;
        consumer
            .messages()
            .await
            .map_err(|e| RolloutError::Follow(Box::new(e)))
    }

    /// Reads the run's events again from the one after the last seen.
    pub(super) async fn resync(&mut self) {
        let policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        match Self::follow(&self.events, &self.filter, policy).await {
            Ok(messages) => self.messages = messages,
            Err(e) => {
                tracing::warn!(error = %e, "cannot re-read the run's events yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// The next result of the run, passing progress to `sink` on the way; `None` at `deadline`.
    pub(super) async fn next_result(
        &mut self,
        deadline: Instant,
        sink: &mut impl ProgressSink,
    ) -> Option<RunResult> {
        loop {
            if let Some(result) = self.next_event(deadline, sink).await? {
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
        let policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        let pending = match self
            .events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.filter.clone(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await
        {
            Ok(probe) => probe.cached_info().num_pending,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the run's unread events");
                return Vec::new();
            }
        };
        let deadline = Instant::now() + limit;
        let mut results = Vec::new();
        for _ in 0..pending {
            match self.next_event(deadline, sink).await {
                Some(Some(result)) => results.push(result),
                Some(None) => {}
                None => break,
            }
        }
        results
    }

    /// The next event of the run: `Some(Some(result))`, `Some(None)` for any other event (a
    /// progress event goes to `sink`), `None` at `deadline`.
    pub(super) async fn next_event(
        &mut self,
        deadline: Instant,
        sink: &mut impl ProgressSink,
    ) -> Option<Option<RunResult>> {
        loop {
            let silence = (Instant::now() + RESYNC_AFTER).min(deadline);
            let message = match tokio::time::timeout_at(silence, self.messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "event stream hiccup");
                    continue;
                }
                Ok(None) | Err(_) if silence < deadline => {
                    self.resync().await;
                    continue;
                }
                Ok(None) | Err(_) => return None,
            };
            if let Ok(info) = message.info() {
                self.last = info.stream_sequence;
            }
            return Some(match schema_of(&message.payload).as_deref() {
                Ok(flotilla_schemas::ProgressSchema::VALUE) => {
                    match decode::<Progress>(&message.payload) {
                        Ok(p)
                            if !self.authentic(
                                &message,
                                "progress event",
                                &p.service,
                                &p.instance,
                                &p.run_id,
                            ) => {}
                        Ok(progress) => sink.progress(&progress),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed progress event"),
                    }
                    None
                }
                Ok(flotilla_schemas::ResultSchema::VALUE) => {
                    match decode::<RunResult>(&message.payload) {
                        Ok(r)
                            if !self.authentic(
                                &message,
                                "result",
                                &r.service,
                                &r.instance,
                                &r.run_id,
                            ) =>
                        {
                            None
                        }
                        Ok(result) => {
                            sink.result(&result);
                            Some(result)
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed result");
                            None
                        }
                    }
                }
                other => {
                    tracing::warn!(schema = ?other, "ignoring an event of unknown schema");
                    None
                }
            });
        }
    }
}
