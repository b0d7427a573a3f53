//! The test kit every crate's tests and the benchmarks share: a real `nats-server` on an
//! ephemeral port with JetStream in a temp dir ([`NatsServer`]), a real JetStream cluster of
//! routed nodes that a test kills and restarts one by one ([`Cluster`]), a fleet of real sample
//! services with their real `flotilla-agent` sidecars ([`Fleet`]; [`Fleet::migrate`] writes a
//! plan, runs `flotilla migrate --output json` and returns the exit code and the parsed
//! report), a plan builder ([`Plan`], [`Service`]), readers of the report ([`report`]) and a
//! real Prometheus scraping what a test points it at ([`Prometheus`]).
//!
//! It depends on no crate it tests but `flotilla-bus` (for the fleet's signing key), so that
//! the telemetry and trace-store crates can take it as a dev-dependency. The binaries it runs
//! (`flotilla`, `flotilla-agent`, `flotilla-sample`) are found next to the running executable:
//! `cargo build --workspace --bins` first.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod cluster;
mod fleet;
pub mod monitoring;
mod nats;
pub mod plan;
pub mod prometheus;
pub mod report;

pub use cluster::{Cluster, ClusterOptions};
pub use fleet::{Fleet, ROLES};
pub use nats::NatsServer;
pub use plan::{Plan, Service, demo_plan_text, standard_config_step};
pub use prometheus::Prometheus;

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
        .to_owned()
}

/// A binary of this workspace, built by `cargo build` into the same target directory as the
/// running test or demo.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable has a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// `flotilla ARGS` against the NATS server(s) at `url`, outside any fleet: no inherited
/// `FLOTILLA_…` variable, no colour, no telemetry.
pub fn flotilla_against(url: &str, args: &[&str]) -> std::process::Output {
    flotilla_command(url, args).output().expect("flotilla runs")
}

/// [`flotilla_against`]'s command, not yet started.
pub fn flotilla_command(url: &str, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(binary("flotilla"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FLOTILLA_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .env("FLOTILLA_NATS__URL", url)
        .env("NO_COLOR", "1")
        .env("OTEL_SDK_DISABLED", "true");
    command
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

/// GET `path` on 127.0.0.1:`port` with a raw HTTP/1.1 request; returns status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Parses a command's stdout as JSON, showing stdout and stderr when it is not.
pub fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
