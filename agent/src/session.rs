//! The agent's NATS session: receives its own commands (live, and by a catch-up read of the
//! last one after each reconnect: `delivery`), answers presence requests, and hands commands to
//! the lifecycle one at a time.

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use flotilla_bus::{BusError, signing};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, AgentState, Command, CommandId, HEADER_RUN_TRACEPARENT, InstanceId, Outcome, RunId,
    RunResult, ServiceName, decode,
};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::events::Events;
use crate::journal::Record;
use crate::lifecycle::{Acceptance, Lifecycle};
use delivery::{CaughtUp, Delivered, Delivery};
use flotilla_telemetry::error_chain;
use presence::answer;

mod delivery;
mod presence;

/// Why the session ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("cannot subscribe to {subject}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error("cannot load or create the agent's result-signing key")]
    Key(#[from] signing::SigningError),
}

/// The agent's own signing key in its state directory, made at first start.
const AGENT_KEY_FILE: &str = "agent.key";

/// How long the agent waits for its telemetry to reach the store after each command.
const TELEMETRY_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How often the agent retries publishing results that did not reach the events stream.
const RESULT_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// What presence answers report; shared between the command loop and the presence responder.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: AgentState,
    pub current_run: Option<RunId>,
    pub service_pid: Option<u32>,
}

/// Serves commands until `shutdown` is cancelled. The command in hand is always finished first.
pub async fn serve(
    client: async_nats::Client,
    reconnected: Arc<tokio::sync::Notify>,
    subjects: Subjects,
    mut lifecycle: Lifecycle,
    status: Arc<Mutex<Status>>,
    telemetry: &flotilla_telemetry::TelemetryGuard,
    shutdown: CancellationToken,
) -> Result<Lifecycle, SessionError> {
    let js = flotilla_bus::jetstream(client.clone(), lifecycle.config.nats.domain.as_deref());
    // The key first: presence, even while waiting for the streams, announces it.
    let signer = Arc::new(signing::SigningKey::load_or_create(
        &lifecycle.config.agent.state_dir.join(AGENT_KEY_FILE),
    )?);
    tracing::info!(
        key_id = signer.id(),
        "results are signed with the agent's key"
    );
    // The agent's entry in the registry, by which discovery knows whom to wait for.
    crate::registry::spawn(&js, &subjects, &lifecycle, signer.id(), &shutdown);
    let (commands, answering) = match streams(&js, &subjects).await {
        Ok(commands) => (commands, None),
        Err(_) => {
            // While it waits for the streams it answers presence (see `wait_for_streams`).
            let answering = answer(&client, &subjects, &lifecycle, &signer, &status, &shutdown);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(lifecycle),
                commands = wait_for_streams(&js, &subjects) => (commands, Some(answering)),
            }
        }
    };
    lifecycle.plan_files = Some(crate::plan_files::PlanFiles::new(
        js.clone(),
        subjects.clone(),
    ));
    let (service, instance) = (
        lifecycle.config.service.name.clone(),
        lifecycle.config.agent.instance.clone(),
    );
    let events = Events::new(
        js.clone(),
        subjects.clone(),
        service.clone(),
        instance.clone(),
        signer.clone(),
    )
    .redacting(lifecycle.redactor.clone());
    // Results that a crash kept from the stream go out before anything new is taken. They go
    // out without the digest of the command they answer (the agent has not received it in this
    // life): the catch-up read answers them again, with it, so that the coordinator files them.
    let answered_blind = lifecycle
        .journal
        .unpublished()
        .iter()
        .map(|r| r.command_id)
        .collect();
    publish_unpublished(&mut lifecycle, &events).await?;
    let trusted = trusted_keys(&lifecycle);

    let subject = subjects.command_delivery(&service, &instance);
    let stored = subjects.command(&service, &instance);
    let delivery =
        Delivery::subscribe(&client, commands, subject.clone(), stored, reconnected).await?;
    // Presence once the subscription exists (unless it answered while waiting for the streams):
    // an agent that answers can take commands.
    let (presence, micro) = answering
        .unwrap_or_else(|| answer(&client, &subjects, &lifecycle, &signer, &status, &shutdown));
    tracing::info!(%service, %instance, %subject, "ready for commands");
    lifecycle.ops.subscribed(true);

    let mut session = Session {
        lifecycle,
        events,
        status,
        trusted,
        telemetry,
        caught_up: None,
        answered_blind,
    };
    let served = session.take_commands(delivery, &shutdown).await;
    session.lifecycle.ops.subscribed(false);
    presence.abort();
    micro.abort();
    served.map(|()| session.lifecycle)
}

/// What handling a command needs. (The telemetry flush in progress is kept beside it, not in it:
/// it is `Send` but not `Sync`, and the session is borrowed across awaits.)
struct Session<'a> {
    lifecycle: Lifecycle,
    events: Events,
    status: Arc<Mutex<Status>>,
    /// Keys whose signatures commands must carry; empty accepts unsigned commands.
    trusted: Vec<signing::TrustedKey>,
    telemetry: &'a flotilla_telemetry::TelemetryGuard,
    /// The command the last catch-up read handled: its live copy, if one comes too, is the
    /// same delivery twice and is not answered again.
    caught_up: Option<CommandId>,
    /// Commands whose results this agent published at its start, recovered from the journal,
    /// without the command's digest (which a signing agent's results must name to be filed).
    answered_blind: std::collections::HashSet<CommandId>,
}

impl<'a> Session<'a> {
    /// Takes commands one at a time until `shutdown` or the end of the subscription, catching
    /// up when a reconnect may have lost one, and retrying unpublished results meanwhile.
    async fn take_commands(
        &mut self,
        mut delivery: Delivery,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let mut retry = tokio::time::interval(RESULT_RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A failed catch-up read waits for the next retry tick, not a busy loop.
        let mut read_failed = false;
        let reconnected = delivery.reconnected();
        // The flush of the last command's spans and logs: it runs alongside whatever comes next
        // (waiting, or the next command), never in front of it.
        let mut flushing: Option<Flush<'a>> = None;
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                () = flushed(&mut flushing), if flushing.is_some() => {
                    flushing = None;
                    continue;
                }
                _ = retry.tick() => {
                    read_failed = false;
                    // Results the broker refused (unreachable, full) go out as soon as it takes
                    // them again, not only at the next start: the coordinator is still waiting.
                    publish_unpublished(&mut self.lifecycle, &self.events).await?;
                    continue;
                }
                () = reconnected.notified(), if !delivery.owed() => {
                    delivery.owe();
                    continue;
                }
                () = std::future::ready(()), if delivery.owed() && !read_failed => {
                    match delivery.catch_up().await {
                        CaughtUp::Found(message) => message,
                        CaughtUp::Nothing => continue,
                        CaughtUp::Failed => {
                            read_failed = true;
                            continue;
                        }
                    }
                }
                next = delivery.next_live() => match next {
                    Some(message) => message,
                    None => break,
                },
            };
            self.handle(message, &mut flushing).await?;
        }
        // Stop receiving before the last flush: a command sent meanwhile waits in the stream for
        // the next incarnation's catch-up.
        delivery.close().await;
        if let Some(pending) = flushing {
            pending.await;
        }
        Ok(())
    }

    /// Checks, carries out and answers one message; an error is a journal that cannot be
    /// written, which stops the agent.
    async fn handle(
        &mut self,
        message: Delivered,
        flushing: &mut Option<Flush<'a>>,
    ) -> Result<(), SessionError> {
        let Some(command) = self.authentic(&message).await else {
            self.lifecycle
                .ops
                .command(crate::ops::kind(None), Outcome::Refused);
            return Ok(());
        };
        if self.already_delivered(&message, &command) {
            return Ok(());
        }
        self.set_status(AgentState::Busy, Some(command.run_id));
        let span = process_span(&message, &command);
        // A secret file added or rotated since the last command is redacted from now on.
        self.lifecycle.redactor.refresh();
        if matches!(command.action, Action::Preview { .. }) {
            self.preview(&command, flushing).instrument(span).await;
            self.set_status(AgentState::Idle, None);
            return Ok(());
        }
        let kind = crate::ops::kind(Some(&command.action));
        let run = accept_and_run(&mut self.lifecycle, command, &self.events);
        let handled = alongside(flushing, run.instrument(span.clone())).await;
        let result = handled.inspect_err(|e| {
            tracing::error!(error = %error_chain(e), "journal write failed; stopping");
        })?;
        publish_result(&mut self.lifecycle, &self.events, &result)
            .instrument(span)
            .await?;
        self.lifecycle.ops.command(kind, result.outcome);
        self.lifecycle.remove_swapped_out();
        // After the answer, so that the coordinator never waits for it.
        self.lifecycle.compact_journal(false)?;
        self.lifecycle
            .ops
            .journal_bytes(self.lifecycle.journal.bytes());
        // Spans and logs of the command reach the store now, not at the next batch, so that
        // `verify` finds them as soon as the result is in; the next command does not wait.
        let telemetry = self.telemetry;
        *flushing = Some(match flushing.take() {
            Some(earlier) => Box::pin(async move {
                earlier.await;
                flush(telemetry).await;
            }),
            None => Box::pin(flush(telemetry)),
        });
        self.set_status(AgentState::Idle, None);
        Ok(())
    }

    /// The command a message carries, once its signature (when keys are trusted) and its
    /// decoding hold; otherwise it is refused and `None` returned. Authenticity first: nothing of
    /// an unsigned or forged message is trusted, not even its fields (the refusal names only the
    /// IDs it claims, so its sender hears why, and the digest of what was refused, so that it
    /// never counts against a genuine command).
    async fn authentic(&self, message: &Delivered) -> Option<Command> {
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(signing::SIGNATURE_HEADER))
            .map(|v| v.as_str());
        let digest = signing::command_digest(header, &message.payload);
        let (service, instance) = (
            &self.lifecycle.config.service.name,
            &self.lifecycle.config.agent.instance,
        );
        // An unsigned command is taken only when no key is trusted; either refusal names why.
        type Refusal = Box<dyn std::error::Error + Send + Sync>;
        let verified: Result<(), Refusal> = if self.trusted.is_empty() {
            Ok(())
        } else {
            signing::verify(&self.trusted, &message.payload, header)
                .map(drop)
                .map_err(Refusal::from)
        };
        let command =
            verified.and_then(|()| decode::<Command>(&message.payload).map_err(Refusal::from));
        match command {
            Ok(command) => {
                self.events.received(command.command_id, digest);
                Some(command)
            }
            // What a catch-up read finds was already received once (and answered then), or
            // was stored by someone else than the coordinator: only logged, never answered
            // again at every start.
            Err(e) if message.caught_up => {
                tracing::warn!(error = %error_chain(e.as_ref()), "ignoring the last stored command: it cannot be taken");
                None
            }
            Err(e) => {
                refuse(
                    &self.events,
                    &message.payload,
                    &digest,
                    e.as_ref(),
                    service,
                    instance,
                )
                .await;
                None
            }
        }
    }

    /// Answers a preview. Read-only, so never journalled: a replay runs it again and changes
    /// nothing either.
    async fn preview(&mut self, command: &Command, flushing: &mut Option<Flush<'a>>) {
        let result = alongside(flushing, self.lifecycle.preview(command, &self.events)).await;
        let kind = crate::ops::kind(Some(&command.action));
        self.lifecycle.ops.command(kind, result.outcome);
        match self.events.result(&result).await {
            Ok(()) => tracing::info!(outcome = result.outcome.as_str(), "preview published"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "preview not published"),
        }
    }

    fn set_status(&self, state: AgentState, run: Option<RunId>) {
        set_status(&self.status, state, run, self.lifecycle.supervisor.pid());
    }

    /// True when `command` needs no answer, because this delivery adds nothing: a catch-up
    /// read of a command the journal already has and answered (unless that answer, recovered at
    /// start, could not name its digest), or that expired unseen (the coordinator gave up on it; nothing is done or said); or the live
    /// copy of the command a catch-up read just handled. Every other repeat (a coordinator's
    /// re-send) is answered from the journal as before.
    fn already_delivered(&mut self, message: &Delivered, command: &Command) -> bool {
        let id = command.command_id;
        if !message.caught_up {
            return self.caught_up.take_if(|c| *c == id).is_some()
                && self.lifecycle.journal.get(id).is_some();
        }
        if self.lifecycle.journal.get(id).is_some() {
            if self.answered_blind.remove(&id) {
                tracing::info!(command_id = %id, "answering the last stored command again from the journal, now naming its digest");
                return false;
            }
            tracing::debug!(command_id = %id, "the last stored command was handled already");
            return true;
        }
        let skew = self.lifecycle.config.security.clock_skew;
        if command.expires_at + skew < OffsetDateTime::now_utc() {
            tracing::info!(command_id = %id, expired_at = %command.expires_at, "the last stored command expired before this agent saw it; ignored");
            return true;
        }
        tracing::info!(command_id = %id, "caught up on a command sent while this agent was away");
        self.caught_up = Some(id);
        false
    }
}

/// Journals `command` and carries it out, or answers it from the journal.
async fn accept_and_run(
    lifecycle: &mut Lifecycle,
    command: Command,
    events: &Events,
) -> Result<RunResult, crate::journal::JournalError> {
    tracing::info!(command_id = %command.command_id, "command received");
    match lifecycle.accept(&command)? {
        Acceptance::Done(result) => Ok(*result),
        // The journal owns the command now: a crash from here on is recovered from it, and a
        // second delivery is answered from it.
        Acceptance::Proceed => lifecycle.execute(command, events).await,
    }
}

/// The consumer span of a command: it continues the coordinator's trace from the message's
/// traceparent.
fn process_span(message: &Delivered, command: &Command) -> tracing::Span {
    let span = tracing::info_span!(
        "process",
        otel.name = format!("{} process", message.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %message.subject,
        messaging.message.id = %command.command_id,
        flotilla.run_id = %command.run_id,
        flotilla.service = %command.service,
        flotilla.instance = %command.instance,
    );
    continue_trace(&span, message.headers.as_ref());
    span
}

/// Publishes the results the journal still marks unpublished.
async fn publish_unpublished(
    lifecycle: &mut Lifecycle,
    events: &Events,
) -> Result<(), SessionError> {
    for result in lifecycle.journal.unpublished() {
        publish_result(lifecycle, events, &result).await?;
    }
    Ok(())
}

/// The keys commands must be signed with; none (unsigned commands accepted) is warned about.
fn trusted_keys(lifecycle: &Lifecycle) -> Vec<signing::TrustedKey> {
    let trusted: Vec<_> = lifecycle
        .config
        .security
        .trusted_keys
        .iter()
        .filter_map(|k| signing::TrustedKey::parse(k).ok())
        .collect();
    if trusted.is_empty() {
        tracing::warn!(
            "security.trusted_keys is empty: unsigned commands are accepted (fine for a local demo, never in production)"
        );
    }
    trusted
}

/// The commands stream, once the events stream exists too.
async fn streams(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<jetstream::stream::Stream, jetstream::context::GetStreamError> {
    js.get_stream(subjects.events_stream()).await?;
    js.get_stream(subjects.commands_stream()).await
}

/// Waits until both streams exist; returns the commands stream. A least-privileged agent may not
/// create the streams (`flotilla setup` or any coordinator command does): it waits for them,
/// however long, and goes on as soon as they appear. While it waits it answers presence, so that
/// a coordinator that creates them finds it (the last command sent meanwhile waits in the stream
/// for its catch-up read).
async fn wait_for_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> jetstream::stream::Stream {
    flotilla_bus::provision::wait_for(
        "waiting for the streams (run `flotilla setup`)",
        "the streams are there; going on",
        || streams(js, subjects),
    )
    .await
}

/// A telemetry flush in progress.
type Flush<'a> = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

async fn flush(telemetry: &flotilla_telemetry::TelemetryGuard) {
    if let Err(e) = telemetry.flush(TELEMETRY_FLUSH_TIMEOUT).await {
        tracing::warn!(error = %error_chain(&e), "telemetry not flushed");
    }
}

/// Waits for the flush in progress; there must be one.
async fn flushed(flushing: &mut Option<Flush<'_>>) {
    flushing.as_mut().expect("guarded by the condition").await
}

/// Runs `work` to its end while also driving `background` (a flush still in progress), which
/// is left in place, unfinished, when `work` ends first.
async fn alongside<T>(background: &mut Option<Flush<'_>>, work: impl Future<Output = T>) -> T {
    let Some(pending) = background.take() else {
        return work.await;
    };
    let work = std::pin::pin!(work);
    match futures::future::select(work, pending).await {
        futures::future::Either::Left((out, pending)) => {
            *background = Some(pending);
            out
        }
        futures::future::Either::Right(((), work)) => work.await,
    }
}

async fn publish_result(
    lifecycle: &mut Lifecycle,
    events: &Events,
    result: &RunResult,
) -> Result<(), SessionError> {
    match events.result(result).await {
        Ok(()) => {
            if !result.replayed {
                // Not fsynced: if a crash loses it, the result is sent again, and the
                // coordinator files one result per command ID.
                lifecycle.journal.append_lazily(Record::Published {
                    command_id: result.command_id,
                })?;
            }
            tracing::info!(
                outcome = result.outcome.as_str(),
                reason = result.reason.as_deref(),
                "result published"
            );
        }
        // The journal still marks it unpublished: it goes out on the next start.
        Err(e) => tracing::warn!(error = %error_chain(&e), "result not published"),
    }
    Ok(())
}

/// A message refused before it is decoded (unsigned, forged, malformed, of another version)
/// still gets an answer when it carries enough to address one, so the sender hears why instead
/// of waiting.
async fn refuse(
    events: &Events,
    payload: &[u8],
    digest: &str,
    error: &(dyn std::error::Error + Send + Sync),
    service: &ServiceName,
    instance: &InstanceId,
) {
    #[derive(Deserialize)]
    struct Loose {
        run_id: RunId,
        command_id: CommandId,
    }
    tracing::warn!(error = %error_chain(error), "refusing a command that cannot be decoded");
    let Ok(loose) = serde_json::from_slice::<Loose>(payload) else {
        return;
    };
    let result = RunResult {
        reason: Some(error_chain(error)),
        command_digest: Some(digest.to_owned()),
        ..RunResult::new(
            loose.run_id,
            loose.command_id,
            service.clone(),
            instance.clone(),
            OffsetDateTime::now_utc(),
            Outcome::Refused,
        )
    };
    if let Err(e) = events.result(&result).await {
        tracing::warn!(error = %error_chain(&e), "refusal not published");
    }
}

/// Parents the consumer span on the run's root (`Flotilla-Run-Traceparent`) and links the
/// coordinator's producer span (`traceparent`); without the run header, the producer span is
/// the parent, as the messaging conventions have it for one message.
fn continue_trace(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some(headers) = headers else { return };
    let producer = flotilla_telemetry::extract(headers);
    let run_root = headers.get(HEADER_RUN_TRACEPARENT).map(|value| {
        let mut only = async_nats::HeaderMap::new();
        only.insert("traceparent", value.as_str());
        flotilla_telemetry::extract(&only)
    });
    match run_root.filter(|cx| cx.span().span_context().is_valid()) {
        Some(root) => {
            let _ = span.set_parent(root);
            let producer = producer.span().span_context().clone();
            if producer.is_valid() {
                span.add_link(producer);
            }
        }
        None => {
            if let Err(e) = flotilla_telemetry::set_parent(span, Some(headers)) {
                tracing::debug!(error = %e, "command carries no usable trace context");
            }
        }
    }
}

fn set_status(status: &Mutex<Status>, state: AgentState, run: Option<RunId>, pid: Option<u32>) {
    let mut status = status.lock().expect("status lock is never poisoned");
    status.state = state;
    status.current_run = run;
    status.service_pid = pid;
}
