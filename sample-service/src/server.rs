//! The HTTP service: start-up sequence, routes, request logging and
//! graceful shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ballast;
use crate::config::{Config, Layout, Role};
use crate::logging::{Level, Logger, now_rfc3339};
use crate::otel::{self, TraceSettings};

/// Request header carrying the migration run id, echoed into the logs.
pub const RUN_ID_HEADER: &str = "x-flotilla-run-id";
/// W3C trace context header, echoed into the logs next to the run id.
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// `flotilla.component` of the service's own spans, which tells them from its agent's.
const COMPONENT: &str = "service";
/// How long `/execute` waits for the upstream.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// State shared by all request handlers.
#[derive(Debug)]
pub struct AppState {
    role: Role,
    layout: Layout,
    fail_health: bool,
    request_delay: Duration,
    config_keys: Vec<String>,
    started_at: String,
    logger: Arc<Logger>,
    trace: TraceSettings,
    http: reqwest::Client,
}

impl AppState {
    /// Captures what the handlers need from `config`, and the telemetry settings from the
    /// environment.
    pub fn new(config: &Config, started_at: String, logger: Arc<Logger>) -> Arc<Self> {
        Self::with_trace(config, started_at, logger, TraceSettings::from_env())
    }

    /// [`AppState::new`] with the telemetry settings given.
    fn with_trace(
        config: &Config,
        started_at: String,
        logger: Arc<Logger>,
        trace: TraceSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            role: config.role,
            layout: config.layout,
            fail_health: config.behaviour.fail_health,
            request_delay: Duration::from_millis(config.behaviour.request_delay_ms),
            config_keys: config.config_keys.clone(),
            started_at,
            logger,
            trace,
            http: reqwest::Client::new(),
        })
    }

    /// The run ID to record and forward: the caller's, unless told to drop it.
    fn run_id(&self, headers: &HeaderMap) -> Option<String> {
        header_text(headers, RUN_ID_HEADER).filter(|_| !self.trace.drop_correlation)
    }
}

/// Runs the service until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<()> {
    let started_at = now_rfc3339();
    let logger = Arc::new(Logger::open(
        &config.log_file,
        config.role.as_str(),
        config.log_format,
        config.log_level,
    )?);
    // Installed first so that a signal during a slow start is still graceful.
    let mut shutdown = Box::pin(shutdown_signal().context("installing signal handlers")?);

    let mut fields = vec![
        ("layout", config.layout.as_str().into()),
        ("pid", std::process::id().into()),
    ];
    if let Some(environment) = &config.environment {
        fields.push(("environment", environment.as_str().into()));
    }
    fields.push(("secrets", config.secrets.len().into()));
    logger.info("starting", &fields);

    let _ballast = ballast::allocate(config.behaviour.extra_memory_mb)?;
    let delay = Duration::from_millis(config.behaviour.startup_delay_ms);
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        signal = &mut shutdown => {
            logger.info("stopping", &[("signal", signal.into())]);
            return Ok(());
        }
    }

    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    let address = listener.local_addr().context("reading bound address")?;
    logger.info("listening", &[("address", address.to_string().into())]);

    let state = AppState::new(&config, started_at, Arc::clone(&logger));
    serve(listener, state, async move {
        let signal = shutdown.await;
        logger.info("stopping", &[("signal", signal.into())]);
    })
    .await
    .context("serving HTTP")
}

/// Serves the routes on `listener` until `shutdown` completes, then lets
/// in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The service's routes, with every request logged.
fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/predict", get(work).post(work))
        .route("/ingest", get(work).post(work));
    if state.role == Role::Execution {
        router = router.route("/execute", get(execute).post(execute));
    }
    router
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            log_request,
        ))
        .with_state(state)
}

/// The service's real work, for workload measurements: inference's `/predict`, ingest's
/// `/ingest` (any role answers both). A little CPU per request, plus `request_delay_ms`.
async fn work(State(state): State<Arc<AppState>>) -> Json<Value> {
    let mut score = 0u64;
    for i in 0..20_000u64 {
        score = score.rotate_left(7) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    if !state.request_delay.is_zero() {
        tokio::time::sleep(state.request_delay).await;
    }
    Json(
        json!({ "service": state.role.as_str(), "layout": state.layout.as_str(), "score": score % 1000 }),
    )
}

/// Execution's call into inference: `POST <upstream>/predict` with the trace context and run ID,
/// answered with the upstream's JSON, or 502 when there is no upstream or it fails.
async fn execute(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(upstream) = &state.trace.upstream else {
        let error = format!("no upstream: {} is not set", otel::ENV_UPSTREAM);
        return (StatusCode::BAD_GATEWAY, Json(json!({ "error": error }))).into_response();
    };
    let url = format!("{upstream}/predict");
    let run_id = state.run_id(&headers);
    let span = tracing::info_span!(
        "upstream call",
        otel.name = "POST /predict",
        otel.kind = "client",
        flotilla.run_id = Empty,
        flotilla.service = state.role.as_str(),
        flotilla.instance = %state.trace.instance,
        flotilla.component = COMPONENT,
        http.request.method = "POST",
        url.full = %url,
        http.response.status_code = Empty,
    );
    if let Some(run_id) = &run_id {
        span.record("flotilla.run_id", run_id.as_str());
    }
    let call = call_upstream(&state.http, &url, &headers, run_id.as_deref());
    match call.instrument(span.clone()).await {
        Ok(answer) => (StatusCode::OK, Json(answer)).into_response(),
        Err(error) => {
            span.in_scope(|| tracing::warn!(url.full = %url, error = %error, "upstream failed"));
            state.logger.log(
                Level::Warn,
                "upstream failed",
                &[("url", url.into()), ("error", error.as_str().into())],
            );
            (StatusCode::BAD_GATEWAY, Json(json!({ "error": error }))).into_response()
        }
    }
}

/// One request to the upstream, inside the client span.
async fn call_upstream(
    http: &reqwest::Client,
    url: &str,
    incoming: &HeaderMap,
    run_id: Option<&str>,
) -> Result<Value, String> {
    let mut request = http.post(url).timeout(UPSTREAM_TIMEOUT);
    let context = flotilla_telemetry::http_headers();
    if context.is_empty() {
        // Not exporting: no span of ours to name, so pass the caller's context on unchanged.
        if let Some(traceparent) = header_text(incoming, TRACEPARENT_HEADER) {
            request = request.header(TRACEPARENT_HEADER, traceparent);
        }
    }
    for (name, value) in context {
        request = request.header(name, value);
    }
    if let Some(run_id) = run_id {
        request = request.header(RUN_ID_HEADER, run_id);
    }
    let response = request
        .send()
        .await
        .map_err(|e| flotilla_telemetry::error_chain(&e))?;
    let status = response.status();
    tracing::Span::current().record("http.response.status_code", status.as_u16());
    if !status.is_success() {
        return Err(format!("{url} answered {status}"));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| flotilla_telemetry::error_chain(&e))?;
    serde_json::from_slice(&body).map_err(|e| format!("{url} answered no JSON: {e}"))
}

async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Value>) {
    let (status, word) = if state.fail_health {
        (StatusCode::SERVICE_UNAVAILABLE, "failing")
    } else {
        (StatusCode::OK, "ok")
    };
    let body = json!({
        "status": word,
        "service": state.role.as_str(),
        "layout": state.layout.as_str(),
        "pid": std::process::id(),
    });
    (status, Json(body))
}

async fn info(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "service": state.role.as_str(),
        "layout": state.layout.as_str(),
        "config_keys": state.config_keys,
        "started_at": state.started_at,
    }))
}

/// Logs method, path and status of every request (unknown routes included),
/// plus the run id and trace context when the caller sent them. Each request is also a server
/// span, child of the caller's `traceparent`, and its log line a log record of that span.
async fn log_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let run_id = header_text(request.headers(), RUN_ID_HEADER);
    let traceparent = header_text(request.headers(), TRACEPARENT_HEADER);
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {path}"),
        otel.kind = "server",
        flotilla.run_id = Empty,
        flotilla.service = state.role.as_str(),
        flotilla.instance = %state.trace.instance,
        flotilla.component = COMPONENT,
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = Empty,
    );
    if let Some(run_id) = state.run_id(request.headers()) {
        span.record("flotilla.run_id", run_id.as_str());
    }
    if let Some(parent) = otel::remote_context(request.headers()) {
        // Only fails when telemetry is off and the span is disabled anyway.
        let _ = span.set_parent(parent);
    }

    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("http.response.status_code", status);
    span.in_scope(|| {
        tracing::info!(http.request.method = %method, url.path = %path,
            http.response.status_code = status, "request");
    });

    let mut fields = vec![
        ("method", method.into()),
        ("path", path.into()),
        ("status", status.into()),
    ];
    if let Some(run_id) = run_id {
        fields.push(("run_id", run_id.into()));
    }
    if let Some(traceparent) = traceparent {
        fields.push(("traceparent", traceparent.into()));
    }
    state.logger.info("request", &fields);
    response
}

/// The first value of header `name`, byte for byte (lossy only if not UTF-8).
fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
}

/// Completes with the signal's name on the first SIGTERM or SIGINT.
fn shutdown_signal() -> io::Result<impl Future<Output = &'static str>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        }
    })
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::net::SocketAddr;

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
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
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
}
