//! The run from stage to stage: waves, the failure budget, rollback, proof, finalize.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self};
use flotilla_schemas::{RunId, ServiceName};
use time::OffsetDateTime;

use super::decisions::{self, AfterWaves};
use super::filing::command_index;
use super::follower::Follower;
use super::trace::{ROOT_FLUSH_TIMEOUT, root_span};
use super::{Engine, EngineParts, Flow, ProgressSink, RolloutError, Target};
use crate::plan::{Finalize, Plan};
use crate::store::ActionKind;
use crate::store::{Revisions, RunRecord, RunStatus, Stage, WaveStatus};

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
        record.plan_files = crate::plan_files::recorded(&plan);
        if let Some(started_by) = &mut record.started_by {
            started_by.signing_key = parts.signer.as_ref().map(|k| k.id().to_owned());
        }
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
            let named = first_named(&unsigned);
            let note = format!(
                "results of {named} are accepted unverified: their agents sign nothing (older than signed results); upgrade them"
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
            tracing::warn!(
                error = %flotilla_telemetry::error_chain(&e),
                "the run's root span was not flushed"
            );
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

    pub(super) async fn assemble(
        parts: EngineParts<'a, P>,
        plan: Plan,
        record: RunRecord,
        revisions: Revisions,
    ) -> Result<Self, RolloutError> {
        let js = jetstream::new(parts.client.clone());
        flotilla_bus::commands_stream(&js, parts.subjects).await?;
        let events = flotilla_bus::events_stream(&js, parts.subjects).await?;
        let follower = Follower::new(&events, parts.subjects, &record).await?;
        let follower = if parts.sink.shows_progress() {
            follower.hear_progress(parts.client).await
        } else {
            follower
        };
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
        tracing::info!(
            run_id = %self.record.run_id,
            plan = %self.plan.name,
            stage = ?self.record.stage,
            "driving run"
        );

        if self.record.stage == Stage::Migrating {
            match self.migrate_waves().await? {
                Flow::Cancelled => return self.cancelled().await,
                Flow::Paused => return Ok(self.record),
                Flow::Done | Flow::Stopped => {}
            }
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
            let cause = decisions::rollback_cause(
                self.failed_check(),
                self.record.rehearse,
                self.budget_broken(),
            );
            if self.roll_back_waves(None, &cause).await? == Flow::Cancelled {
                return self.cancelled().await;
            }
            if !decisions::unresolved_rollbacks(&self.record, None).is_empty() {
                return self.unresolved(None).await;
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
        if !decisions::unresolved_rollbacks(&self.record, only.as_ref()).is_empty() {
            return self.unresolved(only.as_ref()).await;
        }
        self.finish(RunStatus::RolledBack).await?;
        Ok(self.record)
    }

    /// Rollbacks that no agent answered: the run claims no end state. It stays at the rollback
    /// stage, so `resume` (or `rollback`) sends them again.
    pub(super) async fn unresolved(
        mut self,
        only: Option<&ServiceName>,
    ) -> Result<RunRecord, RolloutError> {
        let names = self.target_names(&decisions::unresolved_rollbacks(&self.record, only));
        let run = self.record.run_id;
        let note = format!(
            "unresolved: no agent confirmed the rollback of {} (not delivered, or no answer): those services may still be migrated; `flotilla rollback {run}` (or `resume`) sends the rollbacks again",
            first_named(&names)
        );
        self.sink.note(&note);
        self.record.notes.push(note);
        self.record.status = RunStatus::Unresolved;
        self.take_ignored();
        self.save().await?;
        Ok(self.record)
    }

    pub(super) async fn migrate_waves(&mut self) -> Result<Flow, RolloutError> {
        let total = self.record.waves.len();
        for w in 0..total {
            if self.record.waves[w].status == WaveStatus::Done {
                continue;
            }
            if decisions::stops_dispatch(self.budget_broken(), self.plan.on_failure) {
                break;
            }
            match self.pause_before(w).await? {
                Flow::Done => {}
                Flow::Stopped => break,
                flow @ (Flow::Cancelled | Flow::Paused) => return Ok(flow),
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
            (self.record.waves[w].started_at).get_or_insert_with(OffsetDateTime::now_utc);
            self.save().await?;
            let cap = self.record.waves[w].max_parallel;
            let flow = self.migrate_wave_with_analysis(w, &members, cap).await?;
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
        let broken = self.budget_broken();
        if self.failures() > allowed {
            let note = format!(
                "{} service(s) failed, over the failure budget of {allowed}; on_failure = {}",
                self.failures(),
                self.plan.on_failure.as_str()
            );
            self.sink.note(&note);
            self.record.notes.push(note);
        }
        match decisions::after_waves(broken, self.record.rehearse, self.plan.on_failure) {
            // A rehearsal too: it is proven like a real run before it is rolled back.
            AfterWaves::Finalize => self.record.stage = Stage::Finalizing,
            AfterWaves::RollBack => self.record.stage = Stage::RollingBack,
            AfterWaves::Leave => {
                self.record.notes.push(
                    "the migrated services were left as they are, not finalized: `flotilla rollback RUN` restores them".into(),
                );
                self.finish(RunStatus::Failed).await?;
            }
        }
        self.save().await?;
        Ok(Flow::Done)
    }

    /// Rolls back every migrated service (of `only`, when given), latest wave first.
    pub(super) async fn roll_back_waves(
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
                .run_commands(ActionKind::Rollback, &members, cap, Some(cause), false)
                .await?;
            if flow == Flow::Cancelled {
                return Ok(flow);
            }
        }
        Ok(Flow::Done)
    }

    pub(super) async fn cancelled(mut self) -> Result<RunRecord, RolloutError> {
        self.record.status = RunStatus::Cancelled;
        self.record.notes.push(
            "cancelled: nothing more was dispatched; `flotilla resume RUN` finishes the run".into(),
        );
        self.save().await?;
        Ok(self.record)
    }

    /// Every service migrated: the cross-service checks, then the correlation check, each once
    /// (a resumed run keeps the verdicts it has). A failure moves the run to rolling back.
    pub(super) async fn prove(&mut self) -> Result<(), RolloutError> {
        if self.record.cross_service.is_none() && self.plan.cross_service.is_some() {
            self.cross_service_stage().await?;
        }
        if self.record.stage == Stage::Finalizing && self.record.correlation.is_none() {
            self.check_correlation().await?;
        }
        Ok(())
    }

    /// The enforced check that failed (it rolls a run back and fails a rehearsal), if any.
    pub(super) fn failed_check(&self) -> Option<&'static str> {
        if decisions::analysis_failed(&self.record) {
            return Some("an analysis gate ([[wave.analysis]])");
        }
        self.correlation
            .enforce
            .then(|| {
                let waived = self
                    .record
                    .correlation
                    .as_ref()
                    .is_some_and(|c| self.waives(c));
                let correlation = if waived {
                    &None
                } else {
                    &self.record.correlation
                };
                crate::store::failed_verdict(&self.record.cross_service, correlation)
            })
            .flatten()
    }

    /// How a rehearsal ended once its services were restored: `rehearsed` only when every
    /// rollback was proved and every check a real run makes passed.
    pub(super) fn rehearsal_status(&mut self) -> RunStatus {
        let failed_check = self.failed_check();
        if let Some(check) = failed_check {
            let note = format!("rehearsal failed: {check} failed, which rolls a real run back");
            self.sink.note(&note);
            self.record.notes.push(note);
        }
        if decisions::rehearsed(&self.record, failed_check) {
            RunStatus::Rehearsed
        } else {
            RunStatus::Failed
        }
    }

    /// Sends a finalize to every migrated service: its agent drops the backup.
    pub(super) async fn finalize_migrated(&mut self) -> Result<Flow, RolloutError> {
        self.sink.stage("finalize: agents drop their backups");
        let members: Vec<usize> = (0..self.record.targets.len())
            // One that failed its bake keeps its backup: `rollback --service` restores it.
            .filter(|&t| self.migrated(t) && self.record.targets[t].bake_failure.is_none())
            .collect();
        let names = self.target_names(&members);
        self.sink.batch("finalize", &names);
        self.run_commands(ActionKind::Finalize, &members, None, None, false)
            .await
    }

    /// Migrated and proven, finalized by hand: stop here with every backup kept.
    pub(super) async fn await_decision(mut self) -> Result<RunRecord, RolloutError> {
        self.record.status = RunStatus::AwaitingFinalize;
        let note = "migrated and proven, not finalized (--no-finalize or finalize = \"manual\"): every backup is kept until the operator decides".to_owned();
        self.sink.note(&note);
        self.record.notes.push(note);
        self.save().await?;
        Ok(self.record)
    }

    /// The targets `members` as `service/instance`.
    pub(super) fn target_names(&self, members: &[usize]) -> Vec<String> {
        members.iter().map(|&t| self.target_name(t)).collect()
    }

    /// Target `t` as `service/instance`.
    pub(super) fn target_name(&self, t: usize) -> String {
        let target = &self.record.targets[t];
        format!("{}/{}", target.service, target.instance)
    }

    pub(super) async fn finish(&mut self, status: RunStatus) -> Result<(), RolloutError> {
        self.record.status = status;
        self.record.stage = Stage::Done;
        self.record.finished_at = Some(OffsetDateTime::now_utc());
        self.take_ignored();
        self.save().await
    }

    /// Writes the run's header (status, stage, waves, notes).
    pub(super) async fn save(&mut self) -> Result<(), RolloutError> {
        self.record.updated_at = OffsetDateTime::now_utc();
        self.store
            .save_header(&self.record, &mut self.revisions)
            .await?;
        Ok(())
    }

    /// Writes the targets `ts` (their commands and results), concurrently.
    pub(super) async fn save_targets(&mut self, ts: &[usize]) -> Result<(), RolloutError> {
        if ts.is_empty() {
            return Ok(());
        }
        self.store
            .save_targets(&self.record, ts, &mut self.revisions)
            .await?;
        Ok(())
    }

    pub(super) async fn cancel_requested(&self) -> Result<bool, RolloutError> {
        if self.shutdown.is_cancelled() {
            return Ok(true);
        }
        Ok(self.store.cancel_requested(&self.record.run_id).await?)
    }

    pub(super) fn timeout_of(&self, t: usize) -> Duration {
        self.plan
            .service(&self.record.targets[t].service)
            .map_or(self.plan.command_timeout, |s| s.command_timeout)
    }
}

/// How many agents a note names before it counts the rest.
const NAMED: usize = 20;

/// `names` joined, the first [`NAMED`] of them, and how many more: a note lives in the run's
/// header, whose size must not grow with the fleet (each target, in the chunks, tells the rest).
fn first_named(names: &[String]) -> String {
    let mut named = names[..names.len().min(NAMED)].join(", ");
    if names.len() > NAMED {
        named.push_str(&format!(" and {} more", names.len() - NAMED));
    }
    named
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_note_names_the_first_agents_and_counts_the_rest() {
        let names: Vec<String> = (0..50_000).map(|i| format!("svc/agent-{i}")).collect();
        assert_eq!(super::first_named(&names[..2]), "svc/agent-0, svc/agent-1");
        let named = super::first_named(&names);
        assert!(named.starts_with("svc/agent-0, "), "{named}");
        assert!(named.ends_with("svc/agent-19 and 49980 more"), "{named}");
        assert!(named.len() < 400, "{}", named.len());
    }
}
