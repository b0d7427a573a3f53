//! Sending commands: recorded first, then published, signed, under a producer span.

use std::collections::HashMap;

use async_nats::jetstream::{self};
use flotilla_bus::signing::SIGNATURE_HEADER;
use flotilla_schemas::{
    Action, Check, Command, CommandId, HEADER_RUN_ID, HEADER_RUN_TRACEPARENT, RunResult,
    SettingProbe, encode,
};
use time::OffsetDateTime;
use tokio::time::Instant;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::trace::{COORDINATOR_SERVICE, parse_traceparent};
use super::{Engine, Flow, ProgressSink, RolloutError};
use crate::store::ActionKind;
use crate::store::CommandRecord;

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Sends `kind` to every target in `members`, at most `cap` in flight, and waits for the
    /// answers. With `stop_on_budget`, stops dispatching once the failure budget is broken.
    ///
    /// Dispatch goes in batches: the batch's commands are recorded, as sent, with concurrent
    /// writes, then all published and their acknowledgements awaited together; results that
    /// arrive together are filed together. A batch therefore costs one round of writes whatever
    /// its size (two when the stream refused some), where one dispatch at a time cost four
    /// writes in turn per agent.
    pub(super) async fn run_commands(
        &mut self,
        kind: ActionKind,
        members: &[usize],
        cap: Option<u32>,
        cause: Option<&str>,
        stop_on_budget: bool,
    ) -> Result<Flow, RolloutError> {
        let cap = cap.map_or(usize::MAX, |c| c as usize);
        let mut flow = Flow::Done;
        let mut queue: std::collections::VecDeque<usize> = members
            .iter()
            .copied()
            .filter(|&t| self.needs_dispatch(t, kind))
            .collect();
        // A resumed run may have commands in flight already.
        let mut flying: std::collections::BTreeSet<usize> = members
            .iter()
            .copied()
            .filter(|&t| self.in_flight(t, kind))
            .collect();
        if !flying.is_empty() {
            self.resend(&flying, kind).await;
        }
        loop {
            let now_due =
                super::decisions::dispatch_now(cap, flying.len(), queue.len(), DISPATCH_BATCH);
            if flow == Flow::Done && now_due > 0 {
                if stop_on_budget
                    && super::decisions::stops_dispatch(self.budget_broken(), self.plan.on_failure)
                {
                    flow = Flow::Stopped;
                } else if self.cancel_requested().await? {
                    self.sink
                        .note("cancel requested: no new dispatches, waiting for those in flight");
                    flow = Flow::Cancelled;
                } else {
                    let batch: Vec<usize> = queue.drain(..now_due).collect();
                    flying.extend(self.dispatch(&batch, kind, cause).await?);
                    continue;
                }
            }
            if flying.is_empty() {
                break;
            }
            let now = Instant::now();
            let mut earliest: Option<Instant> = None;
            for &t in &flying {
                if let Some(id) = self.record.targets[t]
                    .slot(kind)
                    .as_ref()
                    .map(|c| c.command.command_id)
                {
                    let timeout = self.timeout_of(t);
                    let deadline = *self.deadlines.entry(id).or_insert(now + timeout);
                    earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                }
            }
            let deadline = earliest.unwrap_or(now);
            match self.follower.next_result(deadline, &mut self.sink).await {
                Some(first) => {
                    // Results already received are filed with the first, in one round of
                    // writes, before the in-flight set is looked at again.
                    let mut burst = vec![first];
                    while burst.len() < DISPATCH_BATCH
                        && let Some(result) = self
                            .follower
                            .next_result(Instant::now(), &mut self.sink)
                            .await
                    {
                        burst.push(result);
                    }
                    self.apply(burst).await?;
                }
                None => self.expire(&flying, kind).await?,
            }
            flying.retain(|&t| self.in_flight(t, kind));
        }
        Ok(flow)
    }

    /// Records the batch's commands as sent, in one round of writes, then sends them; a command
    /// the stream did not take is recorded again as not delivered. Returns the targets now in
    /// flight. A crash between the record and the send is harmless: `resume` sends every
    /// recorded command that has no answer again, with the same ID, which the stream and the
    /// agents dedupe.
    pub(super) async fn dispatch(
        &mut self,
        batch: &[usize],
        kind: ActionKind,
        cause: Option<&str>,
    ) -> Result<Vec<usize>, RolloutError> {
        let now = OffsetDateTime::now_utc();
        for &t in batch {
            let name = self.target_name(t);
            if let Some(record) = self.record.targets[t].slot_mut(kind) {
                if !super::decisions::given_up(record) {
                    record.sent_at = Some(now);
                    continue;
                }
                let note = format!(
                    "{name}: {} sent again as a new command: the previous one ({}) {}",
                    kind.as_str(),
                    record.command.command_id,
                    record
                        .not_delivered
                        .as_deref()
                        .unwrap_or("got no answer in time")
                );
                self.sink.note(&note);
                self.record.notes.push(note);
            }
            let command = self.command_for(t, self.action(t, kind), now);
            self.index.insert(command.command_id, t);
            let digest = Some(self.digest_of(&command));
            *self.record.targets[t].slot_mut(kind) = Some(CommandRecord {
                digest,
                command,
                sent_at: Some(now),
                result: None,
                timed_out: false,
                not_delivered: None,
                cause: cause.map(str::to_owned),
            });
        }
        self.save_targets(batch).await?;
        let sent = self.send_all(&self.commands_of(batch, kind)).await;
        let mut flying = Vec::new();
        let mut failed = Vec::new();
        for (&t, sent) in batch.iter().zip(sent) {
            let deadline = Instant::now() + self.timeout_of(t);
            let record = self.record.targets[t]
                .slot_mut(kind)
                .as_mut()
                .expect("the command was recorded above");
            match sent {
                Ok(()) => {
                    self.deadlines.insert(record.command.command_id, deadline);
                    flying.push(t);
                }
                Err(reason) => {
                    let note = format!(
                        "{}/{}: {reason}",
                        record.command.service, record.command.instance
                    );
                    record.not_delivered = Some(reason);
                    self.sink.note(&note);
                    failed.push(t);
                }
            }
        }
        self.save_targets(&failed).await?;
        Ok(flying)
    }

    /// Sends again the commands a resumed run finds in flight (recorded as sent, no answer):
    /// the previous coordinator may have stopped before it published them.
    pub(super) async fn resend(
        &mut self,
        flying: &std::collections::BTreeSet<usize>,
        kind: ActionKind,
    ) {
        let targets: Vec<usize> = flying.iter().copied().collect();
        let sent = self.send_all(&self.commands_of(&targets, kind)).await;
        for (t, sent) in targets.into_iter().zip(sent) {
            if let Err(reason) = sent {
                let target = &self.record.targets[t];
                tracing::warn!(service = %target.service, instance = %target.instance, "{reason}");
            }
        }
    }

    /// The commands of `kind` recorded for `targets`.
    pub(super) fn commands_of(&self, targets: &[usize], kind: ActionKind) -> Vec<Command> {
        targets
            .iter()
            .map(|&t| {
                self.record.targets[t]
                    .slot(kind)
                    .as_ref()
                    .map(|c| c.command.clone())
                    .expect("the command was recorded")
            })
            .collect()
    }

    pub(super) fn action(&self, t: usize, kind: ActionKind) -> Action {
        let target = &self.record.targets[t];
        let migration = target
            .migrate
            .as_ref()
            .map(|m| m.command.command_id)
            .unwrap_or_default();
        match kind {
            ActionKind::Migrate => {
                let service = self
                    .plan
                    .service(&target.service)
                    .expect("targets come from the plan");
                Action::Migrate {
                    steps: service.steps.clone(),
                    health: service.health.clone(),
                    gates: service.gates.clone(),
                    preconditions: service.preconditions.clone(),
                    checks: service.checks.clone(),
                    workloads: service.workloads.clone(),
                }
            }
            ActionKind::Rollback => Action::Rollback { migration },
            ActionKind::Finalize => Action::Finalize { migration },
        }
    }

    /// Publishes the commands into the commands stream and waits for the stream to store each,
    /// all at once. A command the broker cannot take now (no stream leader during an election,
    /// a node restarting, a cut) is published again with backoff until the command expires:
    /// its `Nats-Msg-Id` makes a repeat harmless. Only a refusal for good, or the deadline,
    /// makes it "not delivered".
    pub(super) async fn send_all(&self, commands: &[Command]) -> Vec<Result<(), String>> {
        let sends = commands.iter().map(|command| async move {
            let subject = self.subjects.command(&command.service, &command.instance);
            let what = format!("command {} to {subject}", command.command_id);
            let deadline = deadline_of(command);
            flotilla_bus::outage::retry_until(
                &what,
                deadline,
                || async { self.publish(command).await?.await.map(|_| ()) },
                |e: &jetstream::context::PublishError| lasting(e).is_none(),
            )
            .await
            .map_err(|e| match lasting(&e) {
                Some(why) => format!("command refused by the commands stream ({why}): {e}"),
                None => format!(
                    "command not delivered to {subject} before it expired (the broker did not take it): {e}"
                ),
            })
        });
        futures::future::join_all(sends).await
    }

    /// The digest of `command` as [`Self::publish`] signs and sends it (Ed25519 signatures are
    /// deterministic: a resent command has the same).
    pub(super) fn digest_of(&self, command: &Command) -> String {
        let payload = encode(command);
        let signature = self.signer.as_ref().map(|s| s.sign(&payload));
        flotilla_bus::signing::command_digest(signature.as_deref(), &payload)
    }

    /// Publishes one command, signed and under a producer span; returns its pending
    /// acknowledgement.
    pub(super) async fn publish(
        &self,
        command: &Command,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let subject = self.subjects.command(&command.service, &command.instance);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", command.command_id.to_string().as_str());
        headers.insert(HEADER_RUN_ID, command.run_id.to_string().as_str());
        let payload = encode(command);
        if let Some(signer) = &self.signer {
            headers.insert(SIGNATURE_HEADER, signer.sign(&payload).as_str());
        }
        // A producer span under the run's root; the agent's consumer span continues it.
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = format!("{subject} publish"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %subject,
            messaging.message.id = %command.command_id,
            flotilla.run_id = %command.run_id,
            flotilla.service = COORDINATOR_SERVICE,
            flotilla.instance = %crate::store::coordinator_name(),
            flotilla.target = %format!("{}/{}", command.service, command.instance),
        );
        if let Some(parent) = &self.record.trace_parent {
            let _ = span.set_parent(parse_traceparent(parent));
        }
        span.in_scope(|| flotilla_telemetry::inject(&mut headers));
        if let Some(parent) = &self.record.trace_parent {
            headers.insert(HEADER_RUN_TRACEPARENT, parent.as_str());
        }
        self.js
            .publish_with_headers(subject, headers, payload.into())
            .await
    }

    /// Marks the in-flight commands whose deadline passed as timed out.
    pub(super) async fn expire(
        &mut self,
        flying: &std::collections::BTreeSet<usize>,
        kind: ActionKind,
    ) -> Result<(), RolloutError> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for &t in flying {
            let target = &mut self.record.targets[t];
            let (service, instance) = (target.service.clone(), target.instance.clone());
            let Some(command) = target.slot_mut(kind).as_mut() else {
                continue;
            };
            if self
                .deadlines
                .get(&command.command_id())
                .is_some_and(|d| *d <= now)
            {
                command.timed_out = true;
                expired.push(t);
                self.sink.note(&format!(
                    "{service}/{instance}: no result within its command_timeout; the agent is silent or stuck"
                ));
            }
        }
        self.save_targets(&expired).await
    }

    /// A new command of the run for target `t`, issued `now`.
    pub(super) fn command_for(&self, t: usize, action: Action, now: OffsetDateTime) -> Command {
        let target = &self.record.targets[t];
        Command {
            schema: Default::default(),
            command_id: CommandId::new(),
            run_id: self.record.run_id,
            service: target.service.clone(),
            instance: target.instance.clone(),
            issued_at: now,
            expires_at: now + self.timeout_of(t),
            action,
        }
    }

    /// Sends each target its inspect command and waits, until the command timeout, for their
    /// results; returns them and the targets that did not answer.
    pub(super) async fn inspect_round(
        &mut self,
        round: Vec<InspectRequest>,
    ) -> Result<(Vec<(usize, RunResult)>, Vec<usize>), RolloutError> {
        let mut commands = Vec::new();
        for request in round {
            let action = Action::Inspect {
                checks: request.checks,
                config_files: request.config_files,
                settings: request.settings,
                revalidate: request.revalidate,
            };
            let t = request.target;
            commands.push((t, self.command_for(t, action, OffsetDateTime::now_utc())));
        }
        let sent = self
            .send_all(&commands.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>())
            .await;
        let mut waiting: HashMap<CommandId, usize> = HashMap::new();
        for ((t, command), sent) in commands.into_iter().zip(sent) {
            if sent.is_ok() {
                waiting.insert(command.command_id, t);
            }
        }
        let deadline = Instant::now() + self.plan.command_timeout;
        let mut answers = Vec::new();
        while !waiting.is_empty() {
            let Some(result) = self.follower.next_result(deadline, &mut self.sink).await else {
                break;
            };
            match waiting.remove(&result.command_id) {
                Some(t) => {
                    self.sink.result(&result);
                    answers.push((t, result));
                }
                None => self.apply(vec![result]).await?,
            }
        }
        Ok((answers, waiting.into_values().collect()))
    }
}

/// When a command stops being worth delivering: when it expires (the agent refuses it then).
fn deadline_of(command: &Command) -> Instant {
    let left = command.expires_at - OffsetDateTime::now_utc();
    Instant::now() + left.try_into().unwrap_or_default()
}

/// Why the stream refused a command for good, if it did: a repeat cannot change these.
fn lasting(error: &jetstream::context::PublishError) -> Option<&'static str> {
    use jetstream::context::PublishErrorKind as Kind;
    match error.kind() {
        Kind::MaxPayloadExceeded => Some("too large"),
        Kind::WrongLastMessageId | Kind::WrongLastSequence => Some("out of sequence"),
        Kind::StreamNotFound
        | Kind::TimedOut
        | Kind::BrokenPipe
        | Kind::MaxAckPending
        | Kind::Other => None,
    }
}

/// One target's inspect command of a cross-service round, or of a pause between waves.
#[derive(Debug, Default)]
pub(super) struct InspectRequest {
    pub(super) target: usize,
    pub(super) checks: Vec<Check>,
    pub(super) config_files: Vec<String>,
    pub(super) settings: Vec<SettingProbe>,
    /// During a pause: the target's migration, whose gates and checks the agent runs again.
    pub(super) revalidate: Option<CommandId>,
}

/// The most commands dispatched, or results filed, in one round of concurrent writes.
pub(super) const DISPATCH_BATCH: usize = 500;
