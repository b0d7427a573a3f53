//! `flotilla-agent probe`: asks the agent's own endpoint, for container health checks in
//! images that carry no curl or wget.

use std::time::Duration;

/// What the probe asks by default: readiness on the shipped port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464/readyz";

/// How long the probe waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}: {body}")]
    Failed {
        url: String,
        status: u16,
        body: String,
    },
}

/// GETs `url`: the body of a 2xx answer, else an error saying what came back.
pub async fn probe(url: &str) -> Result<String, ProbeError> {
    let unreachable = |source| ProbeError::Unreachable {
        url: url.to_owned(),
        source,
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(TIMEOUT)
        .build()
        .map_err(unreachable)?;
    let response = client.get(url).send().await.map_err(unreachable)?;
    let status = response.status();
    let body = response.text().await.map_err(unreachable)?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(ProbeError::Failed {
            url: url.to_owned(),
            status: status.as_u16(),
            body: body.trim().to_owned(),
        })
    }
}
