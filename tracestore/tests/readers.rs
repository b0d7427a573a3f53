//! The Jaeger and Tempo readers parse the real responses in `tests/fixtures/` (see SOURCES.md).

use flotilla_tracestore::{LogSource, SpanKind, Trace, jaeger, tempo, verify};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Jaeger's golden api_v3 GetTrace body: hex IDs and an integer kind under `result`.
#[test]
fn jaeger_v3_get_trace_fixture_parses() {
    let trace = jaeger::parse_v3(&fixture("jaeger-apiv3-get-trace.json")).unwrap();
    assert_eq!(trace.log_source, LogSource::SpanEvents);
    assert_eq!(trace.spans.len(), 1);
    let span = &trace.spans[0];
    assert_eq!(span.name, "foobar");
    assert_eq!(span.trace_id, "00000000000000000000000000000001");
    assert_eq!(span.span_id, "0000000000000002");
    assert_eq!(span.parent_span_id, None);
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.service_name, "");
    assert_eq!(
        trace.trace_id().as_deref(),
        Some("00000000000000000000000000000001")
    );
}

/// A real OTLP/JSON request (telemetrygen, Jaeger's own fixture) wrapped as an api_v3 result
/// keeps its service, parent and attributes.
#[test]
fn jaeger_v3_result_with_service_and_parent() {
    let request = String::from_utf8(fixture("jaeger-otlp-request.json")).unwrap();
    let body = format!("{{\"result\": {request}}}");
    let trace = jaeger::parse_v3(body.as_bytes()).unwrap();
    assert_eq!(trace.spans.len(), 2);
    let span = &trace.spans[0];
    assert_eq!(span.service_name, "telemetrygen");
    assert_eq!(span.trace_id, "83a9efd15c1c98a977e0711cc93ee28b");
    assert_eq!(span.span_id, "e127af99e3b3e074");
    assert_eq!(span.parent_span_id.as_deref(), Some("909541b92cf05311"));
    assert_eq!(span.name, "okey-dokey-0");
    assert_eq!(span.attributes["peer.service"], "telemetrygen-client");
    assert_eq!(span.attributes["net.peer.ip"], "1.2.3.4");
    assert_eq!(span.start_time_unix_nano, 1_706_678_909_209_712_000);
}

/// Jaeger's error body (api_v3 `http_gateway.go`) becomes a backend error, not an empty trace.
#[test]
fn jaeger_v3_error_body_is_an_error() {
    let body = br#"{"error":{"httpCode":500,"message":"storage unavailable"}}"#;
    let err = jaeger::parse_v3(body).unwrap_err();
    assert!(err.to_string().contains("500"), "{err}");
    assert!(err.to_string().contains("storage unavailable"), "{err}");
}

/// Tempo's documented `/api/v2/traces` JSON: base64 IDs and enum names are converted.
#[test]
fn tempo_v2_json_fixture_parses() {
    let trace = tempo::parse_json(&fixture("tempo-api-v2-trace.json")).unwrap();
    assert_eq!(trace.log_source, LogSource::SpanEvents);
    assert_eq!(trace.spans.len(), 1);
    let span = &trace.spans[0];
    assert_eq!(span.service_name, "my.service");
    assert_eq!(span.trace_id, "5b8efff798038103d269b633813fc700");
    assert_eq!(span.span_id, "eee19b7ec3c1b100");
    assert_eq!(span.name, "I am a span!");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.attributes["my.span.attr"], "some value");
    assert_eq!(span.end_time_unix_nano, 1_689_970_000_000_000_000);
}

fn vulture() -> Trace {
    tempo::parse_json(&fixture("tempo-trace-jsonpb.json")).unwrap()
}

/// tempo-vulture's trace (gogo jsonpb, as Tempo serves it): six spans of one trace, two roots.
#[test]
fn tempo_jsonpb_fixture_parses() {
    let trace = vulture();
    assert_eq!(trace.spans.len(), 6);
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.trace_id == "3149195ffb0bec05347b48efe8ecc1b0")
    );
    assert!(
        trace
            .spans
            .iter()
            .all(|s| s.service_name == "tempo-vulture")
    );
    let child = trace.spans.iter().find(|s| s.name == "vulture-45").unwrap();
    assert_eq!(child.span_id, "3ef58fd67f3c3c44");
    assert_eq!(child.parent_span_id.as_deref(), Some("4b23de25d1fb6641"));
    let events: usize = trace.spans.iter().map(|s| s.events.len()).sum();
    assert_eq!(events, 18);
    assert_eq!(trace.spans[0].resource["vulture-process-int-01"], "164005");
}

/// The same trace as Tempo's protobuf answer (`Accept: application/protobuf`) reads the same.
#[test]
fn tempo_protobuf_matches_json() {
    let data = tempo::json_to_traces_data(&fixture("tempo-trace-jsonpb.json")).unwrap();
    let body = tempo::TraceByIdResponse {
        trace: Some(data.clone()),
        status: 0,
        message: String::new(),
    }
    .encode_to_vec();
    assert_eq!(tempo::parse_protobuf(&body).unwrap(), vulture());
    assert_eq!(
        tempo::parse_protobuf_v1(&data.encode_to_vec()).unwrap(),
        vulture()
    );
    // Tempo v2 answers an unknown trace with 200 and an empty trace.
    assert!(tempo::parse_protobuf(&[]).unwrap().is_empty());
}

/// The vulture trace fails verification: two roots and no run ID anywhere.
#[test]
fn tempo_trace_fails_verification_with_reasons() {
    let report = verify(&vulture(), "R1", &[("tempo-vulture", "")]);
    assert!(!report.ok);
    assert_eq!(report.trace_id, "3149195ffb0bec05347b48efe8ecc1b0");
    assert_eq!(report.roots.len(), 2);
    assert!(report.orphans.is_empty());
    let svc = &report.services[0];
    assert_eq!((svc.spans, svc.logs), (6, 18));
    assert!(!svc.correlated);
    assert!(
        svc.problems
            .iter()
            .any(|p| p == "6 of 6 spans lack flotilla.run_id=R1"),
        "{:?}",
        svc.problems
    );
}

/// The official OTLP logs example: trace and span IDs (upper-case hex) and attributes.
#[test]
fn otlp_logs_example_parses() {
    let request: ExportLogsServiceRequest =
        serde_json::from_slice(&fixture("otlp-logs-example.json")).unwrap();
    let mut trace = Trace::default();
    trace.add_resource_logs(&request.resource_logs);
    assert_eq!(trace.logs.len(), 1);
    let log = &trace.logs[0];
    assert_eq!(log.service_name, "my.service");
    assert_eq!(
        log.trace_id.as_deref(),
        Some("5b8efff798038103d269b633813fc60c")
    );
    assert_eq!(log.span_id.as_deref(), Some("eee19b7ec3c1b174"));
    assert_eq!(log.body, "Example log record");
    assert_eq!(log.severity_number, 10);
    assert_eq!(log.attributes["string.attribute"], "some string");
    assert_eq!(log.attributes["boolean.attribute"], "true");
    assert_eq!(log.attributes["int.attribute"], "10");
}
