//! One way to write a regression gate, with its unit, for every report (text, Markdown, HTML,
//! JUnit) and for `flotilla watch`. The unit comes from the gate's name, as the agent writes it
//! (`startup_ms`, `memory_bytes`, `<workload>.p95_us`, `<workload>.duration_ms`, …), so gates an
//! agent adds later render too.

use flotilla_schemas::GateReport;

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
    }
}
