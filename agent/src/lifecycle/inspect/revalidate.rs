//! An inspect during a pause between waves validates a migration again, without a restart:
//! what its validate measured that the running service still shows (its memory, against the
//! baseline the migration's precheck took and under the migration's own gates), and its
//! functional checks. Startup time needs a restart and workloads load the service: those are
//! measured at the migration only. The baseline is read from the journal, where a succeeded
//! migration whose backup is kept survives every compaction.

use std::time::Duration;

use flotilla_schemas::{
    Action, Check, Command, CommandId, GateReport, Gates, Measurements, Outcome,
};

use super::super::Lifecycle;

/// What the migration's validate judged against, as the journal holds it.
pub(super) struct Baseline {
    pub(super) gates: Gates,
    /// Its functional checks, as the plan declared them (rendered again when they run).
    pub(super) checks: Vec<Check>,
    pub(super) measurements: Measurements,
}

impl Lifecycle {
    /// The baseline of `migration`, a succeeded migration of `command`'s run; why not, otherwise.
    pub(super) fn baseline(
        &self,
        command: &Command,
        migration: CommandId,
    ) -> Result<Baseline, String> {
        if let Some(reason) = self.of_another_run(command, migration, "inspect") {
            return Err(reason);
        }
        let entry = self.journal.get(migration).ok_or_else(|| {
            format!("migration {migration} is unknown to this agent: nothing to validate again")
        })?;
        let succeeded = entry
            .result
            .as_ref()
            .filter(|r| r.outcome == Outcome::Succeeded);
        let migrate = entry.command.as_ref().map(|c| &c.action);
        let (Some(result), Some(Action::Migrate { gates, checks, .. })) = (succeeded, migrate)
        else {
            let state = entry
                .result
                .as_ref()
                .map_or("unfinished", |r| r.outcome.as_str());
            return Err(format!(
                "migration {migration} is {state}: nothing to validate again"
            ));
        };
        if self.backups.is_restored(migration) {
            return Err(format!(
                "migration {migration} is rolled back: nothing to validate again"
            ));
        }
        // A job has no process to look at between its runs, and its checks run it again.
        let checks = if self.job_config().is_some() {
            Vec::new()
        } else {
            checks.clone()
        };
        Ok(Baseline {
            gates: gates.clone(),
            checks,
            measurements: result.measurements.clone(),
        })
    }

    /// The memory gate as the migration's validate judged it, with the memory now (from the
    /// baseline's source): one read of `/proc` or of the cgroup, nothing restarted. A reading
    /// over the limit is taken again after [`CONFIRM_AFTER`], keeping the lower: a transient
    /// peak (a request's buffers) is not a regression, a leak trips both times.
    pub(super) async fn gates_now(&self, baseline: &Baseline) -> Vec<GateReport> {
        let m = &baseline.measurements;
        let gates = &baseline.gates;
        let judge = |now: u64| {
            m.rss_bytes_before.map(|before| {
                GateReport::regression(
                    "memory_bytes",
                    before,
                    now,
                    gates.memory_max_increase_pct,
                    gates.memory_slack_bytes,
                )
            })
        };
        let Some(first) = self
            .memory(m.memory_source)
            .and_then(|now| judge(now.bytes))
        else {
            return Vec::new();
        };
        if first.passed {
            return vec![first];
        }
        tokio::time::sleep(CONFIRM_AFTER).await;
        let again = self
            .memory(m.memory_source)
            .and_then(|now| judge(now.bytes.min(first.after)));
        vec![again.unwrap_or(first)]
    }
}

/// How long after a tripped memory reading the second one is taken.
const CONFIRM_AFTER: Duration = Duration::from_millis(500);
