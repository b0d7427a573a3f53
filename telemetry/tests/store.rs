//! The default store, end to end: telemetry initialised in this process, a real nats-server,
//! spans and logs read back from the stream. One test per file: the global subscriber can be
//! installed once per process.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use flotilla_telemetry::{TelemetryConfig, store};

fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// Spans and logs emitted before and after NATS is attached, across a propagated NATS header,
/// reach the stream on shutdown with matching trace and span IDs, and logs inherit the run ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_reach_the_default_store_with_matching_ids() {
    let server = flotilla_testkit::NatsServer::start().expect("nats-server starts");
    let guard = flotilla_telemetry::init_with(TelemetryConfig {
        resource_attributes: vec![("service.instance.id".into(), "a1".into())],
        ..TelemetryConfig::new("telemetry-test")
    });
    assert!(guard.is_active());

    // Producer side, before NATS is attached: buffered.
    let producer = tracing::info_span!(
        "send cmd",
        otel.kind = "producer",
        flotilla.run_id = "R42",
        flotilla.service = "coordinator",
        flotilla.instance = "c1",
    );
    let mut headers = async_nats::HeaderMap::new();
    {
        let _entered = producer.enter();
        tracing::info!(subject = "flotilla.cmd.inference.a1", "command published");
        flotilla_telemetry::inject(&mut headers);
    }
    let producer_cx = producer.context();
    let trace_id = producer_cx.span().span_context().trace_id().to_string();
    let producer_span_id = producer_cx.span().span_context().span_id().to_string();
    drop(producer);
    let traceparent = headers.get("traceparent").expect("traceparent").as_str();
    assert!(traceparent.contains(&trace_id), "{traceparent}");

    let client = async_nats::connect(server.url()).await.expect("connect");
    guard
        .attach_nats_creating(client.clone(), "flotilla")
        .await
        .expect("attach");

    // Consumer side, after attach: continues the trace from the headers.
    let consumer_span = tracing::info_span!(
        "process cmd",
        otel.kind = "consumer",
        flotilla.run_id = "R42",
        flotilla.service = "inference",
        flotilla.instance = "a1",
    );
    flotilla_telemetry::set_parent(&consumer_span, Some(&headers)).expect("set parent");
    let consumer_span_id = consumer_span
        .context()
        .span()
        .span_context()
        .span_id()
        .to_string();
    async {
        tracing::info!(phase = "backup", "agent handled command");
    }
    .await;
    {
        let _entered = consumer_span.enter();
        tracing::warn!("inside the consumer span");
    }
    drop(consumer_span);

    guard.flush(Duration::from_secs(5)).await.expect("flush");
    let stats = guard.store_stats();
    guard.shutdown().await.expect("shutdown");
    assert!(stats.stored >= 2, "{stats:?}");

    // Read the trace back from the stream.
    let js = jetstream::new(client);
    let stream = js
        .get_stream(store::stream_name("flotilla"))
        .await
        .expect("stream");
    let info = stream.get_info().await.expect("info");
    assert_eq!(info.config.max_age, store::STREAM_MAX_AGE);
    assert_eq!(info.config.max_bytes, store::STREAM_MAX_BYTES);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subjects: vec![
                store::traces_subject("flotilla", &trace_id),
                store::logs_subject("flotilla", &trace_id),
            ],
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.expect("messages");
    let (mut spans, mut logs) = (Vec::new(), Vec::new());
    for _ in 0..pending {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("message within 5 s")
            .expect("stream open")
            .expect("message");
        if msg.subject.as_str().contains(".otel.traces.") {
            let req = ExportTraceServiceRequest::decode(msg.payload.clone()).expect("traces");
            for rs in req.resource_spans {
                let resource = rs.resource.expect("resource").attributes;
                assert_eq!(attr(&resource, "service.name"), Some("telemetry-test"));
                assert_eq!(attr(&resource, "service.instance.id"), Some("a1"));
                spans.extend(rs.scope_spans.into_iter().flat_map(|s| s.spans));
            }
        } else {
            let req = ExportLogsServiceRequest::decode(msg.payload.clone()).expect("logs");
            for rl in req.resource_logs {
                logs.extend(rl.scope_logs.into_iter().flat_map(|s| s.log_records));
            }
        }
    }

    assert_eq!(spans.len(), 2, "{spans:#?}");
    let send = spans
        .iter()
        .find(|s| s.name == "send cmd")
        .expect("producer span");
    let process = spans
        .iter()
        .find(|s| s.name == "process cmd")
        .expect("consumer span");
    assert_eq!(hex(&send.trace_id), trace_id);
    assert_eq!(hex(&send.span_id), producer_span_id);
    assert!(send.parent_span_id.is_empty());
    assert_eq!(hex(&process.trace_id), trace_id);
    assert_eq!(hex(&process.span_id), consumer_span_id);
    assert_eq!(hex(&process.parent_span_id), producer_span_id);
    assert_eq!(process.kind, 5, "consumer");
    assert_eq!(send.kind, 4, "producer");
    assert_eq!(attr(&process.attributes, "flotilla.run_id"), Some("R42"));
    assert_eq!(
        attr(&process.attributes, "flotilla.service"),
        Some("inference")
    );

    // The log emitted outside any entered span has no trace: it is not in this trace.
    assert_eq!(logs.len(), 2, "{logs:#?}");
    let published = logs
        .iter()
        .find(|l| hex(&l.span_id) == producer_span_id)
        .expect("log inside the producer span");
    assert_eq!(hex(&published.trace_id), trace_id);
    assert_eq!(attr(&published.attributes, "flotilla.run_id"), Some("R42"));
    assert_eq!(
        attr(&published.attributes, "flotilla.service"),
        Some("coordinator")
    );
    let handled = logs
        .iter()
        .find(|l| hex(&l.span_id) == consumer_span_id)
        .expect("log inside the consumer span");
    assert_eq!(hex(&handled.trace_id), trace_id);
    assert_eq!(attr(&handled.attributes, "flotilla.run_id"), Some("R42"));
    assert_eq!(attr(&handled.attributes, "flotilla.instance"), Some("a1"));
    assert_eq!(handled.severity_number, 13, "warn");
}
