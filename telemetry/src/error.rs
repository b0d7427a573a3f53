//! Why telemetry could not be stored or flushed, and how errors are written on one line.

use std::time::Duration;

/// Why telemetry could not be stored or flushed.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The telemetry stream could not be created or opened.
    #[error("cannot create or open the JetStream stream {name}")]
    Stream {
        /// The stream's name.
        name: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::CreateStreamError,
    },
    /// Records are waiting for the store but no NATS client was attached.
    #[error("{pending} telemetry messages were never stored: no NATS client attached")]
    NotAttached {
        /// Messages still buffered.
        pending: u64,
    },
    /// The store did not acknowledge everything within the timeout.
    #[error("{pending} telemetry messages not stored within {timeout:?}")]
    Timeout {
        /// Messages not yet acknowledged.
        pending: u64,
        /// How long we waited.
        timeout: Duration,
    },
    /// A provider failed to flush or shut down.
    #[error("telemetry {what} failed: {message}")]
    Provider {
        /// What was being done.
        what: &'static str,
        /// The SDK's error.
        message: String,
    },
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
