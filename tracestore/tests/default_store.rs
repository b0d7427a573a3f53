//! Round trip through the default store: telemetry initialised in this process publishes to a
//! real nats-server, `default_store::fetch` reads the trace back and `verify` accepts it.
//! One test per file: the global subscriber can be installed once per process.

use flotilla_telemetry::TelemetryConfig;
use flotilla_tracestore::{LogSource, SpanKind, default_store, verify};
use opentelemetry::trace::TraceContextExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A coordinator span, a dispatch over NATS headers and two agents' phase spans and logs come
/// back as one correlated trace; a service that was not there is reported missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_back_from_the_default_store_and_verifies() {
    let server = flotilla_testkit::NatsServer::start().expect("nats-server starts");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let guard = flotilla_telemetry::init_with(TelemetryConfig::new("tracestore-test"));
    guard
        .attach_nats_creating(client.clone(), "flotilla")
        .await
        .expect("attach");

    let run = "01RUNTEST";
    let root = tracing::info_span!(
        "migrate",
        flotilla.run_id = run,
        flotilla.service = "coordinator",
        flotilla.instance = "cli",
    );
    let trace_id = root.context().span().span_context().trace_id().to_string();
    async {
        tracing::info!("run started");
        for service in ["inference", "execution"] {
            let mut headers = async_nats::HeaderMap::new();
            let send = tracing::info_span!(
                "send flotilla.cmd",
                otel.kind = "producer",
                flotilla.run_id = run,
                flotilla.service = "coordinator",
                flotilla.instance = "cli",
            );
            send.in_scope(|| {
                flotilla_telemetry::inject(&mut headers);
                tracing::info!(service, "command sent");
            });
            // The agent's side.
            let process = tracing::info_span!(
                "process flotilla.cmd",
                otel.kind = "consumer",
                flotilla.run_id = run,
                flotilla.service = service,
                flotilla.instance = "a1",
            );
            flotilla_telemetry::set_parent(&process, Some(&headers)).expect("parent");
            async {
                let phase = tracing::info_span!(
                    "backup",
                    flotilla.run_id = run,
                    flotilla.service = service,
                    flotilla.instance = "a1",
                );
                phase.in_scope(|| tracing::info!("backup done"));
            }
            .instrument(process)
            .await;
        }
    }
    .instrument(root)
    .await;
    guard.shutdown().await.expect("shutdown");

    let trace = default_store::fetch(&client, "flotilla", &trace_id)
        .await
        .expect("fetch");
    assert_eq!(trace.log_source, LogSource::Records);
    // migrate + 2 × (send, process, backup)
    assert_eq!(trace.spans.len(), 7, "{trace:#?}");
    assert_eq!(trace.logs.len(), 5, "{trace:#?}");
    assert!(trace.spans.iter().all(|s| s.trace_id == trace_id));
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.service_name == "tracestore-test")
    );
    let consumers = trace
        .spans
        .iter()
        .filter(|s| s.kind == SpanKind::Consumer)
        .count();
    assert_eq!(consumers, 2);

    let report = verify(&trace, run, &[("inference", "a1"), ("execution", "a1")]);
    assert!(
        report.ok,
        "{}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    assert_eq!(report.trace_id, trace_id);
    assert_eq!(report.roots.len(), 1);
    assert_eq!(report.roots[0].name, "migrate");
    for s in &report.services {
        assert_eq!((s.spans, s.logs), (2, 1), "{s:?}");
    }

    let report = verify(&trace, run, &[("inference", "a1"), ("risk", "a1")]);
    assert!(!report.ok);
    assert_eq!(report.services[1].problems, ["no spans", "no log records"]);

    // An unknown trace reads as empty (not yet exported), not as an error.
    let missing = default_store::fetch(&client, "flotilla", "abc")
        .await
        .expect("fetch unknown");
    assert!(missing.is_empty());
}
