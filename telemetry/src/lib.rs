//! Telemetry shared by the Flotilla binaries.
//!
//! - [`init`] / [`init_with`] install the global `tracing` subscriber: human logs on stderr (JSON
//!   on request, `RUST_LOG` honoured), plus OpenTelemetry spans (`tracing-opentelemetry`) and log
//!   records (`opentelemetry-appender-tracing`) that carry trace and span IDs.
//! - Exporters: OTLP/HTTP protobuf when the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables are
//!   set, and the default store ([`store`]): OTLP protobuf published to a JetStream stream once a
//!   NATS client is attached with [`TelemetryGuard::attach_nats`].
//! - [`propagation`]: W3C trace context through NATS headers ([`inject`], [`extract`],
//!   [`set_parent`]).
//! - [`TelemetryGuard`] flushes and shuts the providers down, so a short CLI run loses no span.
//!   Neither ever waits for an OTLP collector beyond [`OTLP_SHUTDOWN_TIMEOUT`] at exit: one
//!   that accepts connections and never answers costs a warning, not the run's time.
//!
//! ```no_run
//! # async fn example(nats: async_nats::Client, msg: async_nats::Message) {
//! use flotilla_telemetry::{LogFormat, TelemetryConfig};
//! use tracing::Instrument;
//!
//! let telemetry = flotilla_telemetry::init_with(TelemetryConfig {
//!     format: LogFormat::Json,
//!     ..TelemetryConfig::new("flotilla-agent")
//! });
//! telemetry.attach_nats(nats.clone(), "flotilla").await;
//!
//! // Producer: the current span's context goes into the message headers.
//! let mut headers = async_nats::HeaderMap::new();
//! flotilla_telemetry::inject(&mut headers);
//!
//! // Consumer: parent the handler span on the message, before entering it.
//! let span = tracing::info_span!("process flotilla.cmd", otel.kind = "consumer",
//!     flotilla.run_id = "R1", flotilla.service = "inference", flotilla.instance = "a1");
//! let _ = flotilla_telemetry::set_parent(&span, msg.headers.as_ref());
//! async { tracing::info!("handled") }.instrument(span).await;
//!
//! telemetry.shutdown().await.ok();
//! # }
//! ```

#![warn(missing_docs)]

mod detached;
mod error;
mod guard;
pub mod propagation;
pub mod scrub;
mod setup;
pub mod store;

use std::time::Duration;

pub use detached::OTLP_SHUTDOWN_TIMEOUT;
pub use error::{TelemetryError, error_chain};
pub use guard::TelemetryGuard;
pub use propagation::{
    HeaderExtractor, HeaderInjector, extract, http_headers, inject, inject_context, set_parent,
};
pub use scrub::{Scrub, Scrubber};
pub use setup::{init, init_with};
pub use store::StoreStats;

/// Span and log attribute: the run's correlation ID. Every span and log record of a run carries it.
pub const RUN_ID_ATTR: &str = "flotilla.run_id";
/// Span and log attribute: the Flotilla service the record is about.
pub const SERVICE_ATTR: &str = "flotilla.service";
/// Span and log attribute: the instance of that service.
pub const INSTANCE_ATTR: &str = "flotilla.instance";

/// Span fields copied onto every log record emitted inside the span (or its children), so a log
/// line needs no fields of its own to be correlated.
const SPAN_FIELDS_ON_LOGS: [&str; 3] = [RUN_ID_ATTR, SERVICE_ATTR, INSTANCE_ATTR];

/// What is exported through OpenTelemetry when `FLOTILLA_OTEL_FILTER` is unset. The exporters'
/// own I/O (`hyper`, `reqwest`, `async_nats`, this crate's store publisher) is kept out, or
/// exporting a batch would log, and that log would be exported in turn.
pub const DEFAULT_OTEL_FILTER: &str = "info,hyper=off,hyper_util=off,h2=off,reqwest=off,tonic=off,\
     opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,async_nats=off,\
     flotilla_telemetry=off";

/// Environment variable overriding [`DEFAULT_OTEL_FILTER`] (same syntax as `RUST_LOG`).
pub const ENV_OTEL_FILTER: &str = "FLOTILLA_OTEL_FILTER";

/// How long shutdown may spend flushing the providers, and again publishing to the store.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init_with`] sets up.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` sets one.
    pub service_name: String,
    /// How log lines are written on stderr.
    pub format: LogFormat,
    /// The stderr filter when `RUST_LOG` is unset.
    pub default_filter: String,
    /// Whether spans and logs go to the default store (JetStream, once NATS is attached).
    pub default_store: bool,
    /// Extra resource attributes (e.g. `service.instance.id`); the `OTEL_*` variables win.
    pub resource_attributes: Vec<(String, String)>,
    /// Applied to every log line, span and log record before it leaves the process (the
    /// agent's secret redactor); `None` writes them as they are.
    pub scrubber: Option<Scrubber>,
}

impl TelemetryConfig {
    /// Text logs, `info` on stderr, the default store on, no extra resource attributes.
    pub fn new(service_name: impl Into<String>) -> Self {
        Self {
            service_name: service_name.into(),
            format: LogFormat::Text,
            default_filter: "info".to_owned(),
            default_store: true,
            resource_attributes: Vec::new(),
            scrubber: None,
        }
    }
}
