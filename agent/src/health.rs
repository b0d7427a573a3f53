//! HTTP health checks, with the run's correlation ID on every request so that the service's own
//! logs join the run.

use std::time::{Duration, Instant};

use flotilla_schemas::{HTTP_CORRELATION_HEADER, HttpCheck, RunId};
use flotilla_telemetry::error_chain;

/// How often a check is retried until its deadline.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

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
    )
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
) -> Result<(), HealthError> {
    let mut request = http.request(method, url).timeout(Duration::from_secs(2));
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    // The run's trace context goes only with its correlation ID: a service that continues the
    // trace records that ID on its own spans, which `verify` requires of them.
    if let Some(run_id) = run_id {
        for (name, value) in flotilla_telemetry::http_headers() {
            request = request.header(name, value);
        }
        request = request.header(HTTP_CORRELATION_HEADER, run_id.to_string());
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
        );
        match outcome.await {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(POLL_INTERVAL).await,
        }
    }
}
