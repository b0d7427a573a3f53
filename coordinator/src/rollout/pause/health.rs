//! Health during a bake: every `bake_health_every`, each service migrated so far answers an
//! inspect round with its health checks; one that fails (or does not answer) fails.

use std::collections::BTreeMap;

use flotilla_schemas::{Check, HttpCheck};

use super::super::dispatch::InspectRequest;
use super::super::{Engine, ProgressSink, RolloutError};

/// How long one health check of a bake may take when the plan gives the service none of its own.
const DEFAULT_CHECK_TIMEOUT_MS: u64 = 5_000;

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// One health round over the services migrated by waves `..=w` that have not failed yet.
    /// Records a failure on each that fails; returns how many failed.
    pub(super) async fn bake_health_round(&mut self, w: usize) -> Result<usize, RolloutError> {
        let members: Vec<usize> = (0..self.record.targets.len())
            .filter(|&t| self.record.targets[t].wave <= w)
            .filter(|&t| self.migrated(t) && self.record.targets[t].bake_failure.is_none())
            .collect();
        if members.is_empty() {
            return Ok(0);
        }
        let round = members
            .iter()
            .map(|&t| InspectRequest {
                target: t,
                checks: self.health_checks(t),
                ..InspectRequest::default()
            })
            .collect();
        let (answers, unanswered) = self.inspect_round(round).await?;
        let mut failed: Vec<(usize, String)> = unanswered
            .into_iter()
            .map(|t| (t, "no answer to its health check".to_owned()))
            .collect();
        for (t, result) in answers {
            let checks = result.inspection.unwrap_or_default().checks;
            if let Some(bad) = checks.iter().find(|v| !v.passed) {
                failed.push((t, format!("health check failed: {}", bad.detail)));
            }
        }
        let wave = self.record.waves[w].name.clone();
        for (t, why) in &failed {
            let why = format!("during the bake after wave {wave:?}: {why}");
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
