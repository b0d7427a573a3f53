//! Jaeger's api_v3 over HTTP: `GET /api/v3/traces/{trace_id}` answers `{"result": TracesData}`
//! in standard OTLP/JSON (hex IDs, integer enums). Jaeger keeps no logs, so the trace's log
//! evidence is its span events ([`LogSource::SpanEvents`]).

use opentelemetry_proto::tonic::trace::v1::TracesData;
use serde::Deserialize;

use crate::{LogSource, ReadError, Trace, normalize_trace_id};

#[derive(Deserialize)]
struct GetTraceResponse {
    result: Option<TracesData>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "httpCode", default)]
    http_code: u16,
    #[serde(default)]
    message: String,
}

/// Parses a `GET /api/v3/traces/{id}` body (also a search body: every trace in it is kept).
pub fn parse_v3(body: &[u8]) -> Result<Trace, ReadError> {
    let response: GetTraceResponse =
        serde_json::from_slice(body).map_err(|e| ReadError::Decode {
            what: "Jaeger api_v3",
            source: e.into(),
        })?;
    if let Some(error) = response.error {
        return Err(ReadError::Backend {
            backend: "Jaeger",
            status: error.http_code,
            message: error.message,
        });
    }
    let mut trace = Trace {
        log_source: LogSource::SpanEvents,
        ..Trace::default()
    };
    if let Some(result) = response.result {
        trace.add_resource_spans(&result.resource_spans);
    }
    Ok(trace)
}

/// Fetches one trace from Jaeger's query service at `base_url` (e.g. `http://jaeger:16686`).
/// A trace Jaeger does not have (404) gives an empty [`Trace`].
pub async fn fetch(base_url: &str, trace_id: &str) -> Result<Trace, ReadError> {
    let trace_id = normalize_trace_id(trace_id)?;
    let missing = Trace {
        log_source: LogSource::SpanEvents,
        ..Trace::default()
    };
    crate::http::get_trace(
        "Jaeger",
        base_url,
        &format!("/api/v3/traces/{trace_id}"),
        "application/json",
        missing,
        |body, _| parse_v3(body),
    )
    .await
}
