//! One trace per run, proven from the default store: the coordinator's root and producer spans,
//! every agent's consumer and phase spans and logs, all under the run's trace and correlation
//! ID; and `verify` naming a service that sent nothing.

use flotilla_tests::{Fleet, NatsServer, ROLES, json_stdout, repo_root};

#[test]
fn a_run_is_one_trace_with_every_service_correlated_and_no_orphans() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap();

    let out = fleet.flotilla(&["verify", run_id, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["run_id"], run_id);
    assert_eq!(report["roots"].as_array().unwrap().len(), 1, "{report:#}");
    assert!(
        report["orphans"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 5);
    for service in services {
        assert_eq!(service["correlated"], true, "{service:#}");
        // One consumer span and one span per phase at least; logs from every phase.
        assert!(service["spans"].as_u64().unwrap() >= 6, "{service:#}");
        assert!(service["logs"].as_u64().unwrap() >= 5, "{service:#}");
    }
    // The coordinator's spans are there too, down to the last one of this short CLI run (the
    // finalize dispatches): a root plus one producer span per command, 5 migrate + 5
    // cross-service inspect + 5 finalize.
    let coordinator = report["others"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["service"] == "flotilla")
        .unwrap();
    assert_eq!(coordinator["spans"], 16, "{coordinator:#}");
}

#[test]
fn verify_names_a_service_whose_agent_exports_nothing() {
    let nats = NatsServer::start().unwrap();
    let silent = |role: &str| {
        if role == "ingest" {
            vec![("OTEL_SDK_DISABLED".to_owned(), "true".to_owned())]
        } else {
            Vec::new()
        }
    };
    let fleet =
        Fleet::start_with(nats.url(), &["inference", "ingest"], &silent, Vec::new()).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let mut plan_text = std::fs::read_to_string(&plan).unwrap();
    for role in ["training", "execution", "preprocess"] {
        plan_text = plan_text.replace(&format!("[[service]]\nname = \"{role}\"\n"), "");
    }
    let plan = fleet.write_plan("two.toml", &plan_text);
    // The migration itself refuses to finalize an uncorrelated run, and rolls it back.
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "3s",
    ]);
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{run:#}");
    assert_eq!(run["finalized"], false, "{run:#}");

    let out = fleet.flotilla(&[
        "verify",
        run["run_id"].as_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "1s",
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let service = |name: &str| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(service("inference")["correlated"], true, "{report:#}");
    let ingest = service("ingest");
    assert_eq!(ingest["correlated"], false, "{report:#}");
    assert_eq!(ingest["spans"], 0, "{report:#}");
    assert!(
        !ingest["problems"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

/// Our own demo run, converted to what Jaeger (api_v3: OTLP JSON under `result`) and Tempo
/// (`/api/v2/traces`: protobuf `TraceByIDResponse`) answer, read back by their readers and
/// verified: the production backends see the run as correlated too (logs as span events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_demo_run_as_jaeger_and_tempo_would_answer_it_verifies() {
    use async_nats::jetstream::{self, consumer};
    use futures::StreamExt;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::TracesData;
    use prost::Message;

    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &ROLES).unwrap());
    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = tokio::task::block_in_place(|| {
        fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"])
    });
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();
    let out =
        tokio::task::block_in_place(|| fleet.flotilla(&["verify", &run_id, "--output", "json"]));
    let verified = json_stdout(&out);
    let trace_id = verified["trace_id"].as_str().unwrap().to_owned();

    // The raw OTLP the agents and the coordinator stored for this trace.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let stream = jetstream::new(client)
        .get_stream("FLOTILLA_TELEMETRY")
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("flotilla.otel.traces.{trace_id}"),
            ..Default::default()
        })
        .await
        .unwrap();
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.unwrap();
    let mut resource_spans = Vec::new();
    for _ in 0..pending {
        let message = messages.next().await.unwrap().unwrap();
        resource_spans.extend(
            ExportTraceServiceRequest::decode(message.payload.as_ref())
                .unwrap()
                .resource_spans,
        );
    }
    let data = TracesData { resource_spans };
    let expected: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| ((*r).to_owned(), "a".to_owned()))
        .collect();

    let jaeger_body = serde_json::to_vec(&serde_json::json!({ "result": data })).unwrap();
    let jaeger = flotilla_tracestore::jaeger::parse_v3(&jaeger_body).unwrap();
    let tempo_body = flotilla_tracestore::tempo::TraceByIdResponse {
        trace: Some(data),
        status: 0,
        message: String::new(),
    }
    .encode_to_vec();
    let tempo = flotilla_tracestore::tempo::parse_protobuf(&tempo_body).unwrap();
    for (backend, trace) in [("jaeger", jaeger), ("tempo", tempo)] {
        let report = flotilla_tracestore::verify(&trace, &run_id, &expected);
        assert!(
            report.ok,
            "{backend}: {}",
            serde_json::to_string_pretty(&report).unwrap()
        );
        assert_eq!(report.roots.len(), 1, "{backend}");
        let spans: usize = report.services.iter().map(|s| s.spans).sum();
        let stored: u64 = verified["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["spans"].as_u64().unwrap())
            .sum();
        assert_eq!(
            spans as u64, stored,
            "{backend} sees every agent span the default store holds"
        );
    }
    tokio::task::block_in_place(|| drop(fleet));
}
