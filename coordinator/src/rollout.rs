//! The rollout engine: dispatch commands wave by wave, follow their events, and roll back or
//! finalize. Every decision is written to the run record first, so a coordinator killed at any
//! point can be replaced by `flotilla resume`, which carries on from the record: a command
//! that was recorded is re-sent with the same command ID (agents and the stream dedupe it), and
//! results published while no coordinator listened are read back from the events stream.

use std::collections::HashMap;

use std::sync::Arc;

use async_nats::jetstream::{self};
use flotilla_bus::signing::SigningKey;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{CommandId, Presence, Progress, RunResult, ServiceName};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::Plan;
use crate::store::{Revisions, RunRecord, Store, StoreError};
use crate::trust::AgentPins;

mod analysis;
mod correlation;
mod cross_service;
mod decisions;
mod dispatch;
mod engine;
mod filing;
mod follower;
mod pause;
mod trace;

pub use correlation::CorrelationCheck;
pub use filing::{file_late_results, not_filed};
use follower::Follower;

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
/// schema and whose result key is trusted. With the operator's selector (`limit`, from
/// `migrate -l`), only the agents it matches are targets, a service none of whose agents it
/// matches is left out, and a selector that matches no agent of the plan's services is the
/// problem. Returns the targets, or the list of problems.
pub fn preflight(
    plan: &Plan,
    agents: &[Presence],
    pins: &AgentPins,
    limit: Option<&crate::selector::Selector>,
) -> Result<Vec<Target>, Vec<String>> {
    let mut targets = Vec::new();
    let mut problems = Vec::new();
    let mut selected = 0;
    for service in &plan.services {
        let live: Vec<&Presence> = agents
            .iter()
            .filter(|a| a.service == service.name)
            .filter(|a| limit.is_none_or(|l| l.matches(a)))
            .collect();
        selected += live.len();
        if live.is_empty() && limit.is_none() {
            problems.push(format!("{}: no live agent", service.name));
        }
        for agent in live {
            if !agent
                .accepts
                .iter()
                .any(|s| s == flotilla_schemas::CommandSchema::VALUE)
            {
                // v1 agents read a work queue this coordinator no longer writes: say so.
                let older = agent
                    .accepts
                    .iter()
                    .any(|s| s == flotilla_schemas::LEGACY_COMMAND_SCHEMA);
                problems.push(format!(
                    "{}/{}: agent {} does not accept {} (it accepts {}){}",
                    agent.service,
                    agent.instance,
                    agent.version,
                    flotilla_schemas::CommandSchema::VALUE,
                    agent.accepts.join(", "),
                    if older {
                        "; it is older than per-agent command delivery: upgrade it"
                    } else {
                        ""
                    }
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
    if let Some(limit) = limit
        && selected == 0
    {
        problems.push(format!(
            "the selector \"{limit}\" matches none of the {} live agent(s) of this plan's services",
            agents
                .iter()
                .filter(|a| plan.service(&a.service).is_some())
                .count()
        ));
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
    /// Whether [`Self::progress`] shows anything. When it does not, the engine does not
    /// subscribe to live progress at all: checking each message's signature was most of the
    /// coordinator's CPU at 10,000 agents (12 progress messages and 2 results per agent), and
    /// nats-server then delivers none of it.
    fn shows_progress(&self) -> bool {
        true
    }
    /// An agent reported a command's result.
    fn result(&mut self, result: &RunResult);
    /// A wave starts (`index` from 0), or a stage of the run (rollback, finalize) does.
    fn stage(&mut self, _what: &str) {}
    /// The engine decided something worth a line (a timeout, a stop).
    fn note(&mut self, _note: &str) {}
    /// A batch of commands starts: a wave, or a wave's rollback; `targets` as `service/instance`.
    fn batch(&mut self, _name: &str, _targets: &[String]) {}
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
    /// A wave's `pause = "manual"`: the run waits for `flotilla promote RUN`, with no coordinator.
    Paused,
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
