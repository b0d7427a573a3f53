//! The fleet simulator: many real agents per process. Each is the real agent library
//! (`flotilla_agent::run`) with its own NATS connection, journal, state directory, backups and
//! service root; only the service is simulated (`supervisor = "none"`: no process, and its
//! health endpoint is one in-process HTTP server per simulator process, so every health check is
//! still a real HTTP request).
//!
//! Agents run in worker processes (this binary's hidden `sim-worker` command) of at most
//! [`PER_PROCESS`] agents each: an agent holds about two file descriptors (its connection and its
//! journal) plus its health checks' sockets, and this machine's hard open-file limit is 20,000.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_agent::AgentConfig;
use flotilla_schemas::subjects::Subjects;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::common;

/// Agents per simulator process. Each process has one Tokio runtime and one health server for
/// its agents; with the whole fleet dispatched at once, a few hundred agents per runtime keep
/// one agent's blocking work (fsyncs, the backup) from starving the others' health checks, as
/// separate hosts would.
pub const PER_PROCESS: usize = 250;

/// A running simulated fleet; [`SimFleet::stop`] stops every agent.
pub struct SimFleet {
    pub dir: tempfile::TempDir,
    pub key_path: PathBuf,
    pub ready_after: Duration,
    workers: Vec<tokio::process::Child>,
}

impl SimFleet {
    /// Starts `n` agents of `service` (instances `i00001`…) in worker processes and waits until
    /// all of them answer presence.
    pub async fn start(
        nats_url: &str,
        service: &str,
        n: usize,
        allow: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-fleet-")
            .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
        let (key, key_path) = common::signing_key(dir.path())?;
        let client = async_nats::connect(nats_url).await?;
        let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
        common::ensure_streams(&client, &subjects).await?;

        let started = Instant::now();
        let mut workers = Vec::new();
        let mut first = 1;
        while first <= n {
            let count = PER_PROCESS.min(n + 1 - first);
            let child = tokio::process::Command::new(std::env::current_exe()?)
                .arg("sim-worker")
                .args(["--nats", nats_url, "--service", service])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--trusted", &key.public_key_text()])
                .arg("--dir")
                .arg(dir.path())
                .args(allow.iter().flat_map(|a| ["--allow", a]))
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or("warn".into()),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(
                    dir.path().join(format!("sim-{first}.log")),
                )?)
                .kill_on_drop(true)
                .spawn()
                .context("starting a simulator process")?;
            // Workers start one after the other: each waits for its agents' presence first.
            workers.push(child);
            wait_presence_of(
                &client,
                &subjects,
                |instance| {
                    instance_number(instance).is_some_and(|i| i >= first && i < first + count)
                },
                count,
                Duration::from_secs(600),
            )
            .await
            .with_context(|| format!("agents {first}..{} of {n}", first + count - 1))?;
            first += count;
        }
        let ready_after = started.elapsed();
        Ok(Self {
            dir,
            key_path,
            ready_after,
            workers,
        })
    }

    /// The simulator processes' PIDs.
    pub fn pids(&self) -> Vec<String> {
        self.workers
            .iter()
            .filter_map(|w| w.id().map(|p| p.to_string()))
            .collect()
    }

    /// CPU seconds used by the simulator processes so far.
    pub fn cpu(&self) -> f64 {
        self.pids()
            .iter()
            .filter_map(|p| common::cpu_of(p))
            .map(|c| c.own)
            .sum()
    }

    /// Stops every agent (closing a worker's stdin stops it) and waits for them.
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            drop(worker.stdin.take());
        }
        for mut worker in self.workers {
            if tokio::time::timeout(Duration::from_secs(60), worker.wait())
                .await
                .is_err()
            {
                let _ = worker.kill().await;
            }
        }
    }
}

fn instance_number(instance: &str) -> Option<usize> {
    instance.strip_prefix('i')?.parse().ok()
}

/// Sends presence requests until `count` distinct agents whose instance passes `mine` answered.
async fn wait_presence_of(
    client: &async_nats::Client,
    subjects: &Subjects,
    mine: impl Fn(&str) -> bool,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let mut seen = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while started.elapsed() < timeout {
        tokio::select! {
            _ = tick.tick() => {
                client
                    .publish_with_reply(subjects.presence(), inbox.clone(), Vec::new().into())
                    .await?;
            }
            Some(message) = answers.next() => {
                if let Ok(p) = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    && let Some(instance) = p["instance"].as_str()
                    && mine(instance)
                {
                    seen.insert(instance.to_owned());
                    if seen.len() >= count {
                        return Ok(());
                    }
                }
            }
        }
    }
    anyhow::bail!(
        "only {} of {count} agents answered presence within {timeout:?}",
        seen.len()
    )
}

/// The `sim-worker` command: runs `count` agents from instance number `first` until stdin
/// closes. Agents start in batches of 250, each batch once the previous one answers presence,
/// so that thousands of connects and consumer creations do not trip their timeouts.
#[allow(clippy::too_many_arguments)]
pub async fn worker(
    nats_url: &str,
    service: &str,
    first: usize,
    count: usize,
    trusted: &str,
    dir: &Path,
    allow: &[String],
    telemetry: Arc<flotilla_telemetry::TelemetryGuard>,
) -> anyhow::Result<()> {
    common::raise_fd_limit();
    let health_port = common::health_server().await?;
    let client = async_nats::connect(nats_url).await?;
    let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let shutdown = CancellationToken::new();
    let mut agents = Vec::with_capacity(count);
    let numbers: Vec<usize> = (first..first + count).collect();
    for chunk in numbers.chunks(250) {
        for &i in chunk {
            let instance = format!("i{i:05}");
            let text = common::agent_toml(
                nats_url,
                service,
                &instance,
                dir,
                health_port,
                trusted,
                &allow,
            )?;
            let config: AgentConfig =
                toml::from_str(&text).context("simulated agent configuration")?;
            let telemetry = telemetry.clone();
            let shutdown = shutdown.child_token();
            // An agent that stops with an error (e.g. its consumer could not be created while
            // the server was saturated by thousands of others starting) is started again after
            // a second, as systemd's `Restart=on-failure` would restart the binary.
            agents.push(tokio::spawn(async move {
                loop {
                    match flotilla_agent::run(config.clone(), &telemetry, shutdown.clone()).await {
                        Ok(()) => return,
                        Err(e) => eprintln!(
                            "agent {instance} stopped, restarting it: {}",
                            flotilla_agent::error_chain(&e)
                        ),
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }));
        }
        let (lo, hi) = (chunk[0], chunk[chunk.len() - 1]);
        wait_presence_of(
            &client,
            &subjects,
            |instance| instance_number(instance).is_some_and(|i| i >= lo && i <= hi),
            chunk.len(),
            Duration::from_secs(300),
        )
        .await?;
    }
    // Run until the parent closes our stdin (or dies).
    let _ = tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut buf = [0u8; 64];
        while std::io::stdin().read(&mut buf).unwrap_or(0) > 0 {}
    })
    .await;
    shutdown.cancel();
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(30), agent).await;
    }
    Ok(())
}
