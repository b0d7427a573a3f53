//! The middleware that logs every request and makes it a server span.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{AppState, COMPONENT, RUN_ID_HEADER, TRACEPARENT_HEADER, header_text};
use crate::otel;

/// Logs method, path and status of every request (unknown routes included),
/// plus the run id and trace context when the caller sent them. Each request is also a server
/// span, child of the caller's `traceparent`, and its log line a log record of that span.
pub(super) async fn log_request(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let run_id = header_text(request.headers(), RUN_ID_HEADER);
    let traceparent = header_text(request.headers(), TRACEPARENT_HEADER);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {path}"),
        otel.kind = "server",
        flotilla.run_id = Empty,
        flotilla.service = state.role.as_str(),
        flotilla.instance = %state.trace.instance,
        flotilla.component = COMPONENT,
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = Empty,
    );
    if let Some(run_id) = state.run_id(request.headers()) {
        span.record("flotilla.run_id", run_id.as_str());
    }
    if let Some(parent) = otel::remote_context(request.headers()) {
        // Only fails when telemetry is off and the span is disabled anyway.
        let _ = span.set_parent(parent);
    }

    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    span.in_scope(|| {
        tracing::info!(http.request.method = %method, url.path = %path,
            http.response.status_code = status, "request");
    });

    let mut fields = vec![
        ("method", method.into()),
        ("path", path.into()),
        ("status", status.into()),
    ];
    if let Some(run_id) = run_id {
        fields.push(("run_id", run_id.into()));
    }
    if let Some(traceparent) = traceparent {
        fields.push(("traceparent", traceparent.into()));
    }
    state.logger.info("request", &fields);
    response
}
