//! One trace fetched over a backend's HTTP API (Jaeger, Tempo).

use crate::{ReadError, Trace};

/// GETs `<base_url><path>` asking for `accept`. A 404 gives `missing` (the backend has no such
/// trace); another failing status, the backend's error with its answer; a success,
/// `parse(body, is_json)`, `is_json` saying whether the answer's content type is JSON.
pub(crate) async fn get_trace(
    backend: &'static str,
    base_url: &str,
    path: &str,
    accept: &str,
    missing: Trace,
    parse: impl FnOnce(&[u8], bool) -> Result<Trace, ReadError>,
) -> Result<Trace, ReadError> {
    let url = format!("{}{path}", base_url.trim_end_matches('/'));
    let http = |source| ReadError::Http {
        url: url.clone(),
        source,
    };
    let response = reqwest::Client::new()
        .get(&url)
        .header("Accept", accept)
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    let json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    let body = response.bytes().await.map_err(http)?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(missing);
    }
    if !status.is_success() {
        return Err(ReadError::Backend {
            backend,
            status: status.as_u16(),
            message: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    parse(&body, json)
}
