//! The endpoint itself: axum on a current-thread runtime of its own thread.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use super::{Ops, OpsError};

/// The media type of OpenMetrics text, what `prometheus-client` writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `address` now (a port in use fails the start) and serves on a new thread until
/// `shutdown`.
pub(super) fn spawn(
    ops: Ops,
    address: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, OpsError> {
    let bind = |source| OpsError::Bind { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    std::thread::Builder::new()
        .name("flotilla-ops-http".into())
        .spawn(move || serve(ops, listener, shutdown))
        .map_err(OpsError::Thread)?;
    tracing::info!(http.listen = %bound, "operations endpoint listening (/healthz, /readyz, /metrics)");
    Ok(bound)
}

fn serve(ops: Ops, listener: std::net::TcpListener, shutdown: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "no runtime for the operations endpoint");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "operations endpoint not served");
                return;
            }
        };
        let served = axum::serve(listener, router(ops))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "operations endpoint stopped");
        }
    });
}

fn router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops)
}

type State = axum::extract::State<Ops>;

async fn healthz(axum::extract::State(ops): State) -> impl IntoResponse {
    match ops.not_alive() {
        None => (StatusCode::OK, "ok\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(axum::extract::State(ops): State) -> impl IntoResponse {
    match ops.not_ready() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics(axum::extract::State(ops): State) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS)], ops.metrics_text())
}
