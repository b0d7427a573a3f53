//! The service over real sockets: routes, request logs, the upstream call.

use std::fs;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::*;
use crate::config::{self, STANDARD_FILE};
use crate::testutil::TempRoot;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn standard_root(fail_health: bool) -> TempRoot {
    let root = TempRoot::new();
    root.write(
        STANDARD_FILE,
        &format!(
            r#"
[service]
name = "execution"
environment = "test"
[server]
host = "127.0.0.1"
port = 0
[logging]
format = "json"
level = "info"
file = "logs/service.log"
[secrets]
api_key = "${{secret:API_KEY}}"
[behaviour]
fail_health = {fail_health}
[role]
broker_url = "nats://127.0.0.1:4222"
"#
        ),
    );
    root.write("secrets/API_KEY", "very-secret-value");
    root
}

/// Starts the service on an ephemeral port; send on the returned
/// channel to stop it.
async fn start(
    root: &TempRoot,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    start_with(root, TraceSettings::default()).await
}

/// [`start`] with telemetry settings (e.g. an upstream).
async fn start_with(
    root: &TempRoot,
    trace: TraceSettings,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<io::Result<()>>,
) {
    let config = config::load(root.path(), Role::Execution).expect("load config");
    let logger = Logger::open(
        &config.log_file,
        config.role.as_str(),
        config.log_format,
        config.log_level,
    )
    .expect("open log");
    let state = AppState::with_trace(&config, now_rfc3339(), Arc::new(logger), trace);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    (address, stop, server)
}

/// A minimal HTTP/1.1 GET; returns status code and body.
async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");

    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");

    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("header/body separator");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status code");
    (status, serde_json::from_str(body).expect("JSON body"))
}

fn log_records(root: &TempRoot) -> Vec<Value> {
    fs::read_to_string(root.path().join("logs/service.log"))
        .expect("read log")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON log line"))
        .collect()
}

#[tokio::test]
async fn health_answers_and_logs_run_id() {
    let root = standard_root(false);
    let (address, stop, server) = start(&root).await;

    let (status, body) = get(
        address,
        "/health",
        &[
            (RUN_ID_HEADER, "run-2024-42"),
            (TRACEPARENT_HEADER, TRACEPARENT),
        ],
    )
    .await;
    let (_, info) = get(address, "/info", &[]).await;
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("serve");

    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["service"], "execution");
    assert_eq!(body["layout"], "standard");
    assert_eq!(body["pid"], std::process::id());

    assert_eq!(info["config_keys"][0], "behaviour.fail_health");
    assert!(
        info["config_keys"]
            .as_array()
            .expect("array")
            .contains(&"secrets.api_key".into())
    );
    assert!(!info.to_string().contains("very-secret-value"));

    let records = log_records(&root);
    let health = records
        .iter()
        .find(|record| record["path"] == "/health")
        .expect("request record for /health");
    assert_eq!(health["msg"], "request");
    assert_eq!(health["level"], "info");
    assert_eq!(health["service"], "execution");
    assert_eq!(health["method"], "GET");
    assert_eq!(health["status"], 200);
    assert_eq!(health["run_id"], "run-2024-42");
    assert_eq!(health["traceparent"], TRACEPARENT);
    let info_record = records
        .iter()
        .find(|record| record["path"] == "/info")
        .expect("request record for /info");
    assert!(info_record.get("run_id").is_none());
}

#[tokio::test]
async fn failing_health_is_503() {
    let root = standard_root(true);
    let (address, stop, server) = start(&root).await;

    let (status, body) = get(address, "/health", &[]).await;
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("serve");

    assert_eq!(status, 503);
    assert_eq!(body["status"], "failing");
    assert_eq!(body["service"], "execution");
}

/// `/execute` calls the upstream's `/predict` with the run ID and trace context, and answers
/// with the upstream's answer.
#[tokio::test]
async fn execute_calls_the_upstream_with_the_run_id() {
    let (upstream_root, root) = (standard_root(false), standard_root(false));
    let (upstream, stop_upstream, upstream_server) = start(&upstream_root).await;
    let trace = TraceSettings {
        upstream: Some(format!("http://{upstream}")),
        ..TraceSettings::default()
    };
    let (address, stop, server) = start_with(&root, trace).await;

    let (status, body) = get(
        address,
        "/execute",
        &[(RUN_ID_HEADER, "run-7"), (TRACEPARENT_HEADER, TRACEPARENT)],
    )
    .await;
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("serve");
    stop_upstream.send(()).expect("upstream still running");
    upstream_server.await.expect("join").expect("serve");

    assert_eq!(status, 200, "{body}");
    assert!(body["score"].is_u64(), "{body}");
    let records = log_records(&upstream_root);
    let predict = records
        .iter()
        .find(|record| record["path"] == "/predict")
        .expect("the upstream logged /predict");
    assert_eq!(predict["method"], "POST");
    assert_eq!(predict["run_id"], "run-7");
    // Telemetry is off in unit tests: the caller's context is passed on unchanged.
    assert_eq!(predict["traceparent"], TRACEPARENT);
}

/// Without an upstream, or with one that does not answer, `/execute` is 502.
#[tokio::test]
async fn execute_without_a_working_upstream_is_502() {
    let root = standard_root(false);
    let (address, stop, server) = start(&root).await;
    let (status, body) = get(address, "/execute", &[]).await;
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("serve");
    assert_eq!(status, 502);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("FLOTILLA_SAMPLE_UPSTREAM")
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let trace = TraceSettings {
        upstream: Some(format!("http://127.0.0.1:{port}")),
        ..TraceSettings::default()
    };
    let (address, stop, server) = start_with(&root, trace).await;
    let (status, body) = get(address, "/execute", &[]).await;
    stop.send(()).expect("server still running");
    server.await.expect("join").expect("serve");
    assert_eq!(status, 502, "{body}");
}
