//! HTTP health checks, with the run's correlation ID on every request so that the service's own
//! logs join the run, and the plan's headers, which speak the service's own conventions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

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
