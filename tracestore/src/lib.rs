//! Reads a run's trace back and verifies its correlation.
//!
//! - [`Trace`]: the spans and log records of one trace, flattened from OTLP with their
//!   service (resource `service.name`), IDs in lower-case hex and attributes as strings.
//! - Readers: [`default_store`] (the `FLOTILLA_TELEMETRY` JetStream stream written by
//!   `flotilla-telemetry`), [`jaeger`] (api_v3 JSON) and [`tempo`] (`/api/v2/traces`
//!   protobuf, or its JSON).
//! - [`verify`]: does every expected service have spans and logs in the trace, all carrying the
//!   run's correlation ID, with one root and no orphans?

#![warn(missing_docs)]

pub mod default_store;
mod http;
pub mod jaeger;
pub mod tempo;
mod verify;

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use serde::{Deserialize, Serialize};

pub use verify::{
    COMPONENT_ATTR, OrphanSpan, RootSpan, SERVICE_COMPONENT, ServiceReport, VerifyReport, verify,
};

/// Where a trace's log evidence lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// OTLP log records (the default store).
    #[default]
    Records,
    /// Span events, for backends that keep no logs (Jaeger, Tempo): `tracing` events inside a
    /// span are recorded as span events too.
    SpanEvents,
}

/// The spans and log records of one trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Every span, in the order read.
    pub spans: Vec<SpanRecord>,
    /// Every log record, in the order read.
    pub logs: Vec<LogRecord>,
    /// Where [`verify`] looks for logs.
    #[serde(default)]
    pub log_source: LogSource,
}

/// A span's kind, as in OTLP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// Not given.
    #[default]
    Unspecified,
    /// Internal work.
    Internal,
    /// Handles a synchronous request.
    Server,
    /// Makes a synchronous request.
    Client,
    /// Sends a message.
    Producer,
    /// Processes a message.
    Consumer,
}

impl SpanKind {
    /// From the OTLP enum value.
    pub fn from_otlp(kind: i32) -> Self {
        match kind {
            1 => Self::Internal,
            2 => Self::Server,
            3 => Self::Client,
            4 => Self::Producer,
            5 => Self::Consumer,
            _ => Self::Unspecified,
        }
    }
}

/// One span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The resource's `service.name` (empty when absent).
    pub service_name: String,
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span ID; `None` for a root.
    pub parent_span_id: Option<String>,
    /// The span's name.
    pub name: String,
    /// Its kind.
    pub kind: SpanKind,
    /// Start, nanoseconds since the Unix epoch.
    pub start_time_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_time_unix_nano: u64,
    /// Span attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes, values rendered as strings.
    pub resource: BTreeMap<String, String>,
    /// Span events (where `tracing` events land for trace-only backends).
    pub events: Vec<SpanEvent>,
}

/// One span event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpanEvent {
    /// The event's name (the log message for `tracing` events).
    pub name: String,
    /// Event attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
}

/// One log record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The resource's `service.name` (empty when absent).
    pub service_name: String,
    /// The trace it belongs to; `None` when logged outside any span.
    pub trace_id: Option<String>,
    /// The span it was logged in.
    pub span_id: Option<String>,
    /// Time, nanoseconds since the Unix epoch (the observed time when unset).
    pub time_unix_nano: u64,
    /// OTLP severity number (INFO = 9, WARN = 13, ERROR = 17).
    pub severity_number: i32,
    /// Severity text (`INFO`, …).
    pub severity_text: String,
    /// The body rendered as a string (the log message).
    pub body: String,
    /// Log attributes, values rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// Resource attributes, values rendered as strings.
    pub resource: BTreeMap<String, String>,
}

impl Trace {
    /// Adds the spans of OTLP `ResourceSpans` (from any reader).
    pub fn add_resource_spans(&mut self, all: &[ResourceSpans]) {
        for rs in all {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service_name = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                self.spans.push(SpanRecord {
                    service_name: service_name.clone(),
                    trace_id: id_hex(&span.trace_id).unwrap_or_default(),
                    span_id: id_hex(&span.span_id).unwrap_or_default(),
                    parent_span_id: id_hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: SpanKind::from_otlp(span.kind),
                    start_time_unix_nano: span.start_time_unix_nano,
                    end_time_unix_nano: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                    events: span
                        .events
                        .iter()
                        .map(|e| SpanEvent {
                            name: e.name.clone(),
                            attributes: attributes(&e.attributes),
                        })
                        .collect(),
                });
            }
        }
    }

    /// Adds the log records of OTLP `ResourceLogs`.
    pub fn add_resource_logs(&mut self, all: &[ResourceLogs]) {
        for rl in all {
            let resource = rl
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service_name = resource.get("service.name").cloned().unwrap_or_default();
            for record in rl.scope_logs.iter().flat_map(|s| &s.log_records) {
                self.logs.push(LogRecord {
                    service_name: service_name.clone(),
                    trace_id: id_hex(&record.trace_id),
                    span_id: id_hex(&record.span_id),
                    time_unix_nano: if record.time_unix_nano != 0 {
                        record.time_unix_nano
                    } else {
                        record.observed_time_unix_nano
                    },
                    severity_number: record.severity_number,
                    severity_text: record.severity_text.clone(),
                    body: record.body.as_ref().map(render).unwrap_or_default(),
                    attributes: attributes(&record.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }

    /// The trace ID most spans carry (then most logs); `None` for an empty trace.
    pub fn trace_id(&self) -> Option<String> {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for id in self
            .spans
            .iter()
            .map(|s| s.trace_id.as_str())
            .chain(self.logs.iter().filter_map(|l| l.trace_id.as_deref()))
        {
            *counts.entry(id).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(id, _)| id.to_owned())
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.logs.is_empty()
    }
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The trace ID is not 1–32 hex digits.
    #[error("invalid trace id {0:?}: expected up to 32 hex digits")]
    TraceId(String),
    /// The body is not what the backend should send.
    #[error("cannot decode the {what} response")]
    Decode {
        /// Which format.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend answered with an error.
    #[error("{backend} answered {status}: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The HTTP request failed.
    #[error("cannot reach {url}")]
    Http {
        /// What was requested.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// Reading the default store failed.
    #[error("cannot read the telemetry stream {stream}")]
    Store {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A trace ID as 32 lower-case hex digits: case folded, left-padded with zeros (Jaeger v1 and
/// Tempo search shorten IDs).
pub fn normalize_trace_id(id: &str) -> Result<String, ReadError> {
    let id = id.trim();
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ReadError::TraceId(id.to_owned()));
    }
    Ok(format!("{:0>32}", id.to_ascii_lowercase()))
}

/// Lower-case hex of an ID; `None` when empty or all zeros (OTLP's "no ID").
fn id_hex(id: &[u8]) -> Option<String> {
    if id.iter().all(|b| *b == 0) {
        return None;
    }
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(render).unwrap_or_default(),
            )
        })
        .collect()
}

/// An attribute value as a string: strings as they are, scalars in their usual form, arrays and
/// maps as JSON-like text, bytes as hex.
fn render(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => b.iter().map(|b| format!("{b:02x}")).collect(),
        Some(any_value::Value::ArrayValue(a)) => {
            let items: Vec<String> = a.values.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Some(any_value::Value::KvlistValue(kv)) => {
            let items: Vec<String> = kv
                .values
                .iter()
                .map(|kv| {
                    let v = kv.value.as_ref().map(render).unwrap_or_default();
                    format!("{}: {v}", kv.key)
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        // An index into a profile's string table: meaningless without the table.
        Some(any_value::Value::StringValueStrindex(i)) => format!("#{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_normalized() {
        assert_eq!(
            normalize_trace_id("1").unwrap(),
            "00000000000000000000000000000001"
        );
        assert_eq!(
            normalize_trace_id("5B8EFFF798038103D269B633813FC60C").unwrap(),
            "5b8efff798038103d269b633813fc60c"
        );
        assert!(normalize_trace_id("xyz").is_err());
        assert!(normalize_trace_id("").is_err());
        assert!(normalize_trace_id(&"a".repeat(33)).is_err());
    }
}
