//! One way to write a regression gate, with its unit, for every report (text, Markdown, HTML,
//! JUnit) and for `flotilla watch`. The unit comes from the gate's name, as the agent writes it
//! (`startup_ms`, `memory_bytes`, `<workload>.p95_us`, `<workload>.duration_ms`, …), so gates an
//! agent adds later render too. A run-once job's figures (its run's duration, peak memory, exit
//! code and outputs) are written here as well: they are what its gates judge, and what a report
//! shows where a service shows its startup time.

use flotilla_schemas::{GateReport, JobRun, Measurements};

/// What a gate's figures count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    Millis,
    Micros,
    Bytes,
    /// A bare number: errors, samples, throughput.
    Count,
}

/// A gate, for display.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gate<'a>(pub &'a GateReport);

// === impl Unit ===

impl Unit {
    /// The unit of the gate (or measurement) named `gate`.
    pub(crate) fn of(gate: &str) -> Self {
        if gate.ends_with("_bytes") || gate.starts_with("memory") {
            Unit::Bytes
        } else if gate.ends_with("_us") {
            Unit::Micros
        } else if gate.ends_with("_ms") || gate.starts_with("startup") {
            Unit::Millis
        } else {
            Unit::Count
        }
    }

    /// `v` in this unit: `120 ms`, `950 µs`, `20.5 MiB`, or the bare number.
    pub(crate) fn figure(self, v: f64) -> String {
        match self {
            Unit::Bytes => format!("{:.1} MiB", v / 1048576.0),
            Unit::Millis => format!("{v} ms"),
            Unit::Micros => format!("{v} µs"),
            Unit::Count => format!("{}", (v * 100.0).round() / 100.0),
        }
    }

    /// The suffix the gate's name carries for this unit, which [`Gate::compact`] drops.
    fn suffix(self) -> &'static str {
        match self {
            Unit::Millis => "_ms",
            Unit::Micros => "_us",
            Unit::Bytes => "_bytes",
            Unit::Count => "",
        }
    }

    /// The divisor, the unit's symbol and the digits of a figure in [`Gate::compact`].
    fn compact(self) -> (f64, &'static str, usize) {
        match self {
            Unit::Bytes => (1048576.0, " MiB", 1),
            Unit::Millis => (1.0, " ms", 0),
            Unit::Micros => (1.0, " µs", 0),
            Unit::Count => (1.0, "", 2),
        }
    }
}

// === impl Gate ===

impl Gate<'_> {
    pub(crate) fn unit(self) -> Unit {
        Unit::of(&self.0.gate)
    }

    /// One of the gate's figures in its unit.
    pub(crate) fn figure(self, v: u64) -> String {
        self.unit().figure(v as f64)
    }

    /// `≥` when the limit is a floor (higher is better), `≤` when it is a ceiling.
    pub(crate) fn bound(self) -> &'static str {
        if self.0.higher_is_better {
            "≥"
        } else {
            "≤"
        }
    }

    /// `passed`, `TRIPPED`, or `inconclusive (passed|failed)` (too few samples to judge).
    pub(crate) fn verdict(self) -> &'static str {
        match (self.0.inconclusive, self.0.passed) {
            (true, true) => "inconclusive (passed)",
            (true, false) => "inconclusive (failed)",
            (false, true) => "passed",
            (false, false) => "TRIPPED",
        }
    }

    /// `startup_ms 55 ms → 62 ms (≤ 155 ms) passed`.
    pub(crate) fn line(self) -> String {
        let g = self.0;
        format!(
            "{} {} → {} ({} {}) {}",
            g.gate,
            self.figure(g.before),
            self.figure(g.after),
            self.bound(),
            self.figure(g.limit),
            self.verdict()
        )
    }

    /// As few characters as a terminal row allows: `startup 58→62 ms (≤160) ok`.
    pub(crate) fn compact(self) -> String {
        let g = self.0;
        let unit = self.unit();
        let name = g.gate.strip_suffix(unit.suffix()).unwrap_or(&g.gate);
        let (scale, symbol, digits) = unit.compact();
        let verdict = match (g.inconclusive, g.passed) {
            (true, _) => "?",
            (false, true) => "ok",
            (false, false) => "TRIPPED",
        };
        format!(
            "{name} {:.digits$}→{:.digits$}{symbol} ({}{:.digits$}) {verdict}",
            g.before as f64 / scale,
            g.after as f64 / scale,
            self.bound(),
            g.limit as f64 / scale,
        )
    }
}

/// Every gate's [`Gate::line`], comma-separated.
pub(crate) fn lines(gates: &[GateReport]) -> String {
    gates
        .iter()
        .map(|g| Gate(g).line())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every gate's [`Gate::compact`] form, comma-separated.
pub(crate) fn compact(gates: &[GateReport]) -> String {
    gates
        .iter()
        .map(|g| Gate(g).compact())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the figures are those of a run-once job (the agent ran it instead of a restart).
pub(crate) fn is_job(m: &Measurements) -> bool {
    m.job_before.is_some() || m.job_after.is_some()
}

/// What the restart phase measured, before → after: a service's startup time
/// (`55 ms → 62 ms`), or a job's run (`job run 40 ms → 52 ms, exit code 0`).
pub(crate) fn restart_figures(m: &Measurements) -> String {
    let ms = |v: Option<u64>| v.map_or_else(|| "-".into(), |v| Unit::Millis.figure(v as f64));
    if !is_job(m) {
        return format!("{} → {}", ms(m.startup_ms_before), ms(m.startup_ms_after));
    }
    let ending = m
        .job_after
        .as_deref()
        .map(|run| format!(", {}", run.ending()))
        .unwrap_or_default();
    format!(
        "job run {} → {}{ending}",
        ms(m.job_before.as_deref().map(|r| r.duration_ms)),
        ms(m.job_after.as_deref().map(|r| r.duration_ms)),
    )
}

/// The memory figures before → after: a service's resident memory
/// ([`super::memory::memory_figures`]), or a job's peak (`peak 13.5 MiB → 14.0 MiB`).
pub(crate) fn memory_figures(m: &Measurements) -> String {
    if !is_job(m) {
        return super::memory::memory_figures(m);
    }
    let peak = |run: Option<&JobRun>| {
        run.and_then(|r| r.peak_memory_bytes)
            .map_or_else(|| "-".into(), |b| Unit::Bytes.figure(b as f64))
    };
    format!(
        "peak {} → {}",
        peak(m.job_before.as_deref()),
        peak(m.job_after.as_deref())
    )
}

/// The restart phase's figure after the change, for a narrow column: `62ms`, `run 52ms`, `-`.
pub(crate) fn restart_compact(m: &Measurements) -> String {
    match (m.job_after.as_deref(), m.startup_ms_after) {
        (Some(run), _) => format!("run {}ms", run.duration_ms),
        (None, Some(startup)) => format!("{startup}ms"),
        (None, None) => "-".into(),
    }
}

/// One run of a job: `52 ms, peak 10.1 MiB, exit code 0; out/result.json ok (52 bytes)`.
pub(crate) fn job_run(run: &JobRun) -> String {
    let peak = run
        .peak_memory_bytes
        .map(|b| format!(", peak {}", Unit::Bytes.figure(b as f64)))
        .unwrap_or_default();
    let outputs: Vec<String> = run
        .outputs
        .iter()
        .map(|o| {
            let verdict = if o.passed { "ok" } else { "FAILED" };
            format!("{} {verdict} ({})", o.path, o.detail)
        })
        .collect();
    let outputs = if outputs.is_empty() {
        String::new()
    } else {
        format!("; {}", outputs.join(", "))
    };
    format!(
        "{}{peak}, {}{outputs}",
        Unit::Millis.figure(run.duration_ms as f64),
        run.ending()
    )
}

/// A job's runs as labelled lines (`baseline run: …`, `run after the change: …`); none for a
/// service.
pub(crate) fn job_runs(m: &Measurements) -> Vec<(&'static str, String)> {
    [
        ("baseline run", m.job_before.as_deref()),
        ("run after the change", m.job_after.as_deref()),
    ]
    .into_iter()
    .filter_map(|(label, run)| Some((label, job_run(run?))))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, before: u64, after: u64, limit: u64, passed: bool) -> GateReport {
        GateReport {
            gate: name.into(),
            before,
            after,
            limit,
            passed,
            higher_is_better: false,
            inconclusive: false,
        }
    }

    #[test]
    fn every_gate_shows_its_unit() {
        let latency = gate("predict.p95_us", 4000, 9000, 9000, true);
        assert_eq!(
            Gate(&latency).line(),
            "predict.p95_us 4000 µs → 9000 µs (≤ 9000 µs) passed"
        );
        assert_eq!(
            Gate(&latency).compact(),
            "predict.p95 4000→9000 µs (≤9000) ok"
        );
        let startup = gate("startup_ms", 55, 62, 155, false);
        assert_eq!(
            Gate(&startup).line(),
            "startup_ms 55 ms → 62 ms (≤ 155 ms) TRIPPED"
        );
        assert_eq!(Gate(&startup).compact(), "startup 55→62 ms (≤155) TRIPPED");
        let memory = gate("memory_bytes", 18454938, 18769510, 22649241, true);
        assert_eq!(Gate(&memory).compact(), "memory 17.6→17.9 MiB (≤21.6) ok");
        let mut throughput = gate("epoch.throughput", 900, 700, 765, false);
        throughput.higher_is_better = true;
        throughput.inconclusive = true;
        assert_eq!(
            Gate(&throughput).line(),
            "epoch.throughput 900 → 700 (≥ 765) inconclusive (failed)"
        );
        assert_eq!(Unit::of("epoch.duration_ms"), Unit::Millis);
        assert_eq!(Unit::of("predict.errors"), Unit::Count);
        assert_eq!(Unit::of("job_peak_memory_limit_bytes"), Unit::Bytes);
    }

    #[test]
    fn a_job_shows_its_run_where_a_service_shows_its_startup() {
        let service = Measurements {
            startup_ms_before: Some(55),
            startup_ms_after: Some(62),
            ..Default::default()
        };
        assert_eq!(restart_figures(&service), "55 ms → 62 ms");
        assert_eq!(restart_compact(&service), "62ms");
        assert!(job_runs(&service).is_empty());
        let run = |duration_ms, exit_code| JobRun {
            duration_ms,
            peak_memory_bytes: Some(10 * 1048576),
            exit_code: Some(exit_code),
            outputs: vec![flotilla_schemas::JobOutputReport {
                path: "out/result.json".into(),
                bytes: Some(52),
                passed: exit_code == 0,
                detail: if exit_code == 0 {
                    "52 bytes"
                } else {
                    "missing"
                }
                .into(),
            }],
            ..Default::default()
        };
        let job = Measurements {
            job_before: Some(Box::new(run(40, 0))),
            job_after: Some(Box::new(run(52, 3))),
            ..Default::default()
        };
        assert_eq!(restart_figures(&job), "job run 40 ms → 52 ms, exit code 3");
        assert_eq!(restart_compact(&job), "run 52ms");
        assert_eq!(memory_figures(&service), "- → -");
        assert_eq!(memory_figures(&job), "peak 10.0 MiB → 10.0 MiB");
        let runs = job_runs(&job);
        assert_eq!(
            runs[0],
            (
                "baseline run",
                "40 ms, peak 10.0 MiB, exit code 0; out/result.json ok (52 bytes)".into()
            )
        );
        assert_eq!(
            runs[1].1,
            "52 ms, peak 10.0 MiB, exit code 3; out/result.json FAILED (missing)"
        );
    }
}
