//! `/execute`: execution's call into its upstream (inference), traced as a client span.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::Instrument;
use tracing::field::Empty;

use super::{AppState, COMPONENT, RUN_ID_HEADER, TRACEPARENT_HEADER, header_text};
use crate::logging::Level;
use crate::otel;

/// How long `/execute` waits for the upstream.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// Execution's call into inference: `POST <upstream>/predict` with the trace context and run ID,
/// answered with the upstream's JSON, or 502 when there is no upstream or it fails.
pub(super) async fn execute(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(upstream) = &state.trace.upstream else {
        let error = format!("no upstream: {} is not set", otel::ENV_UPSTREAM);
        return (StatusCode::BAD_GATEWAY, Json(json!({ "error": error }))).into_response();
    };
    let url = format!("{upstream}/predict");
    let run_id = state.run_id(&headers);
    let span = tracing::info_span!(
        "upstream call",
        otel.name = "POST /predict",
        otel.kind = "client",
        flotilla.run_id = Empty,
        flotilla.service = state.role.as_str(),
        flotilla.instance = %state.trace.instance,
        flotilla.component = COMPONENT,
        http.request.method = "POST",
        url.full = %url,
        http.response.status_code = Empty,
    );
    if let Some(run_id) = &run_id {
        span.record("flotilla.run_id", run_id.as_str());
    }
    let call = call_upstream(&state.http, &url, &headers, run_id.as_deref());
    match call.instrument(span.clone()).await {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(error) => {
            span.in_scope(|| tracing::warn!(url.full = %url, error = %error, "upstream failed"));
            state.logger.log(
                Level::Warn,
                "upstream failed",
                &[("url", url.into()), ("error", error.as_str().into())],
            );
            (StatusCode::BAD_GATEWAY, Json(json!({ "error": error }))).into_response()
        }
    }
}

/// One request to the upstream, inside the client span.
async fn call_upstream(
    http: &reqwest::Client,
    url: &str,
    incoming: &HeaderMap,
    run_id: Option<&str>,
) -> Result<Value, String> {
    let mut request = http.post(url).timeout(UPSTREAM_TIMEOUT);
    let context = flotilla_telemetry::http_headers();
    if context.is_empty() {
        // Not exporting: no span of ours to name, so pass the caller's context on unchanged.
        if let Some(traceparent) = header_text(incoming, TRACEPARENT_HEADER) {
            request = request.header(TRACEPARENT_HEADER, traceparent);
        }
    }
    for (name, value) in context {
        request = request.header(name, value);
    }
    if let Some(run_id) = run_id {
        request = request.header(RUN_ID_HEADER, run_id);
    }
    let response = request
        .send()
        .await
        .map_err(|e| flotilla_telemetry::error_chain(&e))?;
    let status = response.status();
    tracing::Span::current().record("http.response.status_code", status.as_u16());
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| flotilla_telemetry::error_chain(&e))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} answered no JSON: {e}"))
}
