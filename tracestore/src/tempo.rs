//! Grafana Tempo: `GET /api/v2/traces/<id>` with `Accept: application/protobuf` answers a
//! protobuf `TraceByIDResponse` whose `trace` is wire-compatible with OTLP `TracesData`. Tempo's
//! JSON (base64 IDs, enum names) is read too. Tempo keeps no logs: the trace's log evidence is its
//! span events ([`LogSource::SpanEvents`]).

use base64::Engine as _;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message as _;
use serde_json::Value;

use crate::{LogSource, ReadError, Trace, normalize_trace_id};

/// Tempo's `tempopb.TraceByIDResponse` (fields we read; `metrics` is skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TraceByIdResponse {
    /// The trace; wire-compatible with OTLP `TracesData`.
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TracesData>,
    /// 0 = complete, 1 = partial.
    #[prost(int32, tag = "3")]
    pub status: i32,
    /// Why it is partial.
    #[prost(string, tag = "4")]
    pub message: String,
}

fn empty() -> Trace {
    Trace {
        log_source: LogSource::SpanEvents,
        ..Trace::default()
    }
}

/// Parses a `/api/v2/traces/<id>` protobuf body. Tempo answers an unknown trace with an empty
/// one, which gives an empty [`Trace`].
pub fn parse_protobuf(body: &[u8]) -> Result<Trace, ReadError> {
    let response = TraceByIdResponse::decode(body).map_err(|e| ReadError::Decode {
        what: "Tempo v2 protobuf",
        source: e.into(),
    })?;
    let mut trace = empty();
    if let Some(data) = response.trace {
        trace.add_resource_spans(&data.resource_spans);
    }
    Ok(trace)
}

/// Parses a `/api/traces/<id>` (v1) protobuf body: a bare `tempopb.Trace`.
pub fn parse_protobuf_v1(body: &[u8]) -> Result<Trace, ReadError> {
    let data = TracesData::decode(body).map_err(|e| ReadError::Decode {
        what: "Tempo v1 protobuf",
        source: e.into(),
    })?;
    let mut trace = empty();
    trace.add_resource_spans(&data.resource_spans);
    Ok(trace)
}

/// Parses Tempo's JSON: a v2 body (`{"trace": {"resourceSpans": …}}`), a v1 body
/// (`{"batches": …}`) or a bare trace. See [`json_to_traces_data`].
pub fn parse_json(body: &[u8]) -> Result<Trace, ReadError> {
    let data = json_to_traces_data(body)?;
    let mut trace = empty();
    trace.add_resource_spans(&data.resource_spans);
    Ok(trace)
}

/// Tempo's JSON as OTLP `TracesData`. Tempo writes IDs in base64 and enums by name, which
/// standard OTLP/JSON does not allow, so both are converted first.
pub fn json_to_traces_data(body: &[u8]) -> Result<TracesData, ReadError> {
    let decode = |e: Box<dyn std::error::Error + Send + Sync>| ReadError::Decode {
        what: "Tempo JSON",
        source: e,
    };
    let mut value: Value = serde_json::from_slice(body).map_err(|e| decode(e.into()))?;
    let mut data = match value.get_mut("trace") {
        Some(trace) => trace.take(),
        None => value,
    };
    if let Some(obj) = data.as_object_mut()
        && let Some(batches) = obj.remove("batches")
    {
        obj.insert("resourceSpans".to_owned(), batches);
    }
    to_otlp_json(&mut data).map_err(|e| decode(e.into()))?;
    serde_json::from_value(data).map_err(|e| decode(e.into()))
}

/// Rewrites Tempo's jsonpb into OTLP/JSON: base64 IDs to hex, enum names to numbers.
fn to_otlp_json(value: &mut Value) -> Result<(), String> {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match (key.as_str(), &*v) {
                    ("traceId" | "spanId" | "parentSpanId", Value::String(s)) => {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(s)
                            .map_err(|e| format!("{key} {s:?} is not base64: {e}"))?;
                        *v = Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect());
                    }
                    ("kind", Value::String(s)) => {
                        *v = Value::from(span_kind(s).ok_or_else(|| format!("unknown kind {s}"))?);
                    }
                    ("code", Value::String(s)) => {
                        *v = Value::from(
                            status_code(s).ok_or_else(|| format!("unknown status code {s}"))?,
                        );
                    }
                    _ => to_otlp_json(v)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(to_otlp_json),
        _ => Ok(()),
    }
}

fn span_kind(name: &str) -> Option<i32> {
    Some(match name {
        "SPAN_KIND_UNSPECIFIED" => 0,
        "SPAN_KIND_INTERNAL" => 1,
        "SPAN_KIND_SERVER" => 2,
        "SPAN_KIND_CLIENT" => 3,
        "SPAN_KIND_PRODUCER" => 4,
        "SPAN_KIND_CONSUMER" => 5,
        _ => return None,
    })
}

fn status_code(name: &str) -> Option<i32> {
    Some(match name {
        "STATUS_CODE_UNSET" => 0,
        "STATUS_CODE_OK" => 1,
        "STATUS_CODE_ERROR" => 2,
        _ => return None,
    })
}

/// Fetches one trace from Tempo at `base_url` (e.g. `http://tempo:3200`). An unknown trace
/// gives an empty [`Trace`] (Tempo v2 answers 200 with an empty trace; older ones 404).
pub async fn fetch(base_url: &str, trace_id: &str) -> Result<Trace, ReadError> {
    let trace_id = normalize_trace_id(trace_id)?;
    // Tempo matches the substring `application/protobuf`: `application/x-protobuf` gets JSON.
    crate::http::get_trace(
        "Tempo",
        base_url,
        &format!("/api/v2/traces/{trace_id}"),
        "application/protobuf",
        empty(),
        |body, json| {
            if json {
                parse_json(body)
            } else {
                parse_protobuf(body)
            }
        },
    )
    .await
}
