//! The waves' analysis gates (`[[wave.analysis]]`): a baseline read from Prometheus before a
//! wave's first dispatch, the check after its last result. A failed verdict fails the wave: the
//! run stops dispatching and rolls back as for a broken failure budget
//! ([`super::decisions::analysis_failed`]).

mod prometheus;

use flotilla_schemas::Inconclusive;

use super::{Engine, Flow, ProgressSink, RolloutError};
use crate::plan::{Rendered, Threshold};
use crate::store::{ActionKind, AnalysisVerdict};
use prometheus::{QueryError, Reading};

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Migrates wave `w`'s `members` (at most `cap` at a time) between the two readings of its
    /// analysis gates, and records their verdicts; a wave without gates just migrates.
    pub(super) async fn migrate_wave_with_analysis(
        &mut self,
        w: usize,
        members: &[usize],
        cap: Option<u32>,
    ) -> Result<Flow, RolloutError> {
        let Some(analysis) = self.plan.analysis.clone() else {
            return self
                .run_commands(ActionKind::Migrate, members, cap, None, true)
                .await;
        };
        let services = self.wave_services(members);
        let run_id = self.record.run_id.to_string();
        let queries = analysis.queries(&self.record.waves[w].name, &run_id, &services);
        let client = prometheus::client();
        let mut baselines = Vec::with_capacity(queries.len());
        for q in &queries {
            baselines.push(match q.gate.threshold {
                Threshold::MaxIncrease(_) => {
                    Some(prometheus::query(&client, &analysis.prometheus, &q.query).await)
                }
                Threshold::Max(_) => None,
            });
        }
        let flow = self
            .run_commands(ActionKind::Migrate, members, cap, None, true)
            .await?;
        if flow != Flow::Done || queries.is_empty() {
            return Ok(flow);
        }
        let mut verdicts = Vec::with_capacity(queries.len());
        for (q, baseline) in queries.iter().zip(baselines) {
            let after = prometheus::query(&client, &analysis.prometheus, &q.query).await;
            verdicts.push(judge(q, baseline, after));
        }
        self.note_verdicts(w, &verdicts);
        self.record.waves[w].analysis = verdicts;
        Ok(flow)
    }

    /// At the end of the bake after wave `w` (or the promote of its manual pause): its gates
    /// read again, each against the baseline taken before the wave, and recorded as
    /// `<name> (after the bake)` (`(at the promote)`). What the bake showed (an
    /// error rate that rose while the canary soaked) fails the wave as a failure right after it
    /// would. True when a verdict failed.
    pub(super) async fn analyse_after_bake(&mut self, w: usize) -> bool {
        // A manual pause is read when it is promoted: no coordinator watched it before.
        let when = match self.record.waves[w].pause {
            Some(crate::plan::Pause::Manual) => "at the promote",
            _ => "after the bake",
        };
        self.analyse_again(w, when, false).await
    }

    /// At a round of the bake after wave `w`: its gates read again as at the bake's end, so a
    /// regression fails the wave when it shows, not when the bake is over. Only a failed verdict
    /// is recorded and noted (`<name> (during the bake)`; it ends the bake): a passing or a
    /// warning reading every `bake_health_every` of a long bake would only grow the run record,
    /// and the reading at the bake's end records those once. True when one failed.
    pub(super) async fn analyse_during_bake(&mut self, w: usize) -> bool {
        self.analyse_again(w, "during the bake", true).await
    }

    /// Wave `w`'s gates read again against their baselines, the verdicts named `<name> (when)`
    /// and recorded (only the failed ones with `only_failed`). True when a verdict failed.
    async fn analyse_again(&mut self, w: usize, when: &str, only_failed: bool) -> bool {
        let Some(analysis) = self.plan.analysis.clone() else {
            return false;
        };
        let members = self.record.waves[w].targets.clone();
        let services = self.wave_services(&members);
        let run_id = self.record.run_id.to_string();
        let queries = analysis.queries(&self.record.waves[w].name, &run_id, &services);
        let client = prometheus::client();
        let mut verdicts = Vec::with_capacity(queries.len());
        for q in &queries {
            let baseline = self.record.waves[w]
                .analysis
                .iter()
                .find(|v| v.query == q.query)
                .and_then(|v| v.baseline)
                .map(|value| Ok(Reading { value, samples: 1 }));
            let baseline = match q.gate.threshold {
                Threshold::MaxIncrease(_) => baseline,
                Threshold::Max(_) => None,
            };
            let after = prometheus::query(&client, &analysis.prometheus, &q.query).await;
            let mut verdict = judge(q, baseline, after);
            verdict.name = format!("{} ({when})", verdict.name);
            verdicts.push(verdict);
        }
        if only_failed {
            verdicts.retain(|v| !v.passed);
        }
        self.note_verdicts(w, &verdicts);
        let failed = verdicts.iter().any(|v| !v.passed);
        self.record.waves[w].analysis.extend(verdicts);
        failed
    }

    /// A note for each verdict that failed or only warns.
    fn note_verdicts(&mut self, w: usize, verdicts: &[AnalysisVerdict]) {
        for v in verdicts.iter().filter(|v| !v.passed || v.inconclusive) {
            let note = format!(
                "analysis {:?} of wave {:?} {}: {}",
                v.name,
                self.record.waves[w].name,
                if v.passed { "warns" } else { "failed" },
                v.detail
            );
            self.sink.note(&note);
            self.record.notes.push(note);
        }
    }

    /// The services of the targets `members`, each once, in order.
    fn wave_services(&self, members: &[usize]) -> Vec<String> {
        let mut services: Vec<String> = Vec::new();
        for &t in members {
            let name = self.record.targets[t].service.to_string();
            if !services.contains(&name) {
                services.push(name);
            }
        }
        services
    }
}

/// The verdict of one query: its value after the wave against the threshold (and the baseline).
fn judge(
    q: &Rendered<'_>,
    baseline: Option<Result<Reading, QueryError>>,
    after: Result<Reading, QueryError>,
) -> AnalysisVerdict {
    let mut verdict = AnalysisVerdict {
        name: q.gate.name.clone(),
        service: q.service.clone(),
        query: q.query.clone(),
        value: None,
        baseline: None,
        threshold: q.gate.threshold.to_string(),
        limit: None,
        passed: false,
        inconclusive: false,
        detail: String::new(),
    };
    let baseline = match baseline.transpose() {
        Ok(b) => b,
        Err(e) => {
            return inconclusive(
                verdict,
                q.gate.inconclusive,
                &format!("before the wave, {e}"),
            );
        }
    };
    let reading = match after {
        Ok(r) => r,
        Err(e) => {
            return inconclusive(
                verdict,
                q.gate.inconclusive,
                &format!("after the wave, {e}"),
            );
        }
    };
    verdict.value = Some(reading.value);
    verdict.baseline = baseline.map(|b| b.value);
    let limit = match (q.gate.threshold, verdict.baseline) {
        (Threshold::MaxIncrease(share), Some(b)) => b + b.abs() * share,
        (Threshold::Max(max), _) | (Threshold::MaxIncrease(max), None) => max,
    };
    verdict.limit = Some(limit);
    verdict.passed = reading.value <= limit;
    let of = if reading.samples > 1 {
        format!(" (the largest of {} samples)", reading.samples)
    } else {
        String::new()
    };
    let against = verdict
        .baseline
        .map_or_else(String::new, |b| format!(", {b} before the wave"));
    verdict.detail = format!(
        "{} is {}{of}{against}, limit {limit} ({})",
        q.query,
        reading.value,
        if verdict.passed { "within" } else { "crossed" }
    );
    verdict
}

/// A verdict without a value: it fails the wave unless the gate says `inconclusive = "warn"`.
fn inconclusive(mut verdict: AnalysisVerdict, policy: Inconclusive, why: &str) -> AnalysisVerdict {
    verdict.inconclusive = true;
    verdict.passed = policy == Inconclusive::Warn;
    let means = match policy {
        Inconclusive::Warn => "inconclusive = \"warn\": the run goes on",
        Inconclusive::Fail => "inconclusive, which fails the wave (inconclusive = \"fail\")",
    };
    verdict.detail = format!("{}: {why}; {means}", verdict.query);
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::AnalysisGate;

    fn gate(threshold: Threshold, inconclusive: Inconclusive) -> AnalysisGate {
        AnalysisGate {
            wave: "canary".into(),
            name: "errors".into(),
            query: "q".into(),
            threshold,
            inconclusive,
        }
    }

    fn judged(
        gate: &AnalysisGate,
        baseline: Option<Result<Reading, QueryError>>,
        after: Result<Reading, QueryError>,
    ) -> AnalysisVerdict {
        let q = Rendered {
            gate,
            service: None,
            query: "q".into(),
        };
        judge(&q, baseline, after)
    }

    const fn reading(value: f64, samples: usize) -> Reading {
        Reading { value, samples }
    }

    #[test]
    fn a_rise_is_judged_against_the_baseline_and_several_samples_are_said() {
        let rise = gate(Threshold::MaxIncrease(0.1), Inconclusive::Fail);
        let ok = judged(&rise, Some(Ok(reading(10.0, 1))), Ok(reading(11.0, 1)));
        assert!(ok.passed && !ok.inconclusive, "{ok:?}");
        assert_eq!((ok.baseline, ok.limit), (Some(10.0), Some(11.0)));
        let over = judged(&rise, Some(Ok(reading(10.0, 1))), Ok(reading(11.5, 3)));
        assert!(!over.passed, "{over:?}");
        assert!(over.detail.contains("the largest of 3 samples"), "{over:?}");
        let from_zero = judged(&rise, Some(Ok(reading(0.0, 1))), Ok(reading(0.1, 1)));
        assert!(!from_zero.passed, "a baseline of 0 allows no rise");
        let max = gate(Threshold::Max(0.05), Inconclusive::Fail);
        assert!(judged(&max, None, Ok(reading(0.05, 1))).passed);
        assert!(!judged(&max, None, Ok(reading(0.051, 1))).passed);
    }

    #[test]
    fn no_value_before_or_after_is_inconclusive_and_fails_unless_told_to_warn() {
        let fail = gate(Threshold::MaxIncrease(0.1), Inconclusive::Fail);
        let v = judged(&fail, Some(Err(QueryError::NoData)), Ok(reading(1.0, 1)));
        assert!(v.inconclusive && !v.passed, "{v:?}");
        assert!(v.detail.contains("before the wave, no data"), "{v:?}");
        let warn = gate(Threshold::Max(1.0), Inconclusive::Warn);
        let v = judged(&warn, None, Err(QueryError::NoData));
        assert!(v.inconclusive && v.passed && v.value.is_none(), "{v:?}");
    }
}
