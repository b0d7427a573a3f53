//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans and logs go out as OTLP/HTTP protobuf, and the
//! resource comes from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`. The variables must be
//! set before `init`, so the test runs itself again as a child process with them set.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message as _;

const CHILD_MARKER: &str = "FLOTILLA_TELEMETRY_TEST_CHILD";

/// One request received by the fake collector.
struct Received {
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// Serves HTTP/1.1 keep-alive requests on one connection, answering 200 to each.
fn serve(stream: TcpStream, tx: mpsc::Sender<Received>) {
    let mut writer = stream.try_clone().expect("clone");
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().expect("length"),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .expect("respond");
        let _ = tx.send(Received {
            path,
            content_type,
            body,
        });
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The child: initialises telemetry from the environment the parent set, emits, shuts down.
#[test]
fn child_emits_through_otlp() {
    if std::env::var_os(CHILD_MARKER).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let guard = flotilla_telemetry::init_with(flotilla_telemetry::TelemetryConfig {
            default_store: false,
            ..flotilla_telemetry::TelemetryConfig::new("caller-default")
        });
        tracing::info_span!("exported over otlp", flotilla.run_id = "R7").in_scope(|| {
            tracing::info!("log over otlp");
        });
        guard.shutdown().await.expect("shutdown");
    });
}

/// Spans and logs reach an OTLP/HTTP endpoint as protobuf, with the env-defined resource.
#[test]
fn otlp_endpoint_receives_protobuf_spans_and_logs() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, tx));
        }
    });

    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_emits_through_otlp", "--nocapture"])
        .env(CHILD_MARKER, "1")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "from-env")
        .env("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
        .env_remove("OTEL_SDK_DISABLED")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .status()
        .expect("run child");
    assert!(status.success());

    let (mut spans, mut logs) = (None, None);
    while spans.is_none() || logs.is_none() {
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("collector got both signals");
        assert_eq!(got.content_type, "application/x-protobuf");
        match got.path.as_str() {
            "/v1/traces" => spans = Some(ExportTraceServiceRequest::decode(&got.body[..]).unwrap()),
            "/v1/logs" => logs = Some(ExportLogsServiceRequest::decode(&got.body[..]).unwrap()),
            other => panic!("unexpected path {other}"),
        }
    }
    let spans = spans.expect("spans");
    let resource = &spans.resource_spans[0]
        .resource
        .as_ref()
        .expect("resource")
        .attributes;
    assert_eq!(attr(resource, "service.name"), Some("from-env"));
    assert_eq!(attr(resource, "deployment.environment"), Some("test"));
    let span = &spans.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.name, "exported over otlp");

    let logs = logs.expect("logs");
    let record = &logs.resource_logs[0].scope_logs[0].log_records[0];
    assert_eq!(record.trace_id, span.trace_id);
    assert_eq!(record.span_id, span.span_id);
    assert_eq!(attr(&record.attributes, "flotilla.run_id"), Some("R7"));
}
