//! The rollout engine: dispatch commands, follow their events, roll back or finalize.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Command, CommandId, HEADER_RUN_ID, InstanceId, Outcome, Presence, Progress, RunId,
    RunResult, ServiceName, decode, encode, schema_of,
};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::plan::{OnFailure, Plan};
use crate::report::{RunReport, RunStatus, ServiceReport, ServiceStatus};

/// Why a run could not proceed at all.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Bus(#[from] flotilla_bus::BusError),
    #[error("cannot follow the run's events")]
    Follow(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One agent that a command goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: ServiceName,
    pub instance: InstanceId,
}

/// Pre-flight: every service of the plan needs at least one live agent that speaks our command
/// schema. Returns the targets, or the list of problems.
pub fn preflight(plan: &Plan, agents: &[Presence]) -> Result<Vec<Target>, Vec<String>> {
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
            targets.push(Target {
                service: agent.service.clone(),
                instance: agent.instance.clone(),
            });
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
    fn progress(&mut self, progress: &Progress);
    fn result(&mut self, result: &RunResult);
}

/// Runs `plan` against `targets` and reports how every one ended.
pub struct Rollout<'a, P: ProgressSink> {
    pub client: &'a async_nats::Client,
    pub subjects: &'a Subjects,
    pub plan: &'a Plan,
    pub sink: P,
}

impl<P: ProgressSink> Rollout<'_, P> {
    pub async fn run(mut self, targets: Vec<Target>) -> Result<RunReport, RolloutError> {
        let started_at = OffsetDateTime::now_utc();
        let run_id = RunId::new();
        let js = jetstream::new(self.client.clone());
        flotilla_bus::commands_stream(&js, self.subjects).await?;
        let events = flotilla_bus::events_stream(&js, self.subjects).await?;
        let mut follower = Follower::new(&events, self.subjects, run_id).await?;
        tracing::info!(%run_id, plan = %self.plan.name, targets = targets.len(), "run started");

        let mut reports: Vec<ServiceReport> = Vec::new();
        let mut pending = HashMap::new();
        for target in &targets {
            let service_plan = self
                .plan
                .services
                .iter()
                .find(|s| s.name == target.service)
                .expect("targets come from the plan");
            let action = Action::Migrate {
                steps: service_plan.steps.clone(),
                health: service_plan.health.clone(),
                gates: service_plan.gates.clone().unwrap_or_default(),
            };
            let command = self.command(run_id, target, action);
            reports.push(ServiceReport {
                service: target.service.clone(),
                instance: target.instance.clone(),
                status: ServiceStatus::TimedOut,
                reason: None,
                command_id: command.command_id,
                phases: Vec::new(),
                measurements: Default::default(),
            });
            match self.send(&js, &command).await {
                Ok(()) => {
                    pending.insert(command.command_id, reports.len() - 1);
                }
                Err(reason) => {
                    let report = reports.last_mut().expect("just pushed");
                    report.status = ServiceStatus::NotDelivered;
                    report.reason = Some(reason);
                }
            }
        }
        let results = follower
            .wait(
                pending.keys().copied().collect(),
                self.plan.command_timeout,
                &mut self.sink,
            )
            .await;
        for (command_id, index) in &pending {
            let report = &mut reports[*index];
            match results.get(command_id) {
                Some(result) => {
                    report.status = ServiceStatus::from_outcome(result.outcome);
                    report.reason = result.reason.clone();
                    report.phases = result.phases.clone();
                    report.measurements = result.measurements.clone();
                }
                None => {
                    report.reason = Some(format!(
                        "no result within {:?}: the agent is silent or stuck",
                        self.plan.command_timeout
                    ));
                }
            }
        }

        let all_ok = reports.iter().all(|r| r.status == ServiceStatus::Succeeded);
        let finalized = if all_ok {
            self.close(&js, &mut follower, run_id, &reports, Close::Finalize)
                .await
        } else {
            if self.plan.on_failure == OnFailure::Rollback {
                self.close(&js, &mut follower, run_id, &reports, Close::Rollback)
                    .await;
                let rolled: Vec<_> = follower.closing.drain().collect();
                for (migration, result) in rolled {
                    if let Some(report) = reports.iter_mut().find(|r| r.command_id == migration) {
                        report.status = ServiceStatus::from_outcome(result.outcome);
                        report.reason = Some(match result.outcome {
                            Outcome::RolledBack => {
                                "rolled back because another service of the run failed".to_owned()
                            }
                            _ => result.reason.unwrap_or_default(),
                        });
                        report.phases.extend(result.phases);
                    }
                }
            }
            false
        };
        let finished_at = OffsetDateTime::now_utc();
        Ok(RunReport {
            run_id,
            plan: self.plan.name.clone(),
            status: if all_ok {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            started_at,
            finished_at,
            duration_ms: (finished_at - started_at).whole_milliseconds().max(0) as u64,
            finalized,
            services: reports,
        })
    }

    fn command(&self, run_id: RunId, target: &Target, action: Action) -> Command {
        let now = OffsetDateTime::now_utc();
        Command {
            schema: Default::default(),
            command_id: CommandId::new(),
            run_id,
            service: target.service.clone(),
            instance: target.instance.clone(),
            issued_at: now,
            expires_at: now + self.plan.command_timeout,
            action,
        }
    }

    /// Publishes a command into the commands stream and waits for the stream to store it.
    async fn send(&self, js: &jetstream::Context, command: &Command) -> Result<(), String> {
        let subject = self.subjects.command(&command.service, &command.instance);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", command.command_id.to_string().as_str());
        headers.insert(HEADER_RUN_ID, command.run_id.to_string().as_str());
        let ack = async {
            js.publish_with_headers(subject.clone(), headers, encode(command).into())
                .await?
                .await
        };
        ack.await
            .map(|_| ())
            .map_err(|e| format!("command not delivered to {subject}: {e}"))
    }

    /// Sends finalize (or rollback) to every service that succeeded and waits for the answers.
    /// Returns true when every one confirmed.
    async fn close(
        &mut self,
        js: &jetstream::Context,
        follower: &mut Follower,
        run_id: RunId,
        reports: &[ServiceReport],
        how: Close,
    ) -> bool {
        let mut sent = HashMap::new();
        for report in reports
            .iter()
            .filter(|r| r.status == ServiceStatus::Succeeded)
        {
            let target = Target {
                service: report.service.clone(),
                instance: report.instance.clone(),
            };
            let action = match how {
                Close::Finalize => Action::Finalize {
                    migration: report.command_id,
                },
                Close::Rollback => Action::Rollback {
                    migration: report.command_id,
                },
            };
            let command = self.command(run_id, &target, action);
            if self.send(js, &command).await.is_ok() {
                sent.insert(command.command_id, report.command_id);
            }
        }
        let expected = sent.len();
        let results = follower
            .wait(
                sent.keys().copied().collect(),
                self.plan.command_timeout,
                &mut self.sink,
            )
            .await;
        let wanted = match how {
            Close::Finalize => Outcome::Finalized,
            Close::Rollback => Outcome::RolledBack,
        };
        let mut confirmed = 0;
        for (command_id, result) in results {
            if result.outcome == wanted {
                confirmed += 1;
            }
            follower.closing.insert(sent[&command_id], result);
        }
        confirmed == expected
    }
}

#[derive(Clone, Copy)]
enum Close {
    Finalize,
    Rollback,
}

/// Reads a run's events from the events stream, from its first message: whatever was published
/// before the coordinator started listening is not lost.
struct Follower {
    messages: consumer::pull::Ordered,
    results: HashMap<CommandId, RunResult>,
    /// Results of finalize/rollback commands, keyed by the migration they close.
    closing: HashMap<CommandId, RunResult>,
}

impl Follower {
    async fn new(
        events: &jetstream::stream::Stream,
        subjects: &Subjects,
        run_id: RunId,
    ) -> Result<Self, RolloutError> {
        let consumer = events
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subjects.run_events(&run_id),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| RolloutError::Follow(Box::new(e)))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| RolloutError::Follow(Box::new(e)))?;
        Ok(Self {
            messages,
            results: HashMap::new(),
            closing: HashMap::new(),
        })
    }

    /// Waits until every command in `expected` has a result, or `timeout` passes.
    async fn wait(
        &mut self,
        expected: Vec<CommandId>,
        timeout: Duration,
        sink: &mut impl ProgressSink,
    ) -> HashMap<CommandId, RunResult> {
        let deadline = Instant::now() + timeout;
        let mut found = HashMap::new();
        for id in &expected {
            if let Some(result) = self.results.remove(id) {
                found.insert(*id, result);
            }
        }
        while found.len() < expected.len() {
            let message = match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "event stream hiccup");
                    continue;
                }
                Ok(None) | Err(_) => break,
            };
            match schema_of(&message.payload).as_deref() {
                Ok(flotilla_schemas::ProgressSchema::VALUE) => {
                    match decode::<Progress>(&message.payload) {
                        Ok(progress) => sink.progress(&progress),
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed progress event"),
                    }
                }
                Ok(flotilla_schemas::ResultSchema::VALUE) => {
                    match decode::<RunResult>(&message.payload) {
                        Ok(result) => {
                            sink.result(&result);
                            if expected.contains(&result.command_id) {
                                found.entry(result.command_id).or_insert(result);
                            } else {
                                self.results.entry(result.command_id).or_insert(result);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed result"),
                    }
                }
                other => tracing::warn!(schema = ?other, "ignoring an event of unknown schema"),
            }
        }
        found
    }
}
