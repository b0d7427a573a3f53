//! Preconditions (checked before any change) and functional checks (run during validation):
//! HTTP requests, TCP connects, and commands, which is how batch services are validated — by
//! running the job and checking its exit code, duration and output.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_schemas::placeholder;
use flotilla_schemas::{Check, HttpCheck, Precondition};

use crate::health;
use crate::run_context::RunContext;
use crate::steps::{self, RootDir};
use crate::template::{Renderer, TemplateError};

/// Checks one precondition inside the service root.
pub fn precondition(root: &RootDir, condition: &Precondition) -> Result<(), String> {
    match condition {
        Precondition::FileExists { path } => match root.exists(path) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("precondition: {path} does not exist")),
            Err(e) => Err(format!("precondition: {e}")),
        },
        Precondition::FileAbsent { path } => match root.exists(path) {
            Ok(false) => Ok(()),
            Ok(true) => Err(format!("precondition: {path} exists")),
            Err(e) => Err(format!("precondition: {e}")),
        },
        Precondition::FileContains { path, text } => {
            let content = root
                .read_to_string(path)
                .map_err(|e| format!("precondition: {e}"))?;
            if content.contains(text.as_str()) {
                Ok(())
            } else {
                Err(format!("precondition: {path} does not contain {text:?}"))
            }
        }
    }
}

/// Why a check or workload could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// Refused here too, not only by `flotilla plan check`: a command may come from elsewhere.
    #[error(
        "${{secret:{name}}} is not allowed in {field}: {}",
        placeholder::SECRET_NOT_ALLOWED_WHY
    )]
    SecretNotAllowed { field: &'static str, name: String },
}

/// Renders `text` of a field that may not hold a secret (its value would show in failure
/// reasons and logs).
pub fn render_plain(
    renderer: &Renderer<'_>,
    field: &'static str,
    text: &str,
) -> Result<String, RenderError> {
    if let Some(name) = placeholder::first_secret(text) {
        return Err(RenderError::SecretNotAllowed {
            field,
            name: name.to_owned(),
        });
    }
    Ok(renderer.render(text)?)
}

fn plain_opt(
    renderer: &Renderer<'_>,
    field: &'static str,
    s: &Option<String>,
) -> Result<Option<String>, RenderError> {
    s.as_deref()
        .map(|s| render_plain(renderer, field, s))
        .transpose()
}

/// Resolves the placeholders in the values of request headers (a secret may be one: an
/// `Authorization` header; only header names are ever quoted).
pub fn render_headers(
    renderer: &Renderer<'_>,
    headers: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, RenderError> {
    headers
        .iter()
        .map(|(name, value)| Ok((name.clone(), renderer.render(value)?)))
        .collect()
}

/// Resolves the placeholders in an HTTP check's (or health check's) URL, body and headers;
/// `${secret:…}` in its body and headers only.
pub fn render_http(renderer: &Renderer<'_>, http: &HttpCheck) -> Result<HttpCheck, RenderError> {
    Ok(HttpCheck {
        url: plain_opt(renderer, "url", &http.url)?,
        body: http
            .body
            .as_deref()
            .map(|s| renderer.render(s))
            .transpose()?,
        headers: render_headers(renderer, &http.headers)?,
        ..http.clone()
    })
}

/// Resolves `${var:…}` (and the run variables) in a check's URL, body, headers, address, log
/// pattern and arguments, and `${secret:…}` in its body and headers only.
pub fn render(renderer: &Renderer<'_>, check: &Check) -> Result<Check, RenderError> {
    let plain_opt = |field, s: &Option<String>| plain_opt(renderer, field, s);
    Ok(match check {
        Check::Http(http) => Check::Http(render_http(renderer, http)?),
        Check::Tcp {
            address,
            timeout_ms,
        } => Check::Tcp {
            address: render_plain(renderer, "address", address)?,
            timeout_ms: *timeout_ms,
        },
        Check::Log {
            path,
            contains,
            timeout_ms,
        } => Check::Log {
            path: render_plain(renderer, "path", path)?,
            contains: plain_opt("contains", contains)?,
            timeout_ms: *timeout_ms,
        },
        Check::Command { .. } => {
            let mut rendered = check.clone();
            if let Check::Command { args, .. } = &mut rendered {
                for arg in args.iter_mut() {
                    *arg = render_plain(renderer, "args", arg)?;
                }
            }
            rendered
        }
    })
}

/// Runs one functional check; returns a short description of what passed.
pub async fn run(cx: &RunContext<'_>, check: &Check) -> Result<String, String> {
    let RunContext {
        http,
        root,
        health_url: default_url,
        run_id,
        launcher,
    } = *cx;
    match check {
        Check::Http(http_check) => {
            let url = http_check.url.as_deref().unwrap_or(default_url);
            let took = health::check(http, url, http_check, run_id)
                .await
                .map_err(|e| format!("http check: {e}"))?;
            Ok(format!("http {url} in {}ms", took.as_millis()))
        }
        Check::Tcp {
            address,
            timeout_ms,
        } => tcp(address, Duration::from_millis(*timeout_ms)).await,
        Check::Log {
            path,
            contains,
            timeout_ms,
        } => {
            let wanted = contains.clone().unwrap_or_else(|| run_id.to_string());
            log(root, path, &wanted, Duration::from_millis(*timeout_ms)).await
        }
        Check::Command {
            program,
            args,
            expect_exit,
            timeout_ms,
            max_duration_ms,
            stdout_contains,
        } => {
            let (run, took) = steps::run_timed(root, program, args, *timeout_ms, launcher).await;
            let output = run.map_err(|e| format!("command check: {e}"))?;
            let code = output.status.code();
            if code != Some(*expect_exit) {
                return Err(format!(
                    "command check: {program} exited with {}, expected {expect_exit}{}",
                    output.status,
                    steps::last_line(&output.stderr)
                ));
            }
            if let Some(max) = max_duration_ms
                && took > Duration::from_millis(*max)
            {
                return Err(format!(
                    "command check: {program} took {}ms, more than {max}ms",
                    took.as_millis()
                ));
            }
            if let Some(expected) = stdout_contains
                && !String::from_utf8_lossy(&output.stdout).contains(expected.as_str())
            {
                return Err(format!(
                    "command check: {program}'s output lacks {expected:?}"
                ));
            }
            Ok(format!(
                "command {program} exited {expect_exit} in {}ms",
                took.as_millis()
            ))
        }
    }
}

/// Waits until the log file holds `wanted`. A relative path is confined to the service root;
/// an absolute one is read as is (logs often live elsewhere) — only the verdict is reported.
async fn log(root: &Path, path: &str, wanted: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    let file = if Path::new(path).is_absolute() {
        std::path::PathBuf::from(path)
    } else {
        crate::confine::relative_path(path)
            .map(|p| root.join(p))
            .map_err(|e| format!("log check: {e}"))?
    };
    loop {
        let found = tokio::fs::read(&file).await.map(|bytes| {
            let needle = wanted.as_bytes();
            !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
        });
        match found {
            Ok(true) => {
                return Ok(format!(
                    "log {path} shows {wanted:?} after {}ms",
                    started.elapsed().as_millis()
                ));
            }
            _ if started.elapsed() >= timeout => {
                return Err(format!(
                    "log check: {path} does not show {wanted:?} within {timeout:?}"
                ));
            }
            _ => tokio::time::sleep(health::POLL_INTERVAL).await,
        }
    }
}

async fn tcp(address: &str, timeout: Duration) -> Result<String, String> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10));
        match tokio::time::timeout(remaining, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => {
                return Ok(format!(
                    "tcp {address} in {}ms",
                    started.elapsed().as_millis()
                ));
            }
            Ok(Err(e)) if Instant::now() >= deadline => {
                return Err(format!("tcp check: cannot connect to {address}: {e}"));
            }
            Err(_) => {
                return Err(format!(
                    "tcp check: no connection to {address} within {timeout:?}"
                ));
            }
            Ok(Err(_)) => tokio::time::sleep(health::POLL_INTERVAL).await,
        }
    }
}
