//! The pause between waves (a wave's `pause`): a bake waited out, or a stop until
//! `flotilla promote RUN`. The pause's start and end are recorded on the wave it follows, so a
//! resumed run waits out only what is left of a bake.

use std::time::Duration;

use time::OffsetDateTime;

use tokio::time::Instant;

use super::{Engine, Flow, ProgressSink, RolloutError};
use crate::plan::Pause;
use crate::store::{RunRecord, RunStatus, WaveStatus};

mod health;

/// How often a bake looks for a promote or a cancel: one small read of the run store each.
const BAKE_POLL: Duration = Duration::from_millis(250);

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Before wave `w` starts: the pause the wave before it asked for, once that wave succeeded.
    /// `Done` to go on; `Cancelled` on a cancel during a bake; `Stopped` when failed health
    /// checks during the bake broke the budget; `Paused` for a manual pause.
    pub(super) async fn pause_before(&mut self, w: usize) -> Result<Flow, RolloutError> {
        let Some(prev) = w.checked_sub(1) else {
            return Ok(Flow::Done);
        };
        let wave = &self.record.waves[prev];
        let Some(pause) = wave.pause else {
            return Ok(Flow::Done);
        };
        // A broken budget under `on_failure = "continue"` goes on at once: nothing to bake.
        if wave.status != WaveStatus::Done || wave.pause_ended_at.is_some() || self.budget_broken()
        {
            return Ok(Flow::Done);
        }
        if wave.paused_at.is_none() {
            self.begin_pause(prev, pause).await?;
        }
        match pause {
            Pause::Manual => self.hold(prev).await,
            Pause::Bake(_) => self.bake(prev).await,
        }
    }

    /// Ends the manual pause of a run `paused` (`flotilla promote RUN`), then drives the next
    /// waves. No coordinator watched the pause: the finished waves are validated once first
    /// (health, gates, functional checks, and the wave's analysis gates), and failures that
    /// break the budget send the run to `on_failure` (rollback) instead of the next wave.
    pub async fn promote(mut self) -> Result<RunRecord, RolloutError> {
        if let Some(w) = self.record.open_pause() {
            let name = self.record.waves[w].name.clone();
            self.sink.stage(&format!(
                "promote: the waves up to {name:?} validated again before the next wave"
            ));
            // The analysis first: what Prometheus saw over the pause, before this promote's
            // own inspects show up in the agents' metrics.
            let analysis_failed = self.analyse_after_bake(w).await;
            let failed = self.pause_round(w).await?;
            self.record.waves[w].pause_ended_at = Some(OffsetDateTime::now_utc());
            let stops =
                super::decisions::stops_dispatch(self.budget_broken(), self.plan.on_failure);
            let note = if (failed > 0 || analysis_failed) && stops {
                let what = match (failed, analysis_failed) {
                    (0, _) => "the wave's analysis failed".to_owned(),
                    (n, false) => format!("{n} service(s) failed their validation"),
                    (n, true) => {
                        format!("{n} service(s) failed their validation and the analysis failed")
                    }
                };
                format!(
                    "promote refused: {what} during the manual pause after wave {name:?}, which broke the failure budget; the next wave does not start"
                )
            } else {
                format!("promoted (flotilla promote): the pause after wave {name:?} ended")
            };
            self.sink.note(&note);
            self.record.notes.push(note);
        }
        self.drive().await
    }

    /// Records when the pause after wave `w` began and, for a bake, when it ends.
    async fn begin_pause(&mut self, w: usize, pause: Pause) -> Result<(), RolloutError> {
        let now = OffsetDateTime::now_utc();
        let wave = &mut self.record.waves[w];
        wave.paused_at = Some(now);
        if let Pause::Bake(d) = pause {
            wave.paused_until = Some(now + d);
        }
        let stage = format!("pause after wave {:?}: {pause}", wave.name);
        self.sink.stage(&stage);
        self.save().await
    }

    /// A manual pause: the run stops `paused`, and this coordinator with it.
    async fn hold(&mut self, w: usize) -> Result<Flow, RolloutError> {
        let run = self.record.run_id;
        let note = format!(
            "paused after wave {:?} (pause = \"manual\"): `flotilla promote {run}` starts the next wave, `flotilla rollback {run}` restores the fleet",
            self.record.waves[w].name
        );
        self.sink.note(&note);
        self.record.notes.push(note);
        self.record.status = RunStatus::Paused;
        self.save().await?;
        Ok(Flow::Paused)
    }

    /// A bake: waits until its recorded end, or a promote, or a cancel (or Ctrl-C), validating
    /// the migrated services again every `bake_health_every` (health, gates, functional
    /// checks, and the wave's analysis gates); `Stopped` once failures broke the failure budget
    /// or an analysis gate failed.
    async fn bake(&mut self, w: usize) -> Result<Flow, RolloutError> {
        let run = self.record.run_id;
        let mut next_health = Instant::now() + self.plan.bake_health_every;
        loop {
            if Instant::now() >= next_health {
                if let Some(flow) = self.bake_round(w, true).await? {
                    return Ok(flow);
                }
                next_health = Instant::now() + self.plan.bake_health_every;
            }
            if self.store.promote_requested(&run, w).await? {
                let note = format!(
                    "promoted (flotilla promote): the bake after wave {:?} ended early",
                    self.record.waves[w].name
                );
                self.sink.note(&note);
                self.record.notes.push(note);
                return self.bake_over(w).await;
            }
            if self.cancel_requested().await? {
                return Ok(Flow::Cancelled);
            }
            let until = self.record.waves[w]
                .paused_until
                .unwrap_or_else(OffsetDateTime::now_utc);
            let left = until - OffsetDateTime::now_utc();
            if !left.is_positive() {
                return self.bake_over(w).await;
            }
            let to_health = next_health.saturating_duration_since(Instant::now());
            let nap = Duration::try_from(left)
                .map_or(BAKE_POLL, |left| left.min(BAKE_POLL))
                .min(to_health);
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// One round of the bake after wave `w` (with its analysis gates read again when
    /// `analysis`); `Some(Stopped)` (the pause ended) once failures broke the failure budget or
    /// a gate failed.
    async fn bake_round(&mut self, w: usize, analysis: bool) -> Result<Option<Flow>, RolloutError> {
        let broken = self.pause_round(w).await? > 0 && self.budget_broken();
        let why = if broken {
            "services that failed their validation during it broke the failure budget"
        } else if analysis && self.analyse_during_bake(w).await {
            "it failed its analysis"
        } else {
            return Ok(None);
        };
        let note = format!(
            "the bake after wave {:?} stopped: {why}",
            self.record.waves[w].name
        );
        self.sink.note(&note);
        self.record.notes.push(note);
        self.end_pause(w).await?;
        Ok(Some(Flow::Stopped))
    }

    /// The bake after wave `w` is over (waited out or promoted): a last round validates the
    /// services as they are at its end, then the wave's analysis gates are read again over what
    /// the bake showed; a failed one stops the run as a broken budget does (`Stopped`: it rolls
    /// back).
    async fn bake_over(&mut self, w: usize) -> Result<Flow, RolloutError> {
        if let Some(flow) = self.bake_round(w, false).await? {
            return Ok(flow);
        }
        let failed = self.analyse_after_bake(w).await;
        let flow = self.end_pause(w).await?;
        if failed {
            let note = format!(
                "the bake after wave {:?} failed its analysis: the run stops",
                self.record.waves[w].name
            );
            self.sink.note(&note);
            self.record.notes.push(note);
            self.save().await?;
            return Ok(Flow::Stopped);
        }
        Ok(flow)
    }

    /// The pause after wave `w` is over: recorded, and any promote request for it forgotten.
    async fn end_pause(&mut self, w: usize) -> Result<Flow, RolloutError> {
        self.record.waves[w].pause_ended_at = Some(OffsetDateTime::now_utc());
        self.save().await?;
        self.store.clear_promote(&self.record.run_id).await?;
        Ok(Flow::Done)
    }
}
