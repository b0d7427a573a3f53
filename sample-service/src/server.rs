//! The HTTP service: start-up sequence, routes, request logging and
//! graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::http::HeaderMap;
use axum::middleware;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::ballast;
use crate::config::{Config, Layout, Role};
use crate::logging::{Logger, now_rfc3339};
use crate::otel::TraceSettings;

mod request_log;
mod routes;
#[cfg(test)]
mod tests;
mod upstream;

/// Request header carrying the migration run id, echoed into the logs.
pub const RUN_ID_HEADER: &str = "x-flotilla-run-id";
/// W3C trace context header, echoed into the logs next to the run id.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// `flotilla.component` of the service's own spans, which tells them from its agent's.
const COMPONENT: &str = "service";

/// State shared by all request handlers.
#[derive(Debug)]
pub struct AppState {
    role: Role,
    layout: Layout,
    fail_health: bool,
    request_delay: Duration,
    config_keys: Vec<String>,
    started_at: String,
    logger: Arc<Logger>,
    trace: TraceSettings,
    http: reqwest::Client,
}

impl AppState {
    /// Captures what the handlers need from `config`, and the telemetry settings from the
    /// environment.
    pub fn new(config: &Config, started_at: String, logger: Arc<Logger>) -> Arc<Self> {
        Self::with_trace(config, started_at, logger, TraceSettings::from_env())
    }

    /// [`AppState::new`] with the telemetry settings given.
    fn with_trace(
        config: &Config,
        started_at: String,
        logger: Arc<Logger>,
        trace: TraceSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            role: config.role,
            layout: config.layout,
            fail_health: config.behaviour.fail_health,
            request_delay: Duration::from_millis(config.behaviour.request_delay_ms),
            config_keys: config.config_keys.clone(),
            started_at,
            logger,
            trace,
            http: reqwest::Client::new(),
        })
    }

    /// The run ID to record and forward: the caller's, unless told to drop it.
    fn run_id(&self, headers: &HeaderMap) -> Option<String> {
        header_text(headers, RUN_ID_HEADER).filter(|_| !self.trace.drop_correlation)
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let started_at = now_rfc3339();
    let logger = Arc::new(Logger::open(
        &config.log_file,
        config.role.as_str(),
        config.log_format,
        config.log_level,
    )?);
    // Installed first so that a signal during a slow start is still graceful.
    let mut shutdown = Box::pin(shutdown_signal().context("installing signal handlers")?);

    let mut fields = vec![
        ("layout", config.layout.as_str().into()),
        ("pid", std::process::id().into()),
    ];
    if let Some(environment) = &config.environment {
        fields.push(("environment", environment.as_str().into()));
    }
    fields.push(("secrets", config.secrets.len().into()));
    logger.info("starting", &fields);

    let _ballast = ballast::allocate(config.behaviour.extra_memory_mb)?;
    let delay = Duration::from_millis(config.behaviour.startup_delay_ms);
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        signal = &mut shutdown => {
            logger.info("stopping", &[("signal", signal.into())]);
            return Ok(());
        }
    }

    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let address = listener.local_addr().context("reading bound address")?;
    logger.info("listening", &[("address", address.to_string().into())]);

    let state = AppState::new(&config, started_at, Arc::clone(&logger));
    serve(listener, state, async move {
        let signal = shutdown.await;
        logger.info("stopping", &[("signal", signal.into())]);
    })
    .await
    .context("serving HTTP")
}

/// Serves the routes on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The service's routes, with every request logged.
fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/health", get(routes::health))
        .route("/info", get(routes::info))
        .route("/predict", get(routes::work).post(routes::work))
        .route("/ingest", get(routes::work).post(routes::work));
    if state.role == Role::Execution {
        router = router.route("/execute", get(upstream::execute).post(upstream::execute));
    }
    router
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            request_log::log_request,
        ))
        .with_state(state)
}

/// The first value of header `name`, byte for byte (lossy only if not UTF-8).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Completes with the signal's name on the first SIGTERM or SIGINT.
fn shutdown_signal() -> io::Result<impl Future<Output = &'static str>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}
