//! HTTP health checks, with the run's correlation ID on every request so that the service's own
//! logs join the run, and the plan's headers, which speak the service's own conventions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backon::{ConstantBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use flotilla_schemas::{HTTP_CORRELATION_HEADER, HttpCheck, RunId};
use flotilla_telemetry::error_chain;

/// How often a check is retried until its deadline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Probes a precheck makes before it calls the service unhealthy, [`PRECHECK_PAUSE`] apart. One
/// missed probe is no verdict on a busy service (at 50,000 simulated agents, 21 prechecks out
/// of 6,669 missed their one 2 s probe, and a budget of 0 rolled the run back); Kubernetes'
/// probes have the same default failure threshold.
pub const PRECHECK_PROBES: usize = 3;

/// The pause between two precheck probes.
pub const PRECHECK_PAUSE: Duration = Duration::from_millis(500);

/// Why a health check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    #[error("{url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{url} answered {status}, expected {expected}")]
    Status {
        url: String,
        status: u16,
        expected: u16,
    },
    #[error("{url} answered without {expected:?} in its body")]
    Body { url: String, expected: String },
    #[error("header {name:?} cannot be sent: {reason}")]
    Header { name: String, reason: String },
}

/// The headers of a request of the run: its trace context and correlation ID, then `extra`
/// (the plan's, already rendered), which replace those of the same name.
pub fn request_headers(
    run_id: Option<RunId>,
    extra: &BTreeMap<String, String>,
) -> Result<HeaderMap, HealthError> {
    let mut headers = HeaderMap::new();
    // The run's trace context goes only with its correlation ID: a service that continues the
    // trace records that ID on its own spans, which `verify` requires of them.
    let own = run_id.into_iter().flat_map(|run_id| {
        flotilla_telemetry::http_headers()
            .into_iter()
            .chain([(HTTP_CORRELATION_HEADER.to_owned(), run_id.to_string())])
    });
    for (name, value) in own.chain(extra.iter().map(|(n, v)| (n.clone(), v.clone()))) {
        let invalid = |reason: String| HealthError::Header {
            name: name.clone(),
            reason,
        };
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let value = HeaderValue::from_str(&value).map_err(|e| invalid(e.to_string()))?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// One GET. With `expect_status` `None`, any HTTP answer passes: the service is serving.
pub async fn probe(
    http: &reqwest::Client,
    url: &str,
    expect_status: Option<u16>,
    body_contains: Option<&str>,
    run_id: Option<RunId>,
) -> Result<(), HealthError> {
    attempt(
        http,
        reqwest::Method::GET,
        url,
        None,
        expect_status,
        body_contains,
        run_id,
        &BTreeMap::new(),
    )
    .await
}

/// The precheck's probe: a GET that must answer 200, asked up to [`PRECHECK_PROBES`] times;
/// returns the last failure. A header that cannot be sent is not asked again.
pub async fn precheck(http: &reqwest::Client, url: &str, run_id: RunId) -> Result<(), HealthError> {
    (|| probe(http, url, Some(200), None, Some(run_id)))
        .retry(
            ConstantBuilder::new()
                .with_delay(PRECHECK_PAUSE)
                .with_max_times(PRECHECK_PROBES - 1),
        )
        .when(|e| !matches!(e, HealthError::Header { .. }))
        .await
}

#[allow(clippy::too_many_arguments)]
async fn attempt(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
    expect_status: Option<u16>,
    body_contains: Option<&str>,
    run_id: Option<RunId>,
    headers: &BTreeMap<String, String>,
) -> Result<(), HealthError> {
    let mut request = http
        .request(method, url)
        .timeout(Duration::from_secs(2))
        .headers(request_headers(run_id, headers)?);
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let unreachable = |e: reqwest::Error| HealthError::Unreachable {
        url: url.to_owned(),
        reason: error_chain(&e),
    };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    if let Some(expected) = expect_status
        && status != expected
    {
        return Err(HealthError::Status {
            url: url.to_owned(),
            status,
            expected,
        });
    }
    if let Some(expected) = body_contains {
        let body = response.text().await.map_err(unreachable)?;
        if !body.contains(expected) {
            return Err(HealthError::Body {
                url: url.to_owned(),
                expected: expected.to_owned(),
            });
        }
    }
    Ok(())
}

/// Retries `check` until it passes or its deadline passes; returns the last failure.
pub async fn check(
    http: &reqwest::Client,
    url: &str,
    check: &HttpCheck,
    run_id: RunId,
) -> Result<Duration, HealthError> {
    let method =
        match check.method.as_deref() {
            None => reqwest::Method::GET,
            Some(name) => reqwest::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .map_err(|_| HealthError::Unreachable {
                    url: url.to_owned(),
                    reason: format!("{name:?} is not an HTTP method"),
                })?,
        };
    let started = Instant::now();
    let deadline = started + Duration::from_millis(check.timeout_ms);
    loop {
        let outcome = attempt(
            http,
            method.clone(),
            url,
            check.body.as_deref(),
            Some(check.expect_status),
            check.body_contains.as_deref(),
            Some(run_id),
            &check.headers,
        );
        match outcome.await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A loopback endpoint answering 503 to its first `failing` requests and 200 after; returns
    /// its URL and the count of requests it answered.
    async fn endpoint(failing: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let answered = Arc::new(AtomicUsize::new(0));
        let count = answered.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let status = if count.fetch_add(1, Ordering::SeqCst) < failing {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let response =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        (url, answered)
    }

    #[tokio::test]
    async fn a_precheck_passes_when_a_later_probe_answers_200() {
        let (url, answered) = endpoint(PRECHECK_PROBES - 1).await;
        let http = reqwest::Client::new();
        precheck(&http, &url, RunId::new()).await.unwrap();
        assert_eq!(answered.load(Ordering::SeqCst), PRECHECK_PROBES);
    }

    #[tokio::test]
    async fn a_precheck_fails_with_the_last_answer_once_every_probe_failed() {
        let (url, answered) = endpoint(usize::MAX).await;
        let http = reqwest::Client::new();
        let error = precheck(&http, &url, RunId::new()).await.unwrap_err();
        assert_eq!(
            error,
            HealthError::Status {
                url,
                status: 503,
                expected: 200
            }
        );
        assert_eq!(answered.load(Ordering::SeqCst), PRECHECK_PROBES);
    }
}
