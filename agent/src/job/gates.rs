//! The regression gates of a job's run: its duration and its peak memory against the baseline,
//! and its peak memory against the absolute limit.

use flotilla_schemas::{GateReport, Gates, JobRun};

/// The gate names, as reports show them.
pub const DURATION: &str = "job_duration_ms";
pub const PEAK_MEMORY: &str = "job_peak_memory_bytes";
pub const PEAK_MEMORY_LIMIT: &str = "job_peak_memory_limit_bytes";

/// The gates of `after` against `before` (the baseline run, if any) and `max_peak_memory`.
pub fn evaluate(
    gates: &Gates,
    before: Option<&JobRun>,
    after: &JobRun,
    max_peak_memory: Option<u64>,
) -> Vec<GateReport> {
    let mut reports = Vec::new();
    if let Some(before) = before {
        reports.push(GateReport::regression(
            DURATION,
            before.duration_ms,
            after.duration_ms,
            gates.latency_p95_max_increase_pct,
            gates.latency_slack_ms,
        ));
        if let (Some(b), Some(a)) = (before.peak_memory_bytes, after.peak_memory_bytes) {
            reports.push(GateReport::regression(
                PEAK_MEMORY,
                b,
                a,
                gates.memory_max_increase_pct,
                gates.memory_slack_bytes,
            ));
        }
    }
    if let (Some(limit), Some(after)) = (max_peak_memory, after.peak_memory_bytes) {
        reports.push(GateReport::at_most(PEAK_MEMORY_LIMIT, limit, after, limit));
    }
    reports
}

/// The reason for the tripped gates, or an empty string.
pub fn tripped(reports: &[GateReport]) -> String {
    reports
        .iter()
        .filter(|g| !g.passed)
        .map(|g| {
            format!(
                "{} regression: {} after, {} before, limit {}",
                g.gate, g.after, g.before, g.limit
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(duration_ms: u64, peak: u64) -> JobRun {
        JobRun {
            duration_ms,
            peak_memory_bytes: Some(peak),
            exit_code: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn duration_and_peak_memory_trip_past_the_percentage_and_the_slack() {
        let gates = Gates {
            latency_p95_max_increase_pct: 50.0,
            latency_slack_ms: 100,
            ..Gates::default()
        };
        let mib = 1 << 20;
        let within = evaluate(
            &gates,
            Some(&run(1000, 100 * mib)),
            &run(1400, 100 * mib),
            None,
        );
        assert_eq!(within.len(), 2);
        assert!(within.iter().all(|g| g.passed), "{within:?}");
        assert_eq!(within[0].limit, 1500);
        let slower = evaluate(
            &gates,
            Some(&run(1000, 100 * mib)),
            &run(1600, 100 * mib),
            None,
        );
        assert!(!slower[0].passed);
        assert!(tripped(&slower).starts_with("job_duration_ms regression: 1600 after"));
        // No baseline: only the absolute limit.
        let limited = evaluate(&gates, None, &run(1600, 100 * mib), Some(50 * mib));
        assert_eq!(limited.len(), 1);
        assert!(!limited[0].passed);
        assert_eq!(limited[0].gate, PEAK_MEMORY_LIMIT);
    }
}
