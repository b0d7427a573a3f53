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
//! telemetry.attach_nats(nats.clone(), "flotilla").await.ok();
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
pub mod propagation;
pub mod scrub;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

pub use detached::OTLP_SHUTDOWN_TIMEOUT;
pub use propagation::{
    HeaderExtractor, HeaderInjector, extract, http_headers, inject, inject_context, set_parent,
};
pub use scrub::{Scrub, Scrubber};
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

/// Installs the global `tracing` subscriber. `default_filter` applies when `RUST_LOG` is unset.
/// The service name defaults to the executable's name; use [`init_with`] to choose it.
///
/// Returns a guard to keep alive for the life of the process; dropping it flushes telemetry.
pub fn init(format: LogFormat, default_filter: &str) -> TelemetryGuard {
    let service_name = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "flotilla".to_owned());
    init_with(TelemetryConfig {
        format,
        default_filter: default_filter.to_owned(),
        ..TelemetryConfig::new(service_name)
    })
}

/// Installs the global `tracing` subscriber with OpenTelemetry spans and logs.
///
/// Exporters: OTLP/HTTP protobuf when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`) is set; the default
/// store when `config.default_store`. `OTEL_SDK_DISABLED=true` turns OpenTelemetry off (stderr
/// logs stay). Only the first call in a process installs anything: later calls (tests that run a
/// binary's `run` twice) return an inactive guard.
pub fn init_with(config: TelemetryConfig) -> TelemetryGuard {
    let fmt_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(&config.default_filter));
    let fmt_layer = tracing_subscriber::fmt::layer()
        .with_writer(scrub::ScrubbedStderr(config.scrubber.clone()))
        .with_ansi(use_colour());
    let fmt_layer: Box<dyn Layer<Registry> + Send + Sync> = match config.format {
        LogFormat::Text => fmt_layer.with_filter(fmt_filter).boxed(),
        LogFormat::Json => fmt_layer
            .json()
            .flatten_event(true)
            .with_filter(fmt_filter)
            .boxed(),
    };
    let mut layers = vec![fmt_layer];
    let mut warnings = Vec::new();

    let otel = if otel_disabled() {
        None
    } else {
        Some(build_otel(&config, &mut warnings))
    };
    if let Some(otel) = &otel {
        let tracer = otel.tracer_provider.tracer("flotilla");
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(otel_filter())
                .boxed(),
        );
        let bridge = opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::builder(
            &otel.logger_provider,
        )
        .with_tracing_span_attributes(
            opentelemetry_appender_tracing::layer::TracingSpanAttributes::allowlist(
                SPAN_FIELDS_ON_LOGS,
            ),
        )
        .build();
        layers.push(bridge.with_filter(otel_filter()).boxed());
    }

    // A second init (tests that call `run` twice in one process) keeps the first subscriber.
    if tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .is_err()
    {
        if let Some(otel) = otel {
            let _ = otel.tracer_provider.shutdown();
            let _ = otel.logger_provider.shutdown();
        }
        return TelemetryGuard { inner: None };
    }
    for warning in warnings {
        tracing::warn!(target: "flotilla_telemetry", "{warning}");
    }
    let Some(otel) = otel else {
        return TelemetryGuard { inner: None };
    };
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    TelemetryGuard { inner: Some(otel) }
}

/// The providers and the store behind a guard.
struct Otel {
    tracer_provider: SdkTracerProvider,
    logger_provider: SdkLoggerProvider,
    sink: Option<Arc<store::Sink>>,
}

fn build_otel(config: &TelemetryConfig, warnings: &mut Vec<String>) -> Otel {
    let resource = resource(config);
    let mut tracer_builder = SdkTracerProvider::builder().with_resource(resource.clone());
    let mut logger_builder = SdkLoggerProvider::builder().with_resource(resource);

    let scrubber = &config.scrubber;
    let sink = config.default_store.then(|| Arc::new(store::Sink::new()));
    if let Some(sink) = &sink {
        tracer_builder = tracer_builder.with_batch_exporter(scrub::ScrubSpans::new(
            store::StoreSpanExporter::new(sink),
            scrubber.clone(),
        ));
        logger_builder = logger_builder.with_batch_exporter(scrub::ScrubLogs::new(
            store::StoreLogExporter::new(sink),
            scrubber.clone(),
        ));
    }
    // The OTLP exporters never hold up a flush, and shutdown waits for them only briefly: a
    // collector that does not answer must not slow a run down (see `detached`).
    let collector = detached::Collector::new(otlp_endpoint());
    if env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let exporter = scrub::ScrubSpans::new(exporter, scrubber.clone());
                let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
                tracer_builder = tracer_builder
                    .with_span_processor(detached::Detached::new(batch, "spans", &collector));
            }
            Err(e) => warnings.push(format!("OTLP span exporter disabled: {e}")),
        }
    }
    if env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") {
        match opentelemetry_otlp::LogExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let exporter = scrub::ScrubLogs::new(exporter, scrubber.clone());
                let batch = opentelemetry_sdk::logs::BatchLogProcessor::builder(exporter).build();
                logger_builder = logger_builder
                    .with_log_processor(detached::Detached::new(batch, "logs", &collector));
            }
            Err(e) => warnings.push(format!("OTLP log exporter disabled: {e}")),
        }
    }
    Otel {
        tracer_provider: tracer_builder.build(),
        logger_provider: logger_builder.build(),
        sink,
    }
}

/// The resource from the `OTEL_*` variables, with the caller's service name and attributes as
/// defaults.
fn resource(config: &TelemetryConfig) -> Resource {
    let detected = Resource::builder().build();
    let mut builder = Resource::builder();
    let service_key = opentelemetry::Key::from_static_str("service.name");
    let named = detected
        .get(&service_key)
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if !named {
        builder = builder.with_service_name(config.service_name.clone());
    }
    let extra: Vec<_> = config
        .resource_attributes
        .iter()
        .filter(|(k, _)| detected.get(&opentelemetry::Key::new(k.clone())).is_none())
        .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone()))
        .collect();
    builder.with_attributes(extra).build()
}

fn otel_filter() -> EnvFilter {
    EnvFilter::try_from_env(ENV_OTEL_FILTER).unwrap_or_else(|_| EnvFilter::new(DEFAULT_OTEL_FILTER))
}

/// The collector's address as the `OTEL_*` variables give it, for messages.
fn otlp_endpoint() -> String {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    .unwrap_or_default()
}

fn env_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

fn otel_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (<https://no-color.org>).
fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stderr().is_terminal()
}

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

/// Keeps telemetry running; flushes and shuts the providers down on [`shutdown`](Self::shutdown)
/// or drop.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    inner: Option<Otel>,
}

impl TelemetryGuard {
    /// True when this guard owns the process's OpenTelemetry pipeline (the first [`init`], with
    /// `OTEL_SDK_DISABLED` unset).
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts publishing to the default store over `client`: creates (or opens) the telemetry
    /// stream under `prefix`, then publishes what was buffered and everything from now on, from
    /// a task on the current Tokio runtime. Calling it again switches to the new client. A no-op
    /// on an inactive guard or without the default store.
    pub async fn attach_nats(
        &self,
        client: async_nats::Client,
        prefix: &str,
    ) -> Result<(), TelemetryError> {
        let Some(sink) = self.inner.as_ref().and_then(|o| o.sink.as_ref()) else {
            return Ok(());
        };
        let js = async_nats::jetstream::new(client);
        store::ensure_stream(&js, prefix).await?;
        sink.attach(js, prefix.to_owned());
        Ok(())
    }

    /// Counters of the default store (zero when it is off).
    pub fn store_stats(&self) -> StoreStats {
        self.inner
            .as_ref()
            .and_then(|o| o.sink.as_ref())
            .map(|s| s.stats())
            .unwrap_or_default()
    }

    /// Exports every finished span and log record now, and waits until the default store has
    /// acknowledged them (at most `timeout`). The OTLP exporters are asked to export too, but
    /// not waited for: they send in the background. Call it after each command in a
    /// long-running agent so `verify` sees the command's telemetry without waiting for the batch
    /// delay.
    pub async fn flush(&self, timeout: Duration) -> Result<(), TelemetryError> {
        let Some(otel) = &self.inner else {
            return Ok(());
        };
        let (tp, lp) = (otel.tracer_provider.clone(), otel.logger_provider.clone());
        // The SDK's flush blocks until its export thread answers.
        let flushed = tokio::task::spawn_blocking(move || flush_providers(&tp, &lp))
            .await
            .unwrap_or_else(|e| {
                Err(TelemetryError::Provider {
                    what: "flush",
                    message: e.to_string(),
                })
            });
        let drained = match &otel.sink {
            Some(sink) => sink.drain(timeout).await,
            None => Ok(()),
        };
        flushed.and(drained)
    }

    /// Flushes, shuts the providers down and waits for the default store (each step bounded by
    /// [`SHUTDOWN_TIMEOUT`], and the OTLP collector by [`OTLP_SHUTDOWN_TIMEOUT`]). Prefer this to dropping the guard inside an async `main`: it works
    /// on any runtime flavour.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        let Some(otel) = self.inner.take() else {
            return Ok(());
        };
        let sink = otel.sink.clone();
        let stopped = tokio::task::spawn_blocking(move || stop_providers(&otel))
            .await
            .unwrap_or_else(|e| {
                Err(TelemetryError::Provider {
                    what: "shutdown",
                    message: e.to_string(),
                })
            });
        let drained = match sink {
            Some(sink) => sink.drain(SHUTDOWN_TIMEOUT).await,
            None => Ok(()),
        };
        stopped.and(drained)
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(otel) = self.inner.take() else {
            return;
        };
        let result = stop_providers(&otel).and_then(|()| match &otel.sink {
            Some(sink) => drain_blocking(sink),
            None => Ok(()),
        });
        match result {
            // The binary never attached NATS: the default store was simply not in use.
            Ok(()) | Err(TelemetryError::NotAttached { .. }) => {}
            Err(e) => eprintln!("telemetry: {}", error_chain(&e)),
        }
    }
}

/// Waits for the store publisher from synchronous code. The publisher runs on a Tokio runtime:
/// on a current-thread runtime blocking here would stall it, so only a multi-thread runtime (via
/// `block_in_place`) or no runtime at all can wait.
fn drain_blocking(sink: &store::Sink) -> Result<(), TelemetryError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| sink.drain_blocking(SHUTDOWN_TIMEOUT))
            }
            _ => match sink.stats().pending() {
                0 => Ok(()),
                pending => Err(TelemetryError::Timeout {
                    pending,
                    timeout: Duration::ZERO,
                }),
            },
        },
        Err(_) => sink.drain_blocking(SHUTDOWN_TIMEOUT),
    }
}

fn flush_providers(tp: &SdkTracerProvider, lp: &SdkLoggerProvider) -> Result<(), TelemetryError> {
    // Spans first: closing a span can emit log records.
    let spans = tp.force_flush().map_err(|e| TelemetryError::Provider {
        what: "span flush",
        message: e.to_string(),
    });
    let logs = lp.force_flush().map_err(|e| TelemetryError::Provider {
        what: "log flush",
        message: e.to_string(),
    });
    spans.and(logs)
}

fn stop_providers(otel: &Otel) -> Result<(), TelemetryError> {
    let flushed = flush_providers(&otel.tracer_provider, &otel.logger_provider);
    let spans = otel
        .tracer_provider
        .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        .map_err(|e| TelemetryError::Provider {
            what: "span shutdown",
            message: e.to_string(),
        });
    let logs = otel
        .logger_provider
        .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        .map_err(|e| TelemetryError::Provider {
            what: "log shutdown",
            message: e.to_string(),
        });
    flushed.and(spans).and(logs)
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
