//! The rollout engine: dispatch commands wave by wave, follow their events, and roll back or
//! finalize. Every decision is written to the run record first, so a coordinator killed at any
//! point can be replaced by `flotilla resume`, which carries on from the record: a command
//! that was recorded is re-sent with the same command ID (agents and the stream dedupe it), and
//! results published while no coordinator listened are read back from the events stream.

use std::collections::HashMap;
use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Check, Command, CommandId, HEADER_RUN_ID, HEADER_RUN_TRACEPARENT, HttpCheck, Outcome,
    Presence, Progress, RunId, RunResult, ServiceName, decode, encode, schema_of,
};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::plan::{Finalize, OnFailure, Plan};
use crate::store::{
    CommandRecord, CorrelationVerdict, CrossServiceVerdict, LogCorrelationVerdict, Revisions,
    RunRecord, RunStatus, ServiceInspection, Stage, Store, StoreError, TargetRecord, WaveStatus,
};
use crate::trust::{AgentPins, ResultTrust};

/// Why a run could not proceed at all.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Bus(#[from] flotilla_bus::BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot follow the run's events")]
    Follow(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One agent that a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: ServiceName,
    pub instance: flotilla_schemas::InstanceId,
    /// The keys trusted for its results ([`crate::trust`]).
    pub agent_keys: Vec<String>,
}

/// Pre-flight: every service of the plan needs at least one live agent that speaks our command
/// schema and whose result key is trusted. Returns the targets, or the list of problems.
pub fn preflight(
    plan: &Plan,
    agents: &[Presence],
    pins: &AgentPins,
) -> Result<Vec<Target>, Vec<String>> {
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    for service in &plan.services {
        let live: Vec<&Presence> = agents
            .iter()
            .filter(|a| a.service == service.name)
            .collect();
        if live.is_empty() {
            problems.push(format!("{}: no live agent", service.name));
        }
        for agent in live {
            if !agent
                .accepts
                .iter()
                .any(|s| s == flotilla_schemas::CommandSchema::VALUE)
            {
                problems.push(format!(
                    "{}/{}: agent {} does not accept {} (it accepts {})",
                    agent.service,
                    agent.instance,
                    agent.version,
                    flotilla_schemas::CommandSchema::VALUE,
                    agent.accepts.join(", ")
                ));
                continue;
            }
            match pins.keys_for(agent) {
                Ok(agent_keys) => targets.push(Target {
                    service: agent.service.clone(),
                    instance: agent.instance.clone(),
                    agent_keys,
                }),
                Err(problem) => problems.push(problem),
            }
        }
    }
    if problems.is_empty() {
        Ok(targets)
    } else {
        Err(problems)
    }
}

/// Receives progress as it happens.
pub trait ProgressSink {
    /// An agent reported a phase.
    fn progress(&mut self, progress: &Progress);
    /// An agent reported a command's result.
    fn result(&mut self, result: &RunResult);
    /// A wave starts (`index` from 0), or a stage of the run (rollback, finalize) does.
    fn stage(&mut self, _what: &str) {}
    /// The engine decided something worth a line (a timeout, a stop).
    fn note(&mut self, _note: &str) {}
    /// A batch of commands starts: a wave, or a wave's rollback; `targets` as `service/instance`.
    fn batch(&mut self, _name: &str, _targets: &[String]) {}
}

/// The kinds of command one target receives over a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Migrate,
    Rollback,
    Finalize,
}

/// How a batch of commands ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Every command has an outcome.
    Done,
    /// The failure budget was broken: nothing more was dispatched.
    Stopped,
    /// A cancel was requested: nothing more was dispatched.
    Cancelled,
}

/// Drives one run, from its record.
pub struct Engine<'a, P: ProgressSink> {
    client: &'a async_nats::Client,
    js: jetstream::Context,
    subjects: &'a Subjects,
    store: Store,
    revisions: Revisions,
    plan: Plan,
    record: RunRecord,
    sink: P,
    follower: Follower,
    signer: Option<Arc<SigningKey>>,
    correlation: CorrelationCheck,
    shutdown: CancellationToken,
    deadlines: HashMap<CommandId, Instant>,
    /// Which target each of the run's commands went to.
    index: HashMap<CommandId, usize>,
}

/// What the engine needs from the outside.
pub struct EngineParts<'a, P: ProgressSink> {
    pub client: &'a async_nats::Client,
    pub subjects: &'a Subjects,
    pub store: Store,
    pub sink: P,
    /// Signs every command; `None` sends them unsigned (agents that trust keys refuse them).
    pub signer: Option<Arc<SigningKey>>,
    /// The cross-service correlation check before finalize.
    pub correlation: CorrelationCheck,
    /// Cancelled on Ctrl-C: stop dispatching, let in-flight commands finish.
    pub shutdown: CancellationToken,
}

// === impl Engine ===

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Records a new run of `plan` over `targets`; nothing is dispatched yet.
    pub async fn create(
        parts: EngineParts<'a, P>,
        plan: Plan,
        plan_path: &str,
        plan_text: &str,
        targets: &[Target],
        rehearse: bool,
    ) -> Result<Self, RolloutError> {
        let run_id = RunId::new();
        let pairs: Vec<_> = targets
            .iter()
            .map(|t| (t.service.clone(), t.instance.clone()))
            .collect();
        let mut record = RunRecord::new(
            run_id,
            &plan.name,
            plan_path,
            plan_text,
            &plan.waves,
            &pairs,
            rehearse,
        );
        record.finalize = plan.finalize;
        for target in &mut record.targets {
            if let Some(found) = targets
                .iter()
                .find(|t| t.service == target.service && t.instance == target.instance)
            {
                target.agent_keys = found.agent_keys.clone();
            }
        }
        let unsigned: Vec<String> = record
            .targets
            .iter()
            .filter(|t| t.agent_keys.is_empty())
            .map(|t| format!("{}/{}", t.service, t.instance))
            .collect();
        if !unsigned.is_empty() {
            let note = format!(
                "results of {} are accepted unverified: their agents sign nothing (older than signed results); upgrade them",
                unsigned.join(", ")
            );
            tracing::warn!("{note}");
            record.notes.push(note);
        }
        record.trace_parent = Some(root_span(&record));
        // The root must reach the store before any agent hangs its spans under it: a
        // coordinator killed later must not leave the trace without its root.
        if let Some(telemetry) = &parts.correlation.telemetry.0
            && let Err(e) = telemetry.flush(ROOT_FLUSH_TIMEOUT).await
        {
            tracing::warn!(error = %flotilla_telemetry::error_chain(&e), "the run's root span was not flushed");
        }
        let revisions = parts.store.create(&record).await?;
        Self::assemble(parts, plan, record, revisions).await
    }

    /// Takes over a recorded run (resume, rollback).
    pub async fn attach(
        parts: EngineParts<'a, P>,
        plan: Plan,
        record: RunRecord,
        revisions: Revisions,
    ) -> Result<Self, RolloutError> {
        Self::assemble(parts, plan, record, revisions).await
    }

    async fn assemble(
        parts: EngineParts<'a, P>,
        plan: Plan,
        record: RunRecord,
        revisions: Revisions,
    ) -> Result<Self, RolloutError> {
        let js = jetstream::new(parts.client.clone());
        flotilla_bus::commands_stream(&js, parts.subjects).await?;
        let events = flotilla_bus::events_stream(&js, parts.subjects).await?;
        let follower = Follower::new(&events, parts.subjects, &record).await?;
        Ok(Self {
            client: parts.client,
            js,
            subjects: parts.subjects,
            store: parts.store,
            revisions,
            plan,
            sink: parts.sink,
            follower,
            signer: parts.signer,
            correlation: parts.correlation,
            shutdown: parts.shutdown,
            deadlines: HashMap::new(),
            index: command_index(&record),
            record,
        })
    }

    /// The run's ID.
    pub fn run_id(&self) -> RunId {
        self.record.run_id
    }

    /// Carries the run on from wherever its record says it stands, to its end (or to a cancel,
    /// or to the operator's decision when the run finalizes manually).
    ///
    /// A rehearsal runs every stage a real run runs (the waves, the cross-service checks and
    /// the correlation check), then restores the fleet instead of finalizing it: what would
    /// fail the real run fails the rehearsal.
    pub async fn drive(mut self) -> Result<RunRecord, RolloutError> {
        // Resuming is the answer to a cancel: forget it, or the run would stop again at once.
        self.record.status = RunStatus::Running;
        self.store.clear_cancel(&self.record.run_id).await?;
        self.record.coordinator = crate::store::coordinator_name();
        self.save().await?;
        self.catch_up().await?;
        tracing::info!(run_id = %self.record.run_id, plan = %self.plan.name, stage = ?self.record.stage, "driving run");

        if self.record.stage == Stage::Migrating && self.migrate_waves().await? == Flow::Cancelled {
            return self.cancelled().await;
        }
        if self.record.stage == Stage::Finalizing {
            self.prove().await?;
        }
        if self.record.stage == Stage::Finalizing && self.record.rehearse {
            self.record.stage = Stage::RollingBack;
            self.save().await?;
        }
        if self.record.stage == Stage::Finalizing && self.record.finalize == Finalize::Manual {
            return self.await_decision().await;
        }
        if self.record.stage == Stage::RollingBack {
            let cause = match (self.failed_check(), self.record.rehearse) {
                (Some(check), false) => format!("rolled back because {check} failed"),
                (Some(check), true) => format!("rehearsal: restored; {check} failed"),
                (None, true) if !self.budget_broken() => {
                    "rehearsal: restored after validation and proved healthy".to_owned()
                }
                (None, _) => "rolled back because another service of the run failed".to_owned(),
            };
            if self.roll_back_waves(None, &cause).await? == Flow::Cancelled {
                return self.cancelled().await;
            }
            if self.record.rehearse && self.failures() == 0 {
                self.record.stage = Stage::Finalizing;
            } else {
                self.finish(RunStatus::Failed).await?;
            }
        }
        if self.record.stage == Stage::Finalizing {
            if self.finalize_migrated().await? == Flow::Cancelled {
                return self.cancelled().await;
            }
            let status = if self.record.rehearse {
                self.rehearsal_status()
            } else if self.failures() == 0 {
                RunStatus::Succeeded
            } else {
                RunStatus::SucceededWithFailures
            };
            self.finish(status).await?;
        }
        Ok(self.record)
    }

    /// Finalizes a run that awaits its operator's decision (`awaiting_finalize`): the agents
    /// drop their backups. Nothing else is sent: the run was proven before it paused.
    pub async fn finalize(mut self) -> Result<RunRecord, RolloutError> {
        // Recorded first: a coordinator killed from here on is replaced by `resume`, which
        // then finishes the finalize instead of pausing again.
        self.record.finalize = Finalize::Auto;
        self.record
            .notes
            .push("finalize requested (flotilla finalize): the agents drop their backups".into());
        self.drive().await
    }

    /// Rolls back the services of a finished (or interrupted) run that are still migrated,
    /// latest wave first; `only` limits it to one service.
    pub async fn roll_back(mut self, only: Option<ServiceName>) -> Result<RunRecord, RolloutError> {
        self.record.status = RunStatus::Running;
        self.record.stage = Stage::RollingBack;
        self.store.clear_cancel(&self.record.run_id).await?;
        self.record.notes.push(match &only {
            Some(s) => format!("rollback of {s} requested"),
            None => "rollback of the run requested".into(),
        });
        self.save().await?;
        self.catch_up().await?;
        if self
            .roll_back_waves(only.as_ref(), "rolled back on request (flotilla rollback)")
            .await?
            == Flow::Cancelled
        {
            return self.cancelled().await;
        }
        self.finish(RunStatus::RolledBack).await?;
        Ok(self.record)
    }

    async fn migrate_waves(&mut self) -> Result<Flow, RolloutError> {
        let total = self.record.waves.len();
        for w in 0..total {
            if self.record.waves[w].status == WaveStatus::Done {
                continue;
            }
            if self.budget_broken() && self.plan.on_failure != OnFailure::Continue {
                break;
            }
            let wave = &self.record.waves[w];
            let members = wave.targets.clone();
            let names = self.target_names(&members);
            self.sink.stage(&format!(
                "wave {}/{total} {:?} ({} at a time): {}",
                w + 1,
                wave.name,
                wave.max_parallel
                    .map_or_else(|| "all".to_owned(), |n| n.to_string()),
                names.join(", ")
            ));
            self.sink
                .batch(&format!("wave {}/{total} {}", w + 1, wave.name), &names);
            self.record.waves[w].status = WaveStatus::Running;
            self.save().await?;
            let cap = self.record.waves[w].max_parallel;
            let flow = self
                .run_commands(Kind::Migrate, &members, cap, None, true)
                .await?;
            self.record.waves[w].status = if flow == Flow::Done {
                WaveStatus::Done
            } else {
                WaveStatus::Stopped
            };
            self.save().await?;
            if flow == Flow::Cancelled {
                return Ok(Flow::Cancelled);
            }
        }
        let allowed = self.plan.allowed_failures(self.record.targets.len());
        if self.budget_broken() {
            let note = format!(
                "{} service(s) failed, over the failure budget of {allowed}; on_failure = {}",
                self.failures(),
                self.plan.on_failure.as_str()
            );
            self.sink.note(&note);
            self.record.notes.push(note);
            match self.plan.on_failure {
                // A rehearsal promises to leave the fleet as it was, whatever the plan says.
                _ if self.record.rehearse => self.record.stage = Stage::RollingBack,
                OnFailure::Rollback => self.record.stage = Stage::RollingBack,
                OnFailure::Leave | OnFailure::Continue => {
                    self.record.notes.push(
                        "the migrated services were left as they are, not finalized: `flotilla rollback RUN` restores them".into(),
                    );
                    self.finish(RunStatus::Failed).await?;
                }
            }
        } else {
            // A rehearsal too: it is proven like a real run before it is rolled back.
            self.record.stage = Stage::Finalizing;
        }
        self.save().await?;
        Ok(Flow::Done)
    }

    /// Rolls back every migrated service (of `only`, when given), latest wave first.
    async fn roll_back_waves(
        &mut self,
        only: Option<&ServiceName>,
        cause: &str,
    ) -> Result<Flow, RolloutError> {
        for w in (0..self.record.waves.len()).rev() {
            let members: Vec<usize> = self.record.waves[w]
                .targets
                .iter()
                .copied()
                .filter(|&t| self.migrated(t) || self.maybe_migrated(t))
                .filter(|&t| only.is_none_or(|s| &self.record.targets[t].service == s))
                .collect();
            if members.is_empty() {
                continue;
            }
            self.sink.stage(&format!(
                "rollback of wave {:?}: {}",
                self.record.waves[w].name,
                members
                    .iter()
                    .map(|&t| self.record.targets[t].service.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            let names: Vec<String> = members
                .iter()
                .map(|&t| {
                    let t = &self.record.targets[t];
                    format!("{}/{}", t.service, t.instance)
                })
                .collect();
            self.sink
                .batch(&format!("rollback {}", self.record.waves[w].name), &names);
            let cap = self.record.waves[w].max_parallel;
            let flow = self
                .run_commands(Kind::Rollback, &members, cap, Some(cause), false)
                .await?;
            if flow == Flow::Cancelled {
                return Ok(flow);
            }
        }
        Ok(Flow::Done)
    }

    /// Sends `kind` to every target in `members`, at most `cap` in flight, and waits for the
    /// answers. With `stop_on_budget`, stops dispatching once the failure budget is broken.
    ///
    /// Dispatch goes in batches: the batch's commands are recorded, as sent, with concurrent
    /// writes, then all published and their acknowledgements awaited together; results that
    /// arrive together are filed together. A batch therefore costs one round of writes whatever
    /// its size (two when the stream refused some), where one dispatch at a time cost four
    /// writes in turn per agent.
    async fn run_commands(
        &mut self,
        kind: Kind,
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
            if flow == Flow::Done && !queue.is_empty() && flying.len() < cap {
                if stop_on_budget
                    && self.budget_broken()
                    && self.plan.on_failure != OnFailure::Continue
                {
                    flow = Flow::Stopped;
                } else if self.cancel_requested().await? {
                    self.sink
                        .note("cancel requested: no new dispatches, waiting for those in flight");
                    flow = Flow::Cancelled;
                } else {
                    let room = (cap - flying.len()).min(DISPATCH_BATCH).min(queue.len());
                    let batch: Vec<usize> = queue.drain(..room).collect();
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
                if let Some(id) = slot(&self.record.targets[t], kind)
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
    async fn dispatch(
        &mut self,
        batch: &[usize],
        kind: Kind,
        cause: Option<&str>,
    ) -> Result<Vec<usize>, RolloutError> {
        let now = OffsetDateTime::now_utc();
        for &t in batch {
            if let Some(record) = slot_mut(&mut self.record.targets[t], kind) {
                record.sent_at = Some(now);
                continue;
            }
            let command = self.command_for(t, self.action(t, kind), now);
            self.index.insert(command.command_id, t);
            let digest = Some(self.digest_of(&command));
            *slot_mut(&mut self.record.targets[t], kind) = Some(CommandRecord {
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
            let record = slot_mut(&mut self.record.targets[t], kind)
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
    async fn resend(&mut self, flying: &std::collections::BTreeSet<usize>, kind: Kind) {
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
    fn commands_of(&self, targets: &[usize], kind: Kind) -> Vec<Command> {
        targets
            .iter()
            .map(|&t| {
                slot(&self.record.targets[t], kind)
                    .as_ref()
                    .map(|c| c.command.clone())
                    .expect("the command was recorded")
            })
            .collect()
    }

    fn action(&self, t: usize, kind: Kind) -> Action {
        let target = &self.record.targets[t];
        let migration = target
            .migrate
            .as_ref()
            .map(|m| m.command.command_id)
            .unwrap_or_default();
        match kind {
            Kind::Migrate => {
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
            Kind::Rollback => Action::Rollback { migration },
            Kind::Finalize => Action::Finalize { migration },
        }
    }

    /// Publishes the commands into the commands stream, then waits for the stream to store
    /// each: every publish goes out before the first acknowledgement is awaited.
    async fn send_all(&self, commands: &[Command]) -> Vec<Result<(), String>> {
        let mut pending = Vec::with_capacity(commands.len());
        for command in commands {
            pending.push(self.publish(command).await);
        }
        let acks = pending
            .into_iter()
            .zip(commands)
            .map(|(published, command)| async move {
                let subject = self.subjects.command(&command.service, &command.instance);
                // The stream's acknowledgement is the proof of delivery: no extra flush round trip.
                match published {
                    Ok(ack) => ack
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("command not delivered to {subject}: {e}")),
                    Err(e) => Err(format!("command not delivered to {subject}: {e}")),
                }
            });
        futures::future::join_all(acks).await
    }

    /// The digest of `command` as [`Self::publish`] signs and sends it (Ed25519 signatures are
    /// deterministic: a resent command has the same).
    fn digest_of(&self, command: &Command) -> String {
        let payload = encode(command);
        let signature = self.signer.as_ref().map(|s| s.sign(&payload));
        flotilla_bus::signing::command_digest(signature.as_deref(), &payload)
    }

    /// Publishes one command, signed and under a producer span; returns its pending
    /// acknowledgement.
    async fn publish(
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

    /// Files results under the commands they answer, in one round of writes; the first answer
    /// to a command wins (a replayed one carries the same outcome). A result that comes after
    /// the coordinator gave up on its command (`timed_out`) is filed too: the agent's journal is
    /// the truth, and the record follows it.
    async fn apply(&mut self, results: Vec<RunResult>) -> Result<(), RolloutError> {
        self.take_ignored();
        let before = self.record.notes.len();
        let touched = file_results(&mut self.record, &self.index, results);
        for note in &self.record.notes[before..] {
            self.sink.note(note);
        }
        self.save_targets(&touched).await?;
        if self.record.notes.len() != before {
            self.save().await?;
        }
        Ok(())
    }

    /// Moves the follower's notes of forged events it ignored into the record, and shows them.
    fn take_ignored(&mut self) {
        for note in self.follower.take_ignored() {
            self.sink.note(&note);
            self.record.notes.push(note);
        }
    }
    /// Files what the run's events already hold (a resumed or rolled-back run: results
    /// published while no coordinator listened, or after it gave up on a command).
    async fn catch_up(&mut self) -> Result<(), RolloutError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let results = self.follower.catch_up(CATCH_UP_LIMIT, &mut self.sink).await;
        self.apply(results).await
    }

    /// Marks the in-flight commands whose deadline passed as timed out.
    async fn expire(
        &mut self,
        flying: &std::collections::BTreeSet<usize>,
        kind: Kind,
    ) -> Result<(), RolloutError> {
        let now = Instant::now();
        let mut expired = Vec::new();
        for &t in flying {
            let target = &mut self.record.targets[t];
            let (service, instance) = (target.service.clone(), target.instance.clone());
            let Some(command) = slot_mut(target, kind).as_mut() else {
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

    async fn cancel_requested(&self) -> Result<bool, RolloutError> {
        if self.shutdown.is_cancelled() {
            return Ok(true);
        }
        Ok(self.store.cancel_requested(&self.record.run_id).await?)
    }

    fn timeout_of(&self, t: usize) -> Duration {
        self.plan
            .service(&self.record.targets[t].service)
            .map_or(self.plan.command_timeout, |s| s.command_timeout)
    }

    fn needs_dispatch(&self, t: usize, kind: Kind) -> bool {
        match slot(&self.record.targets[t], kind) {
            None => true,
            Some(c) => c.sent_at.is_none() && c.not_delivered.is_none() && c.result.is_none(),
        }
    }

    fn in_flight(&self, t: usize, kind: Kind) -> bool {
        slot(&self.record.targets[t], kind)
            .as_ref()
            .is_some_and(|c| {
                c.sent_at.is_some()
                    && c.result.is_none()
                    && !c.timed_out
                    && c.not_delivered.is_none()
            })
    }

    /// True when the target's migration succeeded and it has not been finalized.
    fn migrated(&self, t: usize) -> bool {
        let target = &self.record.targets[t];
        let succeeded = target
            .migrate
            .as_ref()
            .and_then(|m| m.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::Succeeded);
        let finalized = target
            .finalize
            .as_ref()
            .and_then(|f| f.result.as_ref())
            .is_some_and(|r| r.outcome == Outcome::Finalized);
        succeeded && !finalized
    }

    /// True when the coordinator gave up on the target's migrate command without an answer: the
    /// agent may have applied it after all. A rollback is sent to it too; the agent restores its
    /// backup if it did migrate, and refuses (changing nothing) if it did not. Both commands
    /// go through the agent's own queue in order, so the rollback cannot overtake the migrate.
    fn maybe_migrated(&self, t: usize) -> bool {
        self.record.targets[t]
            .migrate
            .as_ref()
            .is_some_and(|m| m.result.is_none() && (m.timed_out || m.not_delivered.is_some()))
    }

    /// Targets whose migration ended in anything but success.
    fn failures(&self) -> usize {
        self.record
            .targets
            .iter()
            .filter(|t| migrate_failed(t))
            .count()
    }

    fn budget_broken(&self) -> bool {
        self.failures() > self.plan.allowed_failures(self.record.targets.len())
    }

    async fn cancelled(mut self) -> Result<RunRecord, RolloutError> {
        self.record.status = RunStatus::Cancelled;
        self.record.notes.push(
            "cancelled: nothing more was dispatched; `flotilla resume RUN` finishes the run".into(),
        );
        self.save().await?;
        Ok(self.record)
    }

    /// Every service migrated: the cross-service checks, then the correlation check, each once
    /// (a resumed run keeps the verdicts it has). A failure moves the run to rolling back.
    async fn prove(&mut self) -> Result<(), RolloutError> {
        if self.record.cross_service.is_none() && self.plan.cross_service.is_some() {
            self.cross_service_stage().await?;
        }
        if self.record.stage == Stage::Finalizing && self.record.correlation.is_none() {
            self.check_correlation().await?;
        }
        Ok(())
    }

    /// The enforced check that failed (it rolls a run back and fails a rehearsal), if any.
    fn failed_check(&self) -> Option<&'static str> {
        self.correlation
            .enforce
            .then(|| {
                crate::store::failed_verdict(&self.record.cross_service, &self.record.correlation)
            })
            .flatten()
    }

    /// How a rehearsal ended once its services were restored: `rehearsed` only when every
    /// rollback was proved and every check a real run makes passed.
    fn rehearsal_status(&mut self) -> RunStatus {
        let rolled_back_ok = self.record.targets.iter().all(|t| {
            t.rollback
                .as_ref()
                .and_then(|r| r.result.as_ref())
                .is_some_and(|r| r.outcome == Outcome::RolledBack)
        });
        let failed_check = self.failed_check();
        if let Some(check) = failed_check {
            let note = format!("rehearsal failed: {check} failed, which rolls a real run back");
            self.sink.note(&note);
            self.record.notes.push(note);
        }
        if failed_check.is_none() && rolled_back_ok {
            RunStatus::Rehearsed
        } else {
            RunStatus::Failed
        }
    }

    /// Sends a finalize to every migrated service: its agent drops the backup.
    async fn finalize_migrated(&mut self) -> Result<Flow, RolloutError> {
        self.sink.stage("finalize: agents drop their backups");
        let members: Vec<usize> = (0..self.record.targets.len())
            .filter(|&t| self.migrated(t))
            .collect();
        let names = self.target_names(&members);
        self.sink.batch("finalize", &names);
        self.run_commands(Kind::Finalize, &members, None, None, false)
            .await
    }

    /// The targets `members` as `service/instance`.
    fn target_names(&self, members: &[usize]) -> Vec<String> {
        members.iter().map(|&t| self.target_name(t)).collect()
    }

    /// Migrated and proven, finalized by hand: stop here with every backup kept.
    async fn await_decision(mut self) -> Result<RunRecord, RolloutError> {
        self.record.status = RunStatus::AwaitingFinalize;
        let note = "migrated and proven, not finalized (--no-finalize or finalize = \"manual\"): every backup is kept until the operator decides".to_owned();
        self.sink.note(&note);
        self.record.notes.push(note);
        self.save().await?;
        Ok(self.record)
    }

    /// T006 phase 3, once every service is migrated: each agent reaches the other services'
    /// endpoints and runs the plan's cross-service checks, and reports the shape of its
    /// configuration; the coordinator flags failed checks, standard configurations that lack a
    /// required key, and configuration files that hold a literal secret. A failure rolls the
    /// fleet back (unless `--no-verify`).
    async fn cross_service_stage(&mut self) -> Result<(), RolloutError> {
        let Some(spec) = self.plan.cross_service.clone() else {
            return Ok(());
        };
        self.sink
            .stage("cross-service checks: communication, configuration consistency");
        let members: Vec<usize> = (0..self.record.targets.len())
            .filter(|&t| self.migrated(t))
            .collect();
        let endpoints: Vec<(ServiceName, String)> = if spec.communication {
            crate::discovery::discover(
                self.client,
                self.subjects,
                std::time::Duration::from_secs(1),
            )
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|p| {
                members
                    .iter()
                    .any(|&t| self.record.targets[t].service == p.service)
            })
            .filter_map(|p| p.endpoint.map(|e| (p.service, e)))
            .collect()
        } else {
            Vec::new()
        };
        // A log-correlation request is sent by the first migrated instance of its service, in
        // this first round; the logs are searched in a second one, once it was answered.
        let requester = |plan_service: &ServiceName| {
            members
                .iter()
                .copied()
                .find(|&t| self.record.targets[t].service == *plan_service)
        };
        let mut problems = Vec::new();
        let mut round = Vec::new();
        for &t in &members {
            let target = &self.record.targets[t];
            let mut checks = spec.checks.clone();
            for endpoint in endpoints
                .iter()
                .filter(|(s, _)| *s != target.service)
                .map(|(_, e)| e)
            {
                checks.push(Check::Http(HttpCheck {
                    url: Some(endpoint.clone()),
                    method: None,
                    body: None,
                    expect_status: 200,
                    body_contains: None,
                    timeout_ms: 5_000,
                    headers: Default::default(),
                }));
            }
            for correlation in &spec.log_correlation {
                if requester(&correlation.request.service) == Some(t) {
                    checks.push(correlation.request_check());
                }
            }
            round.push((t, checks, spec.config_files.clone()));
        }
        for correlation in &spec.log_correlation {
            if requester(&correlation.request.service).is_none() {
                problems.push(format!(
                    "log correlation: no migrated instance of {} to send the request",
                    correlation.request.service
                ));
            }
        }
        let (answers, unanswered) = self.inspect_round(round).await?;
        let mut services = Vec::new();
        for (t, result) in answers {
            let name = self.target_name(t);
            let inspection = result.inspection.unwrap_or_default();
            for verdict in inspection.checks.iter().filter(|v| !v.passed) {
                problems.push(format!(
                    "{name}: {} check failed: {}",
                    verdict.kind, verdict.detail
                ));
            }
            if let Some(standard) = inspection.config.first() {
                let missing: Vec<&String> = spec
                    .required_keys
                    .iter()
                    .filter(|k| !standard.keys.contains(k))
                    .collect();
                if !standard.exists {
                    problems.push(format!("{name}: {} does not exist", standard.path));
                } else if !missing.is_empty() {
                    problems.push(format!(
                        "{name}: {} lacks required key(s) {missing:?}",
                        standard.path
                    ));
                }
            }
            for shape in inspection
                .config
                .iter()
                .filter(|c| !c.literal_secrets.is_empty())
            {
                problems.push(format!(
                    "{name}: {} holds a literal secret in {:?}",
                    shape.path, shape.literal_secrets
                ));
            }
            if result.outcome != Outcome::Succeeded {
                problems.push(format!("{name}: {}", result.reason.unwrap_or_default()));
            }
            services.push(ServiceInspection {
                service: self.record.targets[t].service.clone(),
                instance: self.record.targets[t].instance.clone(),
                checks: inspection.checks,
                config: inspection.config,
            });
        }
        for t in unanswered {
            let name = self.target_name(t);
            problems.push(format!("{name}: no answer to the cross-service checks"));
        }
        let correlation = self
            .log_correlation_round(&spec, &members, &mut problems)
            .await?;
        let ok = problems.is_empty();
        self.record.notes.push(if ok {
            format!("cross-service checks passed: {} service(s)", services.len())
        } else {
            format!("cross-service checks failed: {}", problems.join(" | "))
        });
        self.record.cross_service = Some(CrossServiceVerdict {
            ok,
            problems,
            services,
            log_correlation: correlation,
        });
        if !ok && self.correlation.enforce {
            self.record.stage = Stage::RollingBack;
        }
        self.save().await
    }

    /// The second round of the cross-service stage: the agents of each log-correlation check's
    /// `expect_in_logs` services search their service's log for the run's ID (by default) until
    /// the check's deadline. Failures go to `problems`; returns the verdicts, per agent.
    async fn log_correlation_round(
        &mut self,
        spec: &crate::plan::CrossService,
        members: &[usize],
        problems: &mut Vec<String>,
    ) -> Result<Vec<LogCorrelationVerdict>, RolloutError> {
        if spec.log_correlation.is_empty() {
            return Ok(Vec::new());
        }
        self.sink
            .stage("cross-service check: the run's correlation ID in other services' logs");
        let mut searches: Vec<(usize, Vec<Check>)> = Vec::new();
        for correlation in &spec.log_correlation {
            for service in &correlation.expect_in_logs {
                let found: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|&t| self.record.targets[t].service == *service)
                    .collect();
                if found.is_empty() {
                    problems.push(format!(
                        "log correlation: no migrated instance of {service} to search the log of"
                    ));
                }
                for t in found {
                    match searches.iter_mut().find(|(s, _)| *s == t) {
                        Some((_, checks)) => checks.push(correlation.log_check()),
                        None => searches.push((t, vec![correlation.log_check()])),
                    }
                }
            }
        }
        let round = searches
            .into_iter()
            .map(|(t, checks)| (t, checks, Vec::new()))
            .collect();
        let (answers, unanswered) = self.inspect_round(round).await?;
        let mut verdicts = Vec::new();
        for (t, result) in answers {
            let name = self.target_name(t);
            let checks = result.inspection.unwrap_or_default().checks;
            for verdict in checks.iter().filter(|v| !v.passed) {
                problems.push(format!(
                    "{name}: log correlation failed: {}",
                    verdict.detail
                ));
            }
            if result.outcome != Outcome::Succeeded {
                problems.push(format!("{name}: {}", result.reason.unwrap_or_default()));
            }
            verdicts.push(LogCorrelationVerdict {
                service: self.record.targets[t].service.clone(),
                instance: self.record.targets[t].instance.clone(),
                checks,
            });
        }
        for t in unanswered {
            let name = self.target_name(t);
            problems.push(format!("{name}: no answer to the log-correlation search"));
        }
        Ok(verdicts)
    }

    /// Sends each target `(t, checks, config_files)` an inspect command and waits, until the
    /// command timeout, for their results; returns them and the targets that did not answer.
    async fn inspect_round(
        &mut self,
        round: Vec<(usize, Vec<Check>, Vec<String>)>,
    ) -> Result<(Vec<(usize, RunResult)>, Vec<usize>), RolloutError> {
        let mut commands = Vec::new();
        for (t, checks, config_files) in round {
            let action = Action::Inspect {
                checks,
                config_files,
            };
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
                Some(t) => answers.push((t, result)),
                None => self.apply(vec![result]).await?,
            }
        }
        Ok((answers, waiting.into_values().collect()))
    }

    /// A new command of the run for target `t`, issued `now`.
    fn command_for(&self, t: usize, action: Action, now: OffsetDateTime) -> Command {
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

    /// Target `t` as `service/instance`.
    fn target_name(&self, t: usize) -> String {
        let target = &self.record.targets[t];
        format!("{}/{}", target.service, target.instance)
    }

    /// Every service migrated: prove from the tracing backend that each one's spans and logs
    /// carry the run's trace and correlation IDs. A failed check rolls the fleet back (unless
    /// `--no-verify`); the verdict is kept in the record and the report either way.
    async fn check_correlation(&mut self) -> Result<(), RolloutError> {
        let Some(trace_id) = self
            .record
            .trace_parent
            .as_deref()
            .and_then(crate::verify::trace_id_of)
        else {
            return Ok(());
        };
        let trace_id = trace_id.to_owned();
        self.sink
            .stage("cross-service check: correlation of every service's spans and logs");
        if let Some(telemetry) = &self.correlation.telemetry.0
            && let Err(e) = telemetry.flush(self.correlation.wait).await
        {
            tracing::warn!(error = %flotilla_telemetry::error_chain(&e), "coordinator telemetry not flushed");
        }
        let expected: Vec<(String, String)> = (0..self.record.targets.len())
            .filter(|&t| self.migrated(t))
            .map(|t| {
                (
                    self.record.targets[t].service.to_string(),
                    self.record.targets[t].instance.to_string(),
                )
            })
            .collect();
        let verdict = crate::verify::verify_run(
            self.client,
            self.subjects.prefix(),
            &self.correlation.backend,
            &trace_id,
            &self.record.run_id.to_string(),
            &expected,
            self.correlation.wait,
        )
        .await;
        let (ok, value, note) = match verdict {
            Ok(report) => {
                let failing: Vec<String> = report
                    .services
                    .iter()
                    .filter(|s| !s.correlated)
                    .map(|s| format!("{}/{}: {}", s.service, s.instance, s.problems.join("; ")))
                    .chain(report.problems.iter().cloned())
                    .collect();
                let note = if report.ok {
                    format!(
                        "correlation verified: {} service(s), trace {trace_id}",
                        report.services.len()
                    )
                } else {
                    format!(
                        "correlation check failed (trace {trace_id}): {}",
                        failing.join(" | ")
                    )
                };
                (report.ok, CorrelationVerdict::Checked(report), note)
            }
            Err(e) => {
                let note = format!("correlation check failed: {e}");
                (false, CorrelationVerdict::failed(e), note)
            }
        };
        self.record.notes.push(note);
        self.record.correlation = Some(value);
        if !ok && self.correlation.enforce {
            self.record.stage = Stage::RollingBack;
        }
        self.save().await
    }

    async fn finish(&mut self, status: RunStatus) -> Result<(), RolloutError> {
        self.record.status = status;
        self.record.stage = Stage::Done;
        self.record.finished_at = Some(OffsetDateTime::now_utc());
        self.take_ignored();
        self.save().await
    }

    /// Writes the run's header (status, stage, waves, notes).
    async fn save(&mut self) -> Result<(), RolloutError> {
        self.record.updated_at = OffsetDateTime::now_utc();
        self.store
            .save_header(&self.record, &mut self.revisions)
            .await?;
        Ok(())
    }

    /// Writes the targets `ts` (their commands and results), concurrently.
    async fn save_targets(&mut self, ts: &[usize]) -> Result<(), RolloutError> {
        if ts.is_empty() {
            return Ok(());
        }
        self.store
            .save_targets(&self.record, ts, &mut self.revisions)
            .await?;
        Ok(())
    }
}

/// True when a migrate command ended in anything but success (or never got an answer).
pub(crate) fn migrate_failed(target: &TargetRecord) -> bool {
    target.migrate.as_ref().is_some_and(|m| match &m.result {
        Some(r) => r.outcome != Outcome::Succeeded,
        None => m.timed_out || m.not_delivered.is_some(),
    })
}

fn slot(target: &TargetRecord, kind: Kind) -> &Option<CommandRecord> {
    match kind {
        Kind::Migrate => &target.migrate,
        Kind::Rollback => &target.rollback,
        Kind::Finalize => &target.finalize,
    }
}

fn slot_mut(target: &mut TargetRecord, kind: Kind) -> &mut Option<CommandRecord> {
    match kind {
        Kind::Migrate => &mut target.migrate,
        Kind::Rollback => &mut target.rollback,
        Kind::Finalize => &mut target.finalize,
    }
}

impl CommandRecord {
    fn command_id(&self) -> CommandId {
        self.command.command_id
    }
}

/// Reads a run's events from the events stream, from its first message: whatever was published
/// before the coordinator started listening (or while it was down) is not lost.
struct Follower {
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
    async fn new(
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
    fn take_ignored(&mut self) -> Vec<String> {
        std::mem::take(&mut self.ignored)
    }

    /// Checks that an event comes from the agent it names: published on its subject (the
    /// broker's permissions) and signed by its key. A forged result is noted for the record; a
    /// forged progress event is only logged (it decides nothing).
    fn authentic(
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

    async fn follow(
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
    async fn resync(&mut self) {
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
    async fn next_result(
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
    async fn catch_up(&mut self, limit: Duration, sink: &mut impl ProgressSink) -> Vec<RunResult> {
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
    async fn next_event(
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

/// How the cross-service correlation check runs before a migration is finalized.
#[derive(Clone)]
pub struct CorrelationCheck {
    pub backend: crate::verify::Backend,
    /// How long to wait for late telemetry.
    pub wait: std::time::Duration,
    /// Roll back instead of finalizing when the check fails.
    pub enforce: bool,
    /// This process's telemetry, flushed before the check so its own spans are in the store.
    pub telemetry: crate::cli::TelemetryHandle,
}

/// Files `results` under the commands they answer; returns the targets that changed. The first
/// answer to a command wins (a replayed one carries the same outcome). A result that comes
/// after the coordinator gave up on its command (`timed_out`) is filed too, with a note: the
/// agent's journal is the truth, and the record follows it.
fn file_results(
    record: &mut RunRecord,
    index: &HashMap<CommandId, usize>,
    results: Vec<RunResult>,
) -> Vec<usize> {
    let mut touched = Vec::new();
    for result in results {
        let Some(&t) = index.get(&result.command_id) else {
            continue;
        };
        let target = &mut record.targets[t];
        if target.service != result.service || target.instance != result.instance {
            tracing::warn!(command_id = %result.command_id, "ignoring a result from another agent than the command's");
            continue;
        }
        let signing_agent = !target.agent_keys.is_empty();
        let Some(command) = target
            .commands_mut()
            .find(|c| c.command.command_id == result.command_id)
        else {
            continue;
        };
        if command.result.is_some() {
            continue;
        }
        if let Some(why) = answers_another_copy(command, &result, signing_agent) {
            let note = format!(
                "ignored 1 forged result for {}/{}: {why}",
                result.service, result.instance
            );
            tracing::warn!(command_id = %result.command_id, "{note}");
            record.notes.push(note);
            continue;
        }
        if command.timed_out || command.not_delivered.is_some() {
            let note = format!(
                "{}/{}: a late result ({}) came after the coordinator gave up on the command, and was filed",
                result.service,
                result.instance,
                result.outcome.as_str()
            );
            tracing::warn!(command_id = %result.command_id, "{note}");
            record.notes.push(note);
        }
        command.result = Some(result);
        touched.push(t);
    }
    touched
}

/// Why `result` does not answer `command` as the coordinator signed and sent it, if it does
/// not: its digest names other bytes or another signature (a copy replayed unsigned, or
/// altered), or it is a refusal from a signing agent that names no digest at all. Agents older
/// than signed results (`signing_agent` false) name none and are not held to it.
fn answers_another_copy(
    command: &CommandRecord,
    result: &RunResult,
    signing_agent: bool,
) -> Option<&'static str> {
    let sent = command.digest.as_deref()?;
    match result.command_digest.as_deref() {
        Some(received) if received != sent => Some(
            "it answers a copy of the command that the coordinator did not send (replayed unsigned, or altered)",
        ),
        None if signing_agent && result.outcome == Outcome::Refused => {
            Some("a refusal that does not name the digest of the command it refuses")
        }
        _ => None,
    }
}

/// For a run that no coordinator drives (ended or cancelled): files the results that reached
/// the events stream after its coordinator gave up on their commands or stopped, so that
/// `status`, `report` and `rollback` tell what the agents' journals say. Returns how many were
/// filed. Does nothing for a running run: its coordinator files its own results.
pub async fn file_late_results(
    client: &async_nats::Client,
    subjects: &Subjects,
    store: &Store,
    record: &mut RunRecord,
    revisions: &mut Revisions,
) -> Result<usize, RolloutError> {
    let unanswered = |c: &CommandRecord| c.result.is_none() && c.sent_at.is_some();
    let waiting = record.commands().any(unanswered);
    if record.status == RunStatus::Running || !waiting {
        return Ok(0);
    }
    let js = jetstream::new(client.clone());
    let events = flotilla_bus::events_stream(&js, subjects).await?;
    let mut follower = Follower::new(&events, subjects, record).await?;
    let results = follower.catch_up(CATCH_UP_LIMIT, &mut Quiet).await;
    let index = command_index(record);
    let ignored = follower.take_ignored();
    let noted = !ignored.is_empty();
    record.notes.extend(ignored);
    let touched = file_results(record, &index, results);
    if !touched.is_empty() || noted {
        store.save_targets(record, &touched, revisions).await?;
        record.updated_at = OffsetDateTime::now_utc();
        store.save_header(record, revisions).await?;
    }
    Ok(touched.len())
}

/// A progress sink that shows nothing.
struct Quiet;

impl ProgressSink for Quiet {
    fn progress(&mut self, _progress: &Progress) {}
    fn result(&mut self, _result: &RunResult) {}
}

/// How long reading a run's past events may take.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// The most commands dispatched, or results filed, in one round of concurrent writes.
const DISPATCH_BATCH: usize = 500;

/// Which target each recorded command went to.
fn command_index(record: &RunRecord) -> HashMap<CommandId, usize> {
    let mut index = HashMap::new();
    for (t, target) in record.targets.iter().enumerate() {
        for command in target.commands() {
            index.insert(command.command.command_id, t);
        }
    }
    index
}

/// How long the coordinator waits for the run's root span to reach the store.
const ROOT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The name the coordinator's spans carry as `flotilla.service`.
pub const COORDINATOR_SERVICE: &str = "flotilla";

/// Opens and closes the run's root span at once (so that it is exported even if this
/// coordinator is killed) and returns its `traceparent`, under which every later span goes.
fn root_span(record: &RunRecord) -> String {
    let span = tracing::info_span!(
        parent: None,
        "run",
        otel.name = format!("flotilla run {}", record.plan_name),
        flotilla.run_id = %record.run_id,
        flotilla.service = COORDINATOR_SERVICE,
        flotilla.instance = %record.coordinator,
        flotilla.plan = %record.plan_name,
    );
    let mut headers = std::collections::HashMap::new();
    span.in_scope(|| {
        tracing::info!(run_id = %record.run_id, plan = %record.plan_name, "run started");
        for (name, value) in flotilla_telemetry::http_headers() {
            headers.insert(name, value);
        }
    });
    headers.remove("traceparent").unwrap_or_default()
}

/// The context a stored `traceparent` names.
fn parse_traceparent(traceparent: &str) -> opentelemetry::Context {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    flotilla_telemetry::extract(&headers)
}
