//! Telemetry shared by the Flotilla binaries: `tracing` set-up (human logs on stderr, JSON on
//! request, `RUST_LOG` honoured).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global `tracing` subscriber. `default_filter` applies when `RUST_LOG` is unset.
///
/// Returns a guard to keep alive for the life of the process; dropping it flushes telemetry.
pub fn init(format: LogFormat, default_filter: &str) -> TelemetryGuard {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr.with_max_level(tracing::Level::TRACE))
        .with_ansi(use_colour());
    // A second init (tests that call `run` twice in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    TelemetryGuard { _private: () }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>).
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

/// Keeps telemetry running; flushes on drop.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    _private: (),
}

/// An error and its sources on one line (`a: b: c`), skipping a source whose text its parent
/// already shows, for log fields and reasons sent to the coordinator.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
