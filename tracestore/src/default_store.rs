//! Reads a trace from the default store: the telemetry stream that `flotilla-telemetry`
//! publishes to (see `flotilla_telemetry::store` for the subjects).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

use flotilla_telemetry::store;

use crate::{LogSource, ReadError, Trace, normalize_trace_id};

/// How long to wait for each stored message once the server said it has them.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every span and log record of `trace_id` stored under `prefix` (`flotilla` by default).
/// An unknown trace gives an empty [`Trace`], so callers can poll for late telemetry.
pub async fn fetch(
    client: &async_nats::Client,
    prefix: &str,
    trace_id: &str,
) -> Result<Trace, ReadError> {
    let trace_id = normalize_trace_id(trace_id)?;
    let name = store::stream_name(prefix);
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| ReadError::Store {
        stream: name.clone(),
        source: e,
    };
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(&name).await.map_err(|e| failed(e.into()))?;
    let traces = store::traces_subject(prefix, &trace_id);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: vec![traces.clone(), store::logs_subject(prefix, &trace_id)],
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| failed(e.into()))?;
    let pending = consumer.cached_info().num_pending;
    let mut trace = Trace {
        log_source: LogSource::Records,
        ..Trace::default()
    };
    if pending == 0 {
        return Ok(trace);
    }
    let mut messages = consumer.messages().await.map_err(|e| failed(e.into()))?;
    for _ in 0..pending {
        let msg = tokio::time::timeout(MESSAGE_TIMEOUT, messages.next())
            .await
            .map_err(|_| failed("timed out reading stored telemetry".into()))?
            .ok_or_else(|| failed("the consumer ended early".into()))?
            .map_err(|e| failed(e.into()))?;
        if msg.subject.as_str() == traces {
            let req = ExportTraceServiceRequest::decode(msg.payload.clone()).map_err(|e| {
                ReadError::Decode {
                    what: "stored spans",
                    source: e.into(),
                }
            })?;
            trace.add_resource_spans(&req.resource_spans);
        } else {
            let req = ExportLogsServiceRequest::decode(msg.payload.clone()).map_err(|e| {
                ReadError::Decode {
                    what: "stored logs",
                    source: e.into(),
                }
            })?;
            trace.add_resource_logs(&req.resource_logs);
        }
    }
    Ok(trace)
}
