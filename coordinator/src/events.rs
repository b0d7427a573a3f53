//! A run's events read back from the events stream (`flotilla.evt.<run>.>`), from the first
//! one: what `watch` follows live and what the HTML report's timeline is drawn from. An ordered
//! consumer is ephemeral and needs no permission beyond reading the stream. An event that its
//! agent did not sign (or that came on another agent's subject) is skipped with a warning:
//! nothing forged is ever shown as an outcome.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Progress, RunId, RunResult, decode, schema_of};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::trust::ResultTrust;

/// Why a run's events cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the events of run {run}")]
pub struct EventsError {
    run: RunId,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// One event of a run.
#[derive(Debug, Clone)]
pub enum RunEvent {
    /// A phase started or ended (`flotilla.progress.v1`).
    Progress(Progress),
    /// A command's result (`flotilla.result.v1`); boxed, as it is several times a progress.
    Result(Box<RunResult>),
}

/// A run's events, in the order the stream holds them.
pub struct RunEvents {
    messages: consumer::pull::Ordered,
    /// Events in the stream when the consumer was created.
    pending_at_start: u64,
    subjects: Subjects,
    trust: ResultTrust,
    /// Forged events skipped so far.
    pub forged: usize,
}

/// How long [`read_all`] waits for the next stored event before it gives up on the rest.
const STORED_EVENT_WAIT: Duration = Duration::from_secs(3);

// === impl RunEvent ===

impl RunEvent {
    /// The command it reports on.
    pub fn command_id(&self) -> flotilla_schemas::CommandId {
        match self {
            RunEvent::Progress(p) => p.command_id,
            RunEvent::Result(r) => r.command_id,
        }
    }

    /// When the agent reported it.
    pub fn at(&self) -> OffsetDateTime {
        match self {
            RunEvent::Progress(p) => p.at,
            RunEvent::Result(r) => r.at,
        }
    }
}

// === impl RunEvents ===

impl RunEvents {
    /// Opens the events of `run`, from the first one; `trust` holds its agents' keys.
    pub async fn open(
        client: &async_nats::Client,
        subjects: &Subjects,
        run: RunId,
        trust: ResultTrust,
    ) -> Result<Self, EventsError> {
        let error = |e: Box<dyn std::error::Error + Send + Sync>| EventsError { run, source: e };
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(subjects.events_stream())
            .await
            .map_err(|e| error(Box::new(e)))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects.run_events(&run),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| error(Box::new(e)))?;
        let pending_at_start = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| error(Box::new(e)))?;
        Ok(Self {
            messages,
            pending_at_start,
            subjects: subjects.clone(),
            trust,
            forged: 0,
        })
    }

    /// The next event and how many more the stream holds now; `None` when nothing came within
    /// `wait`. Malformed events and events of unknown schemas are skipped.
    pub async fn next(&mut self, wait: Duration) -> Option<(RunEvent, u64)> {
        let deadline = Instant::now() + wait;
        loop {
            let message = match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "event stream hiccup");
                    continue;
                }
                Ok(None) | Err(_) => return None,
            };
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            let event = match schema_of(&message.payload).as_deref() {
                Ok(flotilla_schemas::ProgressSchema::VALUE) => {
                    decode::<Progress>(&message.payload).map(RunEvent::Progress)
                }
                Ok(flotilla_schemas::ResultSchema::VALUE) => {
                    decode::<RunResult>(&message.payload).map(|r| RunEvent::Result(Box::new(r)))
                }
                other => {
                    tracing::warn!(schema = ?other, "ignoring an event of unknown schema");
                    continue;
                }
            };
            match event {
                Ok(event) => {
                    let (run, service, instance) = match &event {
                        RunEvent::Progress(p) => (p.run_id, &p.service, &p.instance),
                        RunEvent::Result(r) => (r.run_id, &r.service, &r.instance),
                    };
                    let signature = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(flotilla_bus::signing::SIGNATURE_HEADER))
                        .map(|v| v.as_str());
                    let checked = if message.subject.as_str()
                        == self.subjects.event(&run, service, instance)
                    {
                        self.trust
                            .check(service, instance, &message.payload, signature)
                    } else {
                        Err("published on another agent's subject".to_owned())
                    };
                    match checked {
                        Ok(()) => return Some((event, pending)),
                        Err(why) => {
                            self.forged += 1;
                            tracing::warn!(%service, %instance, "ignoring a forged event: {why}");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed event"),
            }
        }
    }
}

/// Every authentic event of `record`'s run stored so far.
pub async fn read_all(
    client: &async_nats::Client,
    subjects: &Subjects,
    record: &crate::store::RunRecord,
) -> Result<Vec<RunEvent>, EventsError> {
    let trust = ResultTrust::of(record);
    let mut events = RunEvents::open(client, subjects, record.run_id, trust).await?;
    let mut out = Vec::new();
    if events.pending_at_start == 0 {
        return Ok(out);
    }
    while let Some((event, pending)) = events.next(STORED_EVENT_WAIT).await {
        out.push(event);
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}
