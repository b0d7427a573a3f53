//! Installing the global subscriber: stderr logs, and the OpenTelemetry providers with their
//! exporters (the default store, OTLP/HTTP when the `OTEL_*` variables ask for it).

use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::guard::{Otel, TelemetryGuard};
use crate::{
    DEFAULT_OTEL_FILTER, ENV_OTEL_FILTER, LogFormat, SPAN_FIELDS_ON_LOGS, TelemetryConfig,
    detached, scrub, store,
};

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
