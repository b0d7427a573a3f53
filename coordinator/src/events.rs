//! A run's events: its results read back from the events stream (`flotilla.evt.<run>.>`), from
//! the first one, and, for a reader that [`RunEvents::hearing`] a core subscription, its live
//! progress (`flotilla.live.<run>.>`, never stored). The one reader of them, used by the rollout
//! engine (results, and progress for its display), `watch` (followed live), `migrate --dry-run`
//! and the HTML report's timeline. An ordered consumer is ephemeral and needs no permission
//! beyond reading the stream. Progress stored by agents older than live progress is read from
//! the stream as before.
//!
//! Every reader gets the same two guarantees:
//! - an event that its agent did not sign, or that came on another agent's subject, is
//!   skipped with a warning (a forged result also leaves a note for the run record): nothing
//!   forged is ever shown or filed as an outcome;
//! - after [`RESYNC_AFTER`] of silence the events are read again from the one after the last
//!   seen: an ordered consumer loses what the broker pushed into a connection that then died
//!   (a network cut, a reset), and notices only at the next event, which may never come.

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
    stream: jetstream::stream::Stream,
    filter: String,
    run: RunId,
    subjects: Subjects,
    /// The keys each agent's events must be signed with.
    trust: ResultTrust,
    /// Stream sequence of the last event read.
    last: u64,
    /// When the last event came, or the events were last read again.
    heard: Instant,
    /// Notes on the forged results skipped, not yet taken into the record.
    forged: Vec<String>,
    /// Live progress, when this reader hears it: a core subscription on the run's (or every
    /// run's) progress subjects.
    live: Option<async_nats::Subscriber>,
}

/// How long the run's events may stay silent before they are read again from the last one
/// seen: without this, results published during a network cut were never read and their
/// commands timed out although the agents had answered.
const RESYNC_AFTER: Duration = Duration::from_secs(5);

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
        let js = jetstream::new(client.clone());
        let stream = js
            .get_stream(subjects.events_stream())
            .await
            .map_err(|e| EventsError {
                run,
                source: Box::new(e),
            })?;
        Self::on_stream(stream, subjects, run, trust).await
    }

    /// [`RunEvents::open`] on an events stream already at hand.
    pub async fn on_stream(
        stream: jetstream::stream::Stream,
        subjects: &Subjects,
        run: RunId,
        trust: ResultTrust,
    ) -> Result<Self, EventsError> {
        let filter = subjects.run_events(&run);
        let messages = follow(&stream, &filter, consumer::DeliverPolicy::All)
            .await
            .map_err(|source| EventsError { run, source })?;
        Ok(Self {
            messages,
            stream,
            filter,
            run,
            subjects: subjects.clone(),
            trust,
            last: 0,
            heard: Instant::now(),
            forged: Vec::new(),
            live: None,
        })
    }

    /// Hears live progress on `live`, a core subscription on [`Subjects::run_progress`] of this
    /// run or on [`Subjects::all_progress`] (other runs' progress is dropped): what a reader
    /// made before the run's first command hears every phase.
    pub fn hearing(self, live: async_nats::Subscriber) -> Self {
        Self {
            live: Some(live),
            ..self
        }
    }

    /// Subscribes to the run's live progress; without it (no permission, a broken connection)
    /// the reader goes on with results only: progress is advisory.
    pub async fn hear_progress(self, client: &async_nats::Client) -> Self {
        match client
            .subscribe(self.subjects.run_progress(&self.run))
            .await
        {
            Ok(live) => self.hearing(live),
            Err(e) => {
                tracing::warn!(error = %e, "live progress not heard");
                self
            }
        }
    }

    /// The notes on forged results skipped since the last call.
    pub fn take_forged(&mut self) -> Vec<String> {
        std::mem::take(&mut self.forged)
    }

    /// The next authentic event; `None` when nothing came within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<RunEvent> {
        self.next_until(Instant::now() + wait).await
    }

    /// The next authentic event; `None` at `deadline`. Malformed events, events of unknown
    /// schemas and forged events are skipped.
    pub async fn next_until(&mut self, deadline: Instant) -> Option<RunEvent> {
        loop {
            if let Some(event) = self.read(deadline).await? {
                return Some(event);
            }
        }
    }

    /// Every authentic event stored now that was not read yet: what agents published while
    /// no reader listened. Gives up when no event came for `wait`, or at `limit`.
    pub async fn read_stored(&mut self, wait: Duration, limit: Option<Duration>) -> Vec<RunEvent> {
        let policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        let probe = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.filter.clone(),
                deliver_policy: policy,
                ..Default::default()
            })
            .await;
        let pending = match probe {
            Ok(probe) => probe.cached_info().num_pending,
            Err(e) => {
                tracing::warn!(error = %e, "cannot count the run's unread events");
                return Vec::new();
            }
        };
        let end = limit.map(|limit| Instant::now() + limit);
        let mut events = Vec::new();
        for _ in 0..pending {
            let next = Instant::now() + wait;
            let deadline = end.map_or(next, |end| end.min(next));
            match self.read_stream(deadline).await {
                Some(Some(event)) => events.push(event),
                Some(None) => {}
                None => break,
            }
        }
        events
    }

    /// The next message of the run, stored or live: `Some(Some(event))`, `Some(None)` for one
    /// skipped, `None` at `deadline`.
    async fn read(&mut self, deadline: Instant) -> Option<Option<RunEvent>> {
        let Some(live) = self.live.as_mut() else {
            return self.read_stream(deadline).await;
        };
        let heard = tokio::select! {
            biased;
            message = live.next() => message,
            stored = Self::read_stream_of(
                &mut self.messages,
                &mut self.heard,
                &mut self.last,
                deadline,
            ) => {
                return match stored {
                    Stored::Message(message) => Some(self.authentic_event(&message)),
                    Stored::Resync => {
                        self.resync().await;
                        Some(None)
                    }
                    Stored::Deadline => None,
                };
            }
        };
        match heard {
            Some(message) => Some(self.authentic_progress(&message)),
            None => {
                // The subscription ended (the connection closed): results only from now on.
                self.live = None;
                Some(None)
            }
        }
    }

    /// The next stored message of the run, as [`RunEvents::read`].
    async fn read_stream(&mut self, deadline: Instant) -> Option<Option<RunEvent>> {
        loop {
            match Self::read_stream_of(
                &mut self.messages,
                &mut self.heard,
                &mut self.last,
                deadline,
            )
            .await
            {
                Stored::Message(message) => return Some(self.authentic_event(&message)),
                Stored::Resync => self.resync().await,
                Stored::Deadline => return None,
            }
        }
    }

    /// The next stored message, or that the stream was silent too long (read it again), or the
    /// deadline. Borrows only what it needs, so that live progress can be heard beside it.
    async fn read_stream_of(
        messages: &mut consumer::pull::Ordered,
        heard: &mut Instant,
        last: &mut u64,
        deadline: Instant,
    ) -> Stored {
        loop {
            let silence = (*heard + RESYNC_AFTER).min(deadline);
            let message = match tokio::time::timeout_at(silence, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "event stream hiccup");
                    continue;
                }
                Ok(None) | Err(_) if silence < deadline => return Stored::Resync,
                Ok(None) | Err(_) => return Stored::Deadline,
            };
            *heard = Instant::now();
            if let Ok(info) = message.info() {
                *last = info.stream_sequence;
            }
            return Stored::Message(Box::new(message));
        }
    }

    /// Reads the run's events again from the one after the last seen.
    async fn resync(&mut self) {
        let policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: self.last + 1,
        };
        match follow(&self.stream, &self.filter, policy).await {
            Ok(messages) => self.messages = messages,
            Err(e) => {
                tracing::warn!(run = %self.run, error = %e, "cannot re-read the run's events yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        self.heard = Instant::now();
    }

    /// The live progress `message` holds, if it is this run's, well-formed, and from the agent
    /// it names: published on that agent's progress subject and signed by its key. A forged
    /// progress message decides nothing, so it is skipped with a warning and no note.
    fn authentic_progress(&mut self, message: &async_nats::Message) -> Option<RunEvent> {
        let ours = self.subjects.run_progress(&self.run);
        if !message.subject.starts_with(ours.trim_end_matches('>')) {
            return None; // another run's, heard by a subscription on every run's progress
        }
        let progress = match decode::<Progress>(&message.payload) {
            Ok(progress) => progress,
            Err(e) => {
                tracing::warn!(error = %e, subject = %message.subject, "ignoring malformed progress");
                return None;
            }
        };
        let subject =
            self.subjects
                .progress(&progress.run_id, &progress.service, &progress.instance);
        let checked = if message.subject.as_str() != subject {
            Err("published on another agent's subject".to_owned())
        } else {
            self.trust.check(
                &progress.service,
                &progress.instance,
                &message.payload,
                signature_of(message.headers.as_ref()),
            )
        };
        match checked {
            Ok(()) => Some(RunEvent::Progress(progress)),
            Err(why) => {
                tracing::warn!(
                    subject = %message.subject,
                    service = %progress.service,
                    instance = %progress.instance,
                    "ignoring forged progress: {why}"
                );
                None
            }
        }
    }

    /// The event `message` holds, if it is well-formed and comes from the agent it names:
    /// published on its subject (the broker's permissions) and signed by its key. Progress
    /// stored here comes from agents older than live progress.
    fn authentic_event(&mut self, message: &jetstream::Message) -> Option<RunEvent> {
        let event = match schema_of(&message.payload).as_deref() {
            Ok(flotilla_schemas::ProgressSchema::VALUE) => {
                decode::<Progress>(&message.payload).map(RunEvent::Progress)
            }
            Ok(flotilla_schemas::ResultSchema::VALUE) => {
                decode::<RunResult>(&message.payload).map(|r| RunEvent::Result(Box::new(r)))
            }
            other => {
                tracing::warn!(schema = ?other, "ignoring an event of unknown schema");
                return None;
            }
        };
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a malformed event");
                return None;
            }
        };
        let (run, service, instance, what) = match &event {
            RunEvent::Progress(p) => (p.run_id, &p.service, &p.instance, "progress event"),
            RunEvent::Result(r) => (r.run_id, &r.service, &r.instance, "result"),
        };
        let checked = if message.subject.as_str() != self.subjects.event(&run, service, instance) {
            Err("published on another agent's subject".to_owned())
        } else {
            self.trust.check(
                service,
                instance,
                &message.payload,
                signature_of(message.headers.as_ref()),
            )
        };
        let Err(why) = checked else {
            return Some(event);
        };
        tracing::warn!(
            subject = %message.subject,
            %service,
            %instance,
            "ignoring a forged {what}: {why}"
        );
        // A forged progress event decides nothing: only a forged result is noted.
        if matches!(event, RunEvent::Result(_)) {
            self.forged.push(format!(
                "ignored 1 forged result for {service}/{instance}: {why}"
            ));
        }
        None
    }
}

/// What the wait for the next stored message ended with.
enum Stored {
    Message(Box<jetstream::Message>),
    /// The stream was silent for [`RESYNC_AFTER`]: read it again from the last seen.
    Resync,
    Deadline,
}

/// The `Flotilla-Signature` header's value.
fn signature_of(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    headers
        .and_then(|h| h.get(flotilla_bus::signing::SIGNATURE_HEADER))
        .map(|v| v.as_str())
}

/// An ordered consumer of `filter` from `deliver_policy`, and its messages.
async fn follow(
    stream: &jetstream::stream::Stream,
    filter: &str,
    deliver_policy: consumer::DeliverPolicy,
) -> Result<consumer::pull::Ordered, Box<dyn std::error::Error + Send + Sync>> {
    // An ephemeral consumer is created by the stream's leader: ride out its election.
    let deadline = tokio::time::Instant::now() + flotilla_bus::outage::OUTAGE_TOLERANCE;
    let create = || {
        stream.create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy,
            ..Default::default()
        })
    };
    let consumer =
        flotilla_bus::outage::retry_until("following the run's events", deadline, create, |_| true)
            .await?;
    Ok(consumer.messages().await?)
}

/// Every authentic event of `record`'s run stored so far.
pub async fn read_all(
    client: &async_nats::Client,
    subjects: &Subjects,
    record: &crate::store::RunRecord,
) -> Result<Vec<RunEvent>, EventsError> {
    let trust = ResultTrust::of(record);
    let mut events = RunEvents::open(client, subjects, record.run_id, trust).await?;
    Ok(events.read_stored(STORED_EVENT_WAIT, None).await)
}
