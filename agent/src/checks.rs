//! Preconditions (checked before any change) and functional checks (run during validation):
//! HTTP requests, TCP connects, and commands, which is how batch services are validated — by
//! running the job and checking its exit code, duration and output.

use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_schemas::{Check, Precondition};

use crate::health;
use crate::run_context::RunContext;
use crate::steps::{self, RootDir};

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
