//! Validation during a pause between waves: every `bake_health_every` of a bake, and once when
//! a manual pause is promoted, each service migrated so far answers an inspect round with its
//! health checks and its migration validated again by its agent (the memory gate against the
//! migration's baseline, the functional checks). One that fails any of them, refuses, or does not
//! answer fails, as a failed migration does.

use std::collections::BTreeMap;

use flotilla_schemas::{Check, GateReport, HttpCheck, RunResult};

use super::super::dispatch::InspectRequest;
use super::super::{Engine, ProgressSink, RolloutError};
use crate::plan::Pause;

/// How long one health check of a bake may take when the plan gives the service none of its own.
const DEFAULT_CHECK_TIMEOUT_MS: u64 = 5_000;

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// One round over the services migrated by waves `..=w` that have not failed yet. Records a
    /// failure on each that fails; returns how many failed.
    pub(super) async fn pause_round(&mut self, w: usize) -> Result<usize, RolloutError> {
        let members: Vec<usize> = (0..self.record.targets.len())
            .filter(|&t| self.record.targets[t].wave <= w)
            .filter(|&t| self.migrated(t) && self.record.targets[t].bake_failure.is_none())
            .collect();
        if members.is_empty() {
            return Ok(0);
        }
        let round: Vec<InspectRequest> = members
            .iter()
            .map(|&t| InspectRequest {
                target: t,
                checks: self.health_checks(t),
                revalidate: self.record.targets[t]
                    .migrate
                    .as_ref()
                    .map(|m| m.command_id()),
                ..InspectRequest::default()
            })
            .collect();
        let health: BTreeMap<usize, usize> =
            round.iter().map(|r| (r.target, r.checks.len())).collect();
        let started = tokio::time::Instant::now();
        let (answers, unanswered) = self.inspect_round(round).await?;
        // What a round costs, and the agents' share of it (their slowest inspect phase).
        let agent_ms = answers
            .iter()
            .flat_map(|(_, r)| &r.phases)
            .map(|p| p.duration_ms)
            .max()
            .unwrap_or(0);
        tracing::info!(
            services = members.len(),
            took_ms = started.elapsed().as_millis() as u64,
            agent_ms,
            "pause round"
        );
        let mut failed: Vec<(usize, String)> = unanswered
            .into_iter()
            .map(|t| (t, "no answer to its inspect".to_owned()))
            .collect();
        for (t, result) in answers {
            if let Some(why) = failure(&result, health.get(&t).copied().unwrap_or(0)) {
                failed.push((t, why));
            }
        }
        let wave = &self.record.waves[w];
        let pause = match wave.pause {
            Some(Pause::Manual) => "manual pause",
            _ => "bake",
        };
        let during = format!("during the {pause} after wave {:?}", wave.name);
        for (t, why) in &failed {
            let why = format!("{during}: {why}");
            let note = format!("{}: {why}", self.target_name(*t));
            self.sink.note(&note);
            self.record.notes.push(note);
            self.record.targets[*t].bake_failure = Some(why);
        }
        let ts: Vec<usize> = failed.iter().map(|(t, _)| *t).collect();
        self.save_targets(&ts).await?;
        if !ts.is_empty() {
            self.save().await?;
        }
        Ok(ts.len())
    }

    /// The plan's health checks of target `t`'s service, or the agent's own health URL.
    fn health_checks(&self, t: usize) -> Vec<Check> {
        let own = self
            .plan
            .service(&self.record.targets[t].service)
            .map(|s| s.health.clone())
            .unwrap_or_default();
        if own.is_empty() {
            return vec![Check::Http(HttpCheck {
                url: None,
                method: None,
                body: None,
                expect_status: 200,
                body_contains: None,
                timeout_ms: DEFAULT_CHECK_TIMEOUT_MS,
                headers: BTreeMap::new(),
            })];
        }
        own.into_iter().map(Check::Http).collect()
    }
}

/// Why one answer of a round fails its service, if it does: the inspect refused, a health check
/// (the first `health` verdicts) or a functional check failed, or a gate tripped.
fn failure(result: &RunResult, health: usize) -> Option<String> {
    let Some(inspection) = &result.inspection else {
        let reason = result.reason.as_deref().unwrap_or("no reason given");
        return Some(format!("its inspect was refused: {reason}"));
    };
    if let Some((i, bad)) = inspection
        .checks
        .iter()
        .enumerate()
        .find(|(_, v)| !v.passed)
    {
        return Some(if i < health {
            format!("health check failed: {}", bad.detail)
        } else {
            format!("functional check ({}) failed: {}", bad.kind, bad.detail)
        });
    }
    inspection.gates.iter().find(|g| !g.passed).map(tripped)
}

/// A tripped gate in the words of the migration's validate.
fn tripped(g: &GateReport) -> String {
    format!(
        "{} regression: {} after, {} before, limit {}",
        g.gate, g.after, g.before, g.limit
    )
}
