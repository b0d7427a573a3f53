//! Proving correlation: reads a run's trace back from the tracing backend and checks that every
//! service of the run reported spans and logs under the run's trace and correlation ID.

use std::time::Duration;

use flotilla_tracestore::{Trace, VerifyReport};
use tokio::time::Instant;

/// Where the trace is read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// The default store: the telemetry stream in NATS.
    #[default]
    Default,
    /// Jaeger's query API (api_v3) at this base URL.
    Jaeger(String),
    /// Grafana Tempo's query API at this base URL.
    Tempo(String),
}

/// As `--trace-backend` takes it.
impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Default => f.write_str("default"),
            Backend::Jaeger(url) => write!(f, "jaeger={url}"),
            Backend::Tempo(url) => write!(f, "tempo={url}"),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            None if s == "default" => Ok(Backend::Default),
            Some(("jaeger", url)) if !url.is_empty() => Ok(Backend::Jaeger(url.to_owned())),
            Some(("tempo", url)) if !url.is_empty() => Ok(Backend::Tempo(url.to_owned())),
            _ => Err(format!("{s:?}: use default, jaeger=URL or tempo=URL")),
        }
    }
}

/// The trace ID a W3C `traceparent` names.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| id.len() == 32)
}

async fn fetch(
    client: &async_nats::Client,
    prefix: &str,
    backend: &Backend,
    trace_id: &str,
) -> Result<Trace, String> {
    let read = match backend {
        Backend::Default => {
            flotilla_tracestore::default_store::fetch(client, prefix, trace_id).await
        }
        Backend::Jaeger(url) => flotilla_tracestore::jaeger::fetch(url, trace_id).await,
        Backend::Tempo(url) => flotilla_tracestore::tempo::fetch(url, trace_id).await,
    };
    read.map_err(|e| flotilla_telemetry::error_chain(&e))
}

/// Reads the trace and verifies it, again and again until it passes or `wait` is over (late
/// telemetry is normal: exporters batch); returns the last verdict.
pub async fn verify_run(
    client: &async_nats::Client,
    prefix: &str,
    backend: &Backend,
    trace_id: &str,
    run_id: &str,
    expected: &[(String, String)],
    wait: Duration,
) -> Result<VerifyReport, String> {
    let deadline = Instant::now() + wait;
    loop {
        // A backend that cannot answer now (the telemetry stream electing a leader) is read
        // again until the deadline, like late telemetry.
        let verdict = fetch(client, prefix, backend, trace_id)
            .await
            .map(|trace| flotilla_tracestore::verify(&trace, run_id, expected));
        match verdict {
            Ok(report) if report.ok => return Ok(report),
            last if Instant::now() >= deadline => return last,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// The report as text for a terminal.
pub fn to_text(report: &VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let verdict = if report.ok {
        "correlated"
    } else {
        "NOT correlated"
    };
    let _ = writeln!(
        out,
        "run {} trace {}: {verdict}",
        report.run_id, report.trace_id
    );
    let _ = writeln!(
        out,
        "{:24} {:>6} {:>6}  {:10} problems",
        "SERVICE", "SPANS", "LOGS", "CORRELATED"
    );
    for s in &report.services {
        let _ = writeln!(
            out,
            "{:24} {:>6} {:>6}  {:10} {}",
            format!("{}/{}", s.service, s.instance),
            s.spans,
            s.logs,
            if s.correlated { "yes" } else { "NO" },
            s.problems.join("; ")
        );
    }
    for problem in &report.problems {
        let _ = writeln!(out, "trace: {problem}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse() {
        assert_eq!("default".parse::<Backend>(), Ok(Backend::Default));
        assert_eq!(
            "jaeger=http://j:16686".parse::<Backend>(),
            Ok(Backend::Jaeger("http://j:16686".into()))
        );
        assert_eq!(
            "tempo=http://t:3200".parse::<Backend>(),
            Ok(Backend::Tempo("http://t:3200".into()))
        );
        assert!("jaeger=".parse::<Backend>().is_err());
        assert!("zipkin=x".parse::<Backend>().is_err());
    }

    #[test]
    fn trace_ids_come_from_traceparents() {
        assert_eq!(
            trace_id_of("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
