//! A short CLI run that just drops its guard at the end of an async `main` (multi-thread
//! runtime) loses no span: the drop flushes the providers and waits for the store.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use flotilla_telemetry::{LogFormat, store};

/// The last span of the run, closed just before the guard drops, is in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_guard_stores_the_last_span() {
    let server = flotilla_testkit::NatsServer::start().expect("nats-server starts");
    let guard = flotilla_telemetry::init(LogFormat::Json, "warn");
    let client = async_nats::connect(server.url()).await.expect("connect");
    guard
        .attach_nats_creating(client.clone(), "flotilla")
        .await
        .expect("attach");

    let last = tracing::info_span!("last span of the run");
    let trace_id = last.context().span().span_context().trace_id().to_string();
    drop(last);
    drop(guard);

    let js = jetstream::new(client);
    let stream = js
        .get_stream(store::stream_name("flotilla"))
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: store::traces_subject("flotilla", &trace_id),
            ..Default::default()
        })
        .await
        .expect("consumer");
    assert_eq!(consumer.cached_info().num_pending, 1);
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        consumer.messages().await.expect("messages").next(),
    )
    .await
    .expect("message within 5 s")
    .expect("stream open")
    .expect("message");
    let req = ExportTraceServiceRequest::decode(msg.payload.clone()).expect("decode");
    let span = &req.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "last span of the run");
    // `init` names the service after the executable (here the test binary).
    let resource = req.resource_spans[0].resource.as_ref().expect("resource");
    assert!(
        resource
            .attributes
            .iter()
            .any(|kv| kv.key == "service.name")
    );
}
