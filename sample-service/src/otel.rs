//! The service's own spans and logs, and the trace context it takes from and gives to HTTP
//! requests.
//!
//! Nothing is exported unless `FLOTILLA_SAMPLE_NATS_URL` is set: then spans and log records go,
//! batched, to the default store in that NATS (as the agents' do), and are flushed when the
//! service stops.

use std::sync::Arc;

use axum::http::HeaderMap;
use flotilla_telemetry::{TelemetryConfig, TelemetryGuard};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// NATS server to export spans and logs to; unset or empty: export nothing.
pub const ENV_NATS_URL: &str = "FLOTILLA_SAMPLE_NATS_URL";
/// The instance this process plays (`flotilla.instance`), `a` by default.
pub const ENV_INSTANCE: &str = "FLOTILLA_SAMPLE_INSTANCE";
/// Base URL of the service `/execute` calls (inference's), e.g. `http://127.0.0.1:8080`.
pub const ENV_UPSTREAM: &str = "FLOTILLA_SAMPLE_UPSTREAM";
/// Test knob: `1` makes the service ignore the run ID, as a service that loses the correlation
/// header would: its spans and logs carry no `flotilla.run_id` and it forwards none.
pub const ENV_DROP_CORRELATION: &str = "FLOTILLA_SAMPLE_DROP_CORRELATION";

/// `service.name` of the exported telemetry.
const SERVICE_NAME: &str = "flotilla-sample";
const DEFAULT_INSTANCE: &str = "a";

/// What the request handlers need to know about telemetry, read from the environment.
#[derive(Clone, Debug, Default)]
pub struct TraceSettings {
    /// `flotilla.instance` of every span.
    pub instance: String,
    /// Ignore `x-flotilla-run-id` (see [`ENV_DROP_CORRELATION`]).
    pub drop_correlation: bool,
    /// Base URL of the upstream service, without a trailing `/`.
    pub upstream: Option<String>,
}

impl TraceSettings {
    /// Reads [`ENV_INSTANCE`], [`ENV_DROP_CORRELATION`] and [`ENV_UPSTREAM`].
    pub fn from_env() -> Self {
        Self {
            instance: env(ENV_INSTANCE).unwrap_or_else(|| DEFAULT_INSTANCE.to_owned()),
            drop_correlation: env(ENV_DROP_CORRELATION).is_some_and(|v| v != "0"),
            upstream: env(ENV_UPSTREAM).map(|u| u.trim_end_matches('/').to_owned()),
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The service's telemetry pipeline, while it exports.
pub struct Telemetry {
    guard: Arc<TelemetryGuard>,
    attaching: tokio::task::JoinHandle<()>,
}

/// Starts exporting when [`ENV_NATS_URL`] is set; call it on the Tokio runtime (a blocking
/// task will do: the set-up is synchronous). NATS is connected in the background, so that
/// start-up does not wait for it (records are buffered until then). A NATS server that cannot
/// be reached costs the telemetry, not the service: a warning on stderr, and the service runs on.
pub fn start() -> Option<Telemetry> {
    let url = env(ENV_NATS_URL)?;
    let guard = Arc::new(flotilla_telemetry::init_with(TelemetryConfig {
        // stdout and the log file are the service's own log; stderr only gets problems.
        default_filter: "warn".to_owned(),
        ..TelemetryConfig::new(SERVICE_NAME)
    }));
    let attaching = tokio::spawn({
        let guard = Arc::clone(&guard);
        async move {
            // The demo's open server lets the service create the telemetry stream.
            // One URL or several, comma-separated, as the agents take them.
            let servers: Result<Vec<async_nats::ServerAddr>, _> =
                url.split(',').map(|u| u.trim().parse()).collect();
            let connected = match servers {
                Ok(servers) => async_nats::connect(servers)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let attached = match connected {
                Ok(client) => guard
                    .attach_nats_creating(client, flotilla_schemas::subjects::DEFAULT_PREFIX)
                    .await
                    .map_err(|e| flotilla_telemetry::error_chain(&e)),
                Err(e) => Err(e),
            };
            if let Err(reason) = attached {
                eprintln!("flotilla-sample: warning: not exporting telemetry to {url}: {reason}");
            }
        }
    });
    Some(Telemetry { guard, attaching })
}

impl Telemetry {
    /// Flushes what is left to the store and shuts the pipeline down; on a graceful stop.
    pub async fn shutdown(self) -> Result<(), flotilla_telemetry::TelemetryError> {
        // Still connecting: give up on it, or the guard stays shared.
        self.attaching.abort();
        let _ = self.attaching.await;
        match Arc::try_unwrap(self.guard) {
            Ok(guard) => match guard.shutdown().await {
                // NATS was never reached, which `start` already said.
                Err(flotilla_telemetry::TelemetryError::NotAttached { .. }) => Ok(()),
                other => other,
            },
            Err(_) => Ok(()),
        }
    }
}

/// Reads W3C trace context from HTTP request headers.
struct HttpExtractor<'a>(&'a HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The caller's trace context (`traceparent`, `tracestate`), if it sent a valid one.
pub fn remote_context(headers: &HeaderMap) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `traceparent` header becomes the parent context; garbage or nothing gives none.
    #[test]
    fn traceparent_is_read_from_http_headers() {
        let mut headers = HeaderMap::new();
        assert!(remote_context(&headers).is_none());
        headers.insert("traceparent", "garbage".parse().unwrap());
        assert!(remote_context(&headers).is_none());
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let cx = remote_context(&headers).expect("a parent");
        let span = cx.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            span.span_context().span_id().to_string(),
            "00f067aa0ba902b7"
        );
    }
}
