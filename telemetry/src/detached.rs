//! The OTLP exporters, kept off the caller's path: a collector that accepts connections and
//! never answers costs a run a warning, not its time.
//!
//! The SDK's batch processor exports on a thread of its own, but its `force_flush` and
//! `shutdown` wait for that thread, and the thread waits for the collector (each request is
//! bounded by `OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s by default): 5 s per signal on every flush.
//! Wrapped in [`Detached`], a flush only asks the batch thread to export, from a helper thread,
//! and returns at once; shutdown waits at most [`OTLP_SHUTDOWN_TIMEOUT`], one budget for both
//! signals. The default store has processors of its own and is not affected.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{BatchLogProcessor, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{BatchSpanProcessor, SpanData, SpanProcessor};

/// How long shutdown waits for the OTLP collector to take the last spans and logs, both signals
/// together. A healthy collector takes them in milliseconds; a hung one must not hold up exit.
pub const OTLP_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(250);

/// What the OTLP processors of one pipeline share.
#[derive(Debug)]
pub(crate) struct Collector {
    /// Where the collector is, for the warning.
    endpoint: String,
    /// The warning about a collector that does not answer is given once per process.
    warned: AtomicBool,
    /// Set by the first processor to shut down; the others get what is left.
    shutdown_deadline: OnceLock<Instant>,
}

/// A batch processor whose flush does not wait and whose shutdown is bounded by
/// [`OTLP_SHUTDOWN_TIMEOUT`].
#[derive(Debug)]
pub(crate) struct Detached<P> {
    inner: Arc<P>,
    signal: &'static str,
    collector: Arc<Collector>,
    /// Wakes the helper thread that flushes `inner`; started at the first flush.
    flusher: OnceLock<SyncSender<()>>,
}

// === impl Collector ===

impl Collector {
    pub(crate) fn new(endpoint: String) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            warned: AtomicBool::new(false),
            shutdown_deadline: OnceLock::new(),
        })
    }

    fn warn_once(&self, signal: &str, error: &OTelSdkError) {
        if !self.warned.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                target: "flotilla_telemetry",
                endpoint = %self.endpoint,
                signal,
                error = %error,
                "the OTLP collector does not take telemetry in time; it keeps being sent in the \
                 background and never holds up a run (the default store is not affected)"
            );
        }
    }

    fn shutdown_budget(&self) -> Duration {
        let deadline = *self
            .shutdown_deadline
            .get_or_init(|| Instant::now() + OTLP_SHUTDOWN_TIMEOUT);
        deadline.saturating_duration_since(Instant::now())
    }
}

// === impl Detached ===

impl<P: Flushable> Detached<P> {
    pub(crate) fn new(inner: P, signal: &'static str, collector: &Arc<Collector>) -> Self {
        Self {
            inner: Arc::new(inner),
            signal,
            collector: Arc::clone(collector),
            flusher: OnceLock::new(),
        }
    }

    /// Asks the helper thread for a flush; one already waiting covers this one too.
    fn request_flush(&self) {
        let flusher = self.flusher.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let (inner, collector, signal) = (
                Arc::clone(&self.inner),
                Arc::clone(&self.collector),
                self.signal,
            );
            // A plain thread, not `spawn_blocking`: a runtime waits for its blocking tasks when it
            // shuts down, and this one may be waiting for a collector that never answers.
            let spawned = std::thread::Builder::new()
                .name(format!("flotilla-otlp-{signal}-flush"))
                .spawn(move || flush_on_request(&*inner, &rx, &collector, signal));
            if let Err(e) = spawned {
                tracing::warn!(
                    target: "flotilla_telemetry",
                    error = %e,
                    "no OTLP flush thread; batches go out on their schedule"
                );
            }
            tx
        });
        // Full: a flush is already waiting, and it will take these records too. Disconnected:
        // no flush thread; the batch thread still exports on its schedule.
        let _ = flusher.try_send(());
    }

    fn shutdown_bounded(&self) -> OTelSdkResult {
        let budget = self.collector.shutdown_budget();
        // The SDK logs its own error on a timeout; the warning below says it once, with why.
        let stopped =
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::new(), || {
                self.inner.shutdown_within(budget)
            });
        match stopped {
            Err(e @ OTelSdkError::Timeout(_)) => {
                self.collector.warn_once(self.signal, &e);
                Ok(())
            }
            other => other,
        }
    }
}

fn flush_on_request<P: Flushable>(
    inner: &P,
    requests: &Receiver<()>,
    collector: &Collector,
    signal: &'static str,
) {
    while requests.recv().is_ok() {
        if let Err(e) = inner.flush_now() {
            collector.warn_once(signal, &e);
        }
    }
}

/// The two calls of a batch processor that wait for its export thread.
pub(crate) trait Flushable: Send + Sync + std::fmt::Debug + 'static {
    fn flush_now(&self) -> OTelSdkResult;
    fn shutdown_within(&self, timeout: Duration) -> OTelSdkResult;
}

impl Flushable for BatchSpanProcessor {
    fn flush_now(&self) -> OTelSdkResult {
        SpanProcessor::force_flush(self)
    }

    fn shutdown_within(&self, timeout: Duration) -> OTelSdkResult {
        SpanProcessor::shutdown_with_timeout(self, timeout)
    }
}

impl Flushable for BatchLogProcessor {
    fn flush_now(&self) -> OTelSdkResult {
        LogProcessor::force_flush(self)
    }

    fn shutdown_within(&self, timeout: Duration) -> OTelSdkResult {
        LogProcessor::shutdown_with_timeout(self, timeout)
    }
}

impl SpanProcessor for Detached<BatchSpanProcessor> {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.request_flush();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shutdown_bounded()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called while the provider is built, before any flush thread holds a reference.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            SpanProcessor::set_resource(inner, resource);
        }
    }
}

impl LogProcessor for Detached<BatchLogProcessor> {
    fn emit(&self, data: &mut SdkLogRecord, instrumentation: &InstrumentationScope) {
        self.inner.emit(data, instrumentation);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.request_flush();
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.shutdown_bounded()
    }

    fn event_enabled(
        &self,
        level: opentelemetry::logs::Severity,
        target: &str,
        name: Option<&str>,
    ) -> bool {
        self.inner.event_enabled(level, target, name)
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            LogProcessor::set_resource(inner, resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// Against a real OTLP exporter and a collector that accepts connections and never reads:
    /// each flush returns at once (the SDK's own waits 5 s), shutdown within its budget, and
    /// the one warning is given.
    #[test]
    fn a_collector_that_never_answers_holds_up_neither_flush_nor_shutdown() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Holds every connection open, unread, for the life of the test process.
        std::thread::spawn(move || listener.incoming().flatten().collect::<Vec<_>>());
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("http://{addr}/v1/traces"))
            .build()
            .unwrap();
        let collector = Collector::new(addr.to_string());
        let batch = BatchSpanProcessor::builder(exporter).build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Detached::new(batch, "spans", &collector))
            .build();
        let tracer = provider.tracer("test");
        for _ in 0..3 {
            tracer.in_span("work", |_| {});
            let started = Instant::now();
            provider.force_flush().unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        let started = Instant::now();
        provider
            .shutdown_with_timeout(Duration::from_secs(30))
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < OTLP_SHUTDOWN_TIMEOUT + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(collector.warned.load(Ordering::SeqCst));
    }
}
