//! The guard that keeps telemetry running: attaching NATS, flushing, shutting down.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::{SHUTDOWN_TIMEOUT, StoreStats, TelemetryError, error_chain, store};

/// The providers and the store behind a guard.
pub(crate) struct Otel {
    pub(crate) tracer_provider: SdkTracerProvider,
    pub(crate) logger_provider: SdkLoggerProvider,
    pub(crate) sink: Option<Arc<store::Sink>>,
}

/// Keeps telemetry running; flushes and shuts the providers down on [`shutdown`](Self::shutdown)
/// or drop.
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    pub(crate) inner: Option<Otel>,
}

impl TelemetryGuard {
    /// True when this guard owns the process's OpenTelemetry pipeline (the first
    /// [`init`](crate::init), with `OTEL_SDK_DISABLED` unset).
    pub fn is_active(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts publishing to the default store over `client`: what was buffered and everything
    /// from now on, from a task on the current Tokio runtime, once the telemetry stream under
    /// `prefix` exists. It is not created here (an agent may not create streams): while it is
    /// missing, a background task waits for it (logging once) and messages wait in the bounded
    /// buffer. Calling it again switches to the new client. A no-op on an inactive guard or
    /// without the default store.
    pub async fn attach_nats(&self, client: async_nats::Client, prefix: &str) {
        self.attach_nats_in(client, prefix, None).await;
    }

    /// [`attach_nats`](Self::attach_nats) to the stream in the JetStream `domain` (an agent
    /// of a leaf node: its hub's).
    pub async fn attach_nats_in(
        &self,
        client: async_nats::Client,
        prefix: &str,
        domain: Option<&str>,
    ) {
        let Some(sink) = self.inner.as_ref().and_then(|o| o.sink.as_ref()) else {
            return;
        };
        let (js, sink, prefix) = (
            flotilla_bus::jetstream(client, domain),
            Arc::clone(sink),
            prefix.to_owned(),
        );
        let name = store::stream_name(&prefix);
        if js.get_stream(&name).await.is_ok() {
            sink.attach(js, prefix);
            return;
        }
        tokio::spawn(async move {
            flotilla_bus::provision::wait_for(
                "waiting for the telemetry stream (run `flotilla setup`); spans and logs wait in memory",
                "the telemetry stream is there; publishing spans and logs",
                || js.get_stream(&name),
            )
            .await;
            sink.attach(js, prefix);
        });
    }

    /// [`attach_nats`](Self::attach_nats) for a client allowed to create the telemetry stream
    /// (a demo service on an open server, a test): creates it first when it is missing.
    pub async fn attach_nats_creating(
        &self,
        client: async_nats::Client,
        prefix: &str,
    ) -> Result<(), TelemetryError> {
        store::ensure_stream(&async_nats::jetstream::new(client.clone()), prefix).await?;
        self.attach_nats(client, prefix).await;
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
            .unwrap_or_else(|e| Err(provider_error("flush")(e)));
        let drained = match &otel.sink {
            Some(sink) => sink.drain(timeout).await,
            None => Ok(()),
        };
        flushed.and(drained)
    }

    /// Flushes, shuts the providers down and waits for the default store (each step bounded by
    /// [`SHUTDOWN_TIMEOUT`], and the OTLP collector by
    /// [`OTLP_SHUTDOWN_TIMEOUT`](crate::OTLP_SHUTDOWN_TIMEOUT)). Prefer this to dropping the guard
    /// inside an async `main`: it works on any runtime flavour.
    pub async fn shutdown(mut self) -> Result<(), TelemetryError> {
        let Some(otel) = self.inner.take() else {
            return Ok(());
        };
        let sink = otel.sink.clone();
        let stopped = tokio::task::spawn_blocking(move || stop_providers(&otel))
            .await
            .unwrap_or_else(|e| Err(provider_error("shutdown")(e)));
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
    let spans = tp.force_flush().map_err(provider_error("span flush"));
    let logs = lp.force_flush().map_err(provider_error("log flush"));
    spans.and(logs)
}

fn stop_providers(otel: &Otel) -> Result<(), TelemetryError> {
    let flushed = flush_providers(&otel.tracer_provider, &otel.logger_provider);
    let spans = otel
        .tracer_provider
        .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        .map_err(provider_error("span shutdown"));
    let logs = otel
        .logger_provider
        .shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        .map_err(provider_error("log shutdown"));
    flushed.and(spans).and(logs)
}

/// A provider's failure (or its blocking task's) at `what`, as a [`TelemetryError`].
fn provider_error<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> TelemetryError {
    move |e| TelemetryError::Provider {
        what,
        message: e.to_string(),
    }
}
