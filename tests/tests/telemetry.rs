//! One trace per run, proven from the default store: the coordinator's root and producer spans,
//! every agent's consumer and phase spans and logs, all under the run's trace and correlation
//! ID; and `verify` naming a service that sent nothing.

use flotilla_tests::{Fleet, NatsServer, ROLES, json_stdout, repo_root};

#[test]
fn a_run_is_one_trace_with_every_service_correlated_and_no_orphans() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let (code, run) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(0), "{run:#}");
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
    assert_eq!(
        report["inconclusive"], true,
        "nothing arrived from ingest, nothing contradicts: {report:#}"
    );

    // The plan may accept what cannot be proven for want of telemetry (an outage that dropped
    // spans): the same fleet then migrates and finalizes, and the report says why.
    let warned = fleet.write_plan(
        "two-warn.toml",
        &format!("{plan_text}\n[correlation]\ninconclusive = \"warn\"\n"),
    );
    let out = fleet.flotilla(&[
        "migrate",
        warned.to_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "3s",
    ]);
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{run:#}");
    assert_eq!(run["finalized"], true, "{run:#}");
    assert_eq!(run["correlation"]["inconclusive"], true, "{run:#}");
    assert!(
        run["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("inconclusive = \"warn\"")),
        "{run:#}"
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
    // The services now export their own spans too, in batches (every 500 ms in the test fleet):
    // let the last ones land, so that the verdict and the raw stream below hold the same spans.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
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

/// The demo plan reduced to `roles`, with `extra` inserted right after execution's `[[service]]`.
fn plan_for(fleet: &Fleet, roles: &[&str], execution_extra: &str) -> std::path::PathBuf {
    let plan = repo_root().join("deploy/demo/plan.toml");
    let mut plan_text = std::fs::read_to_string(&plan).unwrap();
    for role in ROLES.iter().filter(|r| !roles.contains(r)) {
        plan_text = plan_text.replace(&format!("[[service]]\nname = \"{role}\"\n"), "");
    }
    let execution = "[[service]]\nname = \"execution\"\n";
    plan_text = plan_text.replace(execution, &format!("{execution}{execution_extra}"));
    fleet.write_plan("services.toml", &plan_text)
}

/// The run's trace from the default store, read until `done` holds for it (10 s at most): the
/// services export in batches, so their last spans can land after the run's end.
fn read_trace(
    fleet: &Fleet,
    trace_id: &str,
    done: impl Fn(&flotilla_tracestore::Trace) -> bool,
) -> flotilla_tracestore::Trace {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(fleet.nats_url()).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let trace = flotilla_tracestore::default_store::fetch(&client, "flotilla", trace_id)
                .await
                .unwrap();
            if done(&trace) || tokio::time::Instant::now() > deadline {
                return trace;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

/// A service's own span, by role, kind and name.
fn own_span<'a>(
    trace: &'a flotilla_tracestore::Trace,
    role: &str,
    kind: flotilla_tracestore::SpanKind,
    name: &str,
) -> Option<&'a flotilla_tracestore::SpanRecord> {
    trace.spans.iter().find(|s| {
        s.service_name == "flotilla-sample"
            && s.attributes.get("flotilla.service").map(String::as_str) == Some(role)
            && s.kind == kind
            && s.name == name
    })
}

/// The services continue the run's trace: execution's `/execute` (a functional check) calls
/// inference's `/predict`, and both services' spans and logs join the trace under the agents'
/// spans, inference's server span under execution's client span, all carrying the run ID.
#[test]
fn services_continue_the_run_s_trace_across_a_service_call() {
    use flotilla_tracestore::SpanKind;

    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "execution"]).unwrap();
    let check = "[[service.check]]\ntype = \"http\"\n\
                 url = \"http://127.0.0.1:${var:port}/execute\"\nmethod = \"POST\"\n";
    let plan = plan_for(&fleet, &["inference", "execution"], check);
    let (code, run) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(0), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let trace_id_of = |fleet: &Fleet| {
        let out = fleet.flotilla(&["verify", &run_id, "--output", "json"]);
        let report = json_stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        report["trace_id"].as_str().unwrap().to_owned()
    };
    let trace_id = trace_id_of(&fleet);
    let trace = read_trace(&fleet, &trace_id, |t| {
        own_span(t, "inference", SpanKind::Server, "POST /predict").is_some()
            && own_span(t, "execution", SpanKind::Server, "POST /execute").is_some()
    });

    let by_id: std::collections::BTreeMap<&str, &flotilla_tracestore::SpanRecord> = trace
        .spans
        .iter()
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let parent = |s: &flotilla_tracestore::SpanRecord| {
        by_id
            .get(
                s.parent_span_id
                    .as_deref()
                    .expect("a service span has a parent"),
            )
            .copied()
            .unwrap_or_else(|| panic!("orphan span {s:#?}"))
    };
    let roots = trace
        .spans
        .iter()
        .filter(|s| s.parent_span_id.is_none())
        .count();
    assert_eq!(roots, 1, "exactly one root");

    let own: Vec<_> = trace
        .spans
        .iter()
        .filter(|s| s.service_name == "flotilla-sample")
        .collect();
    for role in ["inference", "execution"] {
        assert!(
            own.iter()
                .any(|s| s.attributes.get("flotilla.service").map(String::as_str) == Some(role)),
            "{role} exported its own spans"
        );
    }
    for span in &own {
        assert_eq!(span.attributes["flotilla.run_id"], run_id, "{span:#?}");
        assert_eq!(
            span.attributes["flotilla.component"], "service",
            "{span:#?}"
        );
        assert_eq!(span.attributes["flotilla.instance"], "a", "{span:#?}");
        // Up the chain, the first span that is not a service's own is an agent's.
        let mut up = parent(span);
        while up.service_name == "flotilla-sample" {
            up = parent(up);
        }
        assert_eq!(up.service_name, "flotilla-agent", "{span:#?} under {up:#?}");
    }

    // execution's server span → its client span → inference's server span.
    let predict = own_span(&trace, "inference", SpanKind::Server, "POST /predict").unwrap();
    let client = parent(predict);
    assert_eq!(client.kind, SpanKind::Client, "{client:#?}");
    assert_eq!(client.attributes["flotilla.service"], "execution");
    assert_eq!(client.attributes["http.response.status_code"], "200");
    let execute = parent(client);
    assert_eq!(execute.kind, SpanKind::Server, "{execute:#?}");
    assert_eq!(execute.name, "POST /execute");
    assert_eq!(execute.attributes["http.response.status_code"], "200");
    assert_eq!(execute.attributes["url.path"], "/execute");
    assert_eq!(execute.attributes["http.request.method"], "POST");

    // The services' request log lines are log records of their spans, with the run ID.
    let logs: Vec<_> = trace
        .logs
        .iter()
        .filter(|l| l.service_name == "flotilla-sample")
        .collect();
    for role in ["inference", "execution"] {
        assert!(
            logs.iter()
                .any(|l| l.attributes.get("flotilla.service").map(String::as_str) == Some(role)),
            "{role} exported its log records"
        );
    }
    for log in &logs {
        assert_eq!(log.attributes["flotilla.run_id"], run_id, "{log:#?}");
        assert!(log.span_id.is_some(), "{log:#?}");
    }

    // And with every span in, `verify` still holds: one root, no orphans, all correlated.
    let out = fleet.flotilla(&["verify", &run_id, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert!(
        report["orphans"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}

/// A service that drops the correlation header (its own spans and logs carry no run ID) fails
/// `verify`, which names it.
#[test]
fn verify_names_a_service_that_drops_the_correlation_header() {
    let nats = NatsServer::start().unwrap();
    let dropping = |role: &str| {
        if role == "inference" {
            vec![
                (
                    "FLOTILLA_SAMPLE_DROP_CORRELATION".to_owned(),
                    "1".to_owned(),
                ),
                // The agent keeps its `FLOTILLA_…` variables from the service unless told.
                (
                    "FLOTILLA_SERVICE__INHERIT_ENV".to_owned(),
                    "FLOTILLA_SAMPLE_DROP_CORRELATION".to_owned(),
                ),
            ]
        } else {
            Vec::new()
        }
    };
    let fleet = Fleet::start_with(
        nats.url(),
        &["inference", "execution"],
        &dropping,
        Vec::new(),
    )
    .unwrap();
    let plan = plan_for(&fleet, &["inference", "execution"], "");
    // Whether the migration's own check sees inference's spans depends on when its batch lands
    // (the check passes as soon as it can); the verdict below waits for them.
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "3s",
    ]);
    let run = json_stdout(&out);
    assert!(matches!(out.status.code(), Some(0 | 1)), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap().to_owned();

    let mut report = serde_json::Value::Null;
    flotilla_tests::wait_for(
        "verify to see inference's own spans",
        std::time::Duration::from_secs(15),
        || {
            let out =
                fleet.flotilla(&["verify", &run_id, "--output", "json", "--verify-wait", "0s"]);
            report = json_stdout(&out);
            out.status.code() == Some(1)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {report:#}"));
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
    assert_eq!(service("execution")["correlated"], true, "{report:#}");
    let inference = service("inference");
    assert_eq!(inference["correlated"], false, "{report:#}");
    assert!(
        inference["problems"].as_array().unwrap().iter().any(|p| p
            .as_str()
            .unwrap()
            .contains("dropped the correlation header")),
        "{report:#}"
    );
}
