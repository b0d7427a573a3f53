//! The default store: OTLP protobuf published to a JetStream stream, so spans and logs of every
//! agent and of the coordinator are kept with nothing but NATS running.
//!
//! | what | name |
//! |---|---|
//! | stream | `<PREFIX>_TELEMETRY` (`FLOTILLA_TELEMETRY`), file storage, bounded by age and size |
//! | spans of one trace | `<prefix>.otel.traces.<trace_id_hex>`: an `ExportTraceServiceRequest` |
//! | logs of one trace | `<prefix>.otel.logs.<trace_id_hex>`: an `ExportLogsServiceRequest` |
//!
//! Each export batch gives one message per trace and signal (split further when it would exceed
//! [`MAX_MESSAGE_BYTES`]). Log records outside any span go under the all-zero trace ID.
//! Until a NATS client is attached, messages wait in a bounded buffer (oldest dropped first).

mod exporters;
mod sink;
mod split;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

pub(crate) use exporters::{StoreLogExporter, StoreSpanExporter};
pub(crate) use sink::Sink;

use crate::TelemetryError;

/// How long the stream keeps telemetry.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How much the stream keeps; the oldest messages go first.
pub const STREAM_MAX_BYTES: i64 = 512 * 1024 * 1024;
/// The largest message published; bigger batches are split. Half of nats-server's default
/// `max_payload` (1 MiB), leaving room for headers.
pub const MAX_MESSAGE_BYTES: usize = 512 * 1024;
/// How much waits in memory for NATS (not attached yet, or unreachable).
pub const MAX_BUFFER_BYTES: usize = 16 * 1024 * 1024;
/// How long one attempt waits for the stream's acknowledgement.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// The trace-ID token of log records emitted outside any span.
pub const NO_TRACE: &str = "00000000000000000000000000000000";

/// The telemetry stream's name: `<PREFIX>_TELEMETRY`.
pub fn stream_name(prefix: &str) -> String {
    format!(
        "{}_TELEMETRY",
        prefix.to_ascii_uppercase().replace('-', "_")
    )
}

/// Every subject of the telemetry stream.
pub fn all_subjects(prefix: &str) -> String {
    format!("{prefix}.otel.>")
}

/// Where the spans of one trace are published (`trace_id` in lower-case hex).
pub fn traces_subject(prefix: &str, trace_id: &str) -> String {
    format!("{prefix}.otel.traces.{trace_id}")
}

/// Where the log records of one trace are published (`trace_id` in lower-case hex).
pub fn logs_subject(prefix: &str, trace_id: &str) -> String {
    format!("{prefix}.otel.logs.{trace_id}")
}

/// The telemetry stream as Flotilla wants it.
pub fn stream_config(prefix: &str) -> stream::Config {
    stream::Config {
        name: stream_name(prefix),
        description: Some("Flotilla spans and logs (OTLP protobuf), one subject per trace".into()),
        subjects: vec![all_subjects(prefix)],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        max_age: STREAM_MAX_AGE,
        max_bytes: STREAM_MAX_BYTES,
        ..Default::default()
    }
}

/// Creates or opens the telemetry stream.
pub async fn ensure_stream(
    js: &jetstream::Context,
    prefix: &str,
) -> Result<stream::Stream, TelemetryError> {
    let name = stream_name(prefix);
    js.get_or_create_stream(stream_config(prefix))
        .await
        .map_err(|source| TelemetryError::Stream { name, source })
}

/// Counters of the default store since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Messages produced by the exporters.
    pub enqueued: u64,
    /// Messages acknowledged by the stream.
    pub stored: u64,
    /// Messages dropped because the buffer was full.
    pub dropped: u64,
    /// Messages dropped after failed attempts.
    pub failed: u64,
}

impl StoreStats {
    /// Messages neither stored nor given up on yet.
    pub fn pending(&self) -> u64 {
        self.enqueued - self.stored - self.dropped - self.failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(stream_name("flotilla"), "FLOTILLA_TELEMETRY");
        assert_eq!(stream_name("my-fleet"), "MY_FLEET_TELEMETRY");
        assert_eq!(all_subjects("flotilla"), "flotilla.otel.>");
        assert_eq!(traces_subject("flotilla", "ab"), "flotilla.otel.traces.ab");
        assert_eq!(logs_subject("flotilla", "ab"), "flotilla.otel.logs.ab");
    }
}
