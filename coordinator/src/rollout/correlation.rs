//! The correlation stage: the tracing backend proves every service carried the run's IDs.

use super::{Engine, ProgressSink, RolloutError};
use flotilla_schemas::Inconclusive;

use crate::store::{CorrelationVerdict, Stage};

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

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Every service migrated: prove from the tracing backend that each one's spans and logs
    /// carry the run's trace and correlation IDs. A failed check rolls the fleet back (unless
    /// `--no-verify`); the verdict is kept in the record and the report either way.
    pub(super) async fn check_correlation(&mut self) -> Result<(), RolloutError> {
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
            tracing::warn!(
                error = %flotilla_telemetry::error_chain(&e),
                "coordinator telemetry not flushed"
            );
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
        let (ok, value, note) = judged(verdict, &trace_id);
        let waived = !ok && self.waives(&value);
        let note = if waived {
            format!(
                "{note} — inconclusive for want of telemetry, and the plan says [correlation] inconclusive = \"warn\": the run goes on"
            )
        } else {
            note
        };
        self.sink.note(&note);
        self.record.notes.push(note);
        self.record.correlation = Some(value);
        if !ok && !waived && self.correlation.enforce {
            self.record.stage = Stage::RollingBack;
        }
        self.save().await
    }

    /// True when `verdict` failed only for want of telemetry and the plan accepts that.
    pub(super) fn waives(&self, verdict: &CorrelationVerdict) -> bool {
        verdict.inconclusive() && self.plan.correlation.inconclusive == Inconclusive::Warn
    }
}

/// The check's outcome for the record: whether it passed, the verdict, and the run's note.
fn judged(
    verdict: Result<flotilla_tracestore::VerifyReport, String>,
    trace_id: &str,
) -> (bool, CorrelationVerdict, String) {
    match verdict {
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
    }
}
