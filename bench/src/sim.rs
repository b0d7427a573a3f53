//! The fleet simulator: many real agents per process. Each is the real agent library
//! (`flotilla_agent::run`) with its own NATS connection, journal, state directory, backups and
//! service root; only the service is simulated (`supervisor = "none"`: no process, and its
//! health endpoint is one in-process HTTP server per simulator process, so every health check is
//! still a real HTTP request).
//!
//! Agents run in worker processes (this binary's hidden `sim-worker` command) of at most
//! [`PER_PROCESS`] agents each: an agent holds about two file descriptors (its connection and its
//! journal) plus its health checks' sockets, and this machine's hard open-file limit is 20,000.
//! [`STARTING`] workers start at once; each reports on stdout when every one of its agents
//! answers its own status endpoint (one request per agent, not a broadcast), and the fleet is
//! ready when, after that, every agent answers one presence broadcast, as discovery would ask.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_agent::AgentConfig;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, ServiceName};
use tokio_util::sync::CancellationToken;

use crate::common;

/// Agents per simulator process. Each process has one Tokio runtime and one health server for
/// its agents; with the whole fleet dispatched at once, a few hundred agents per runtime keep
/// one agent's blocking work (fsyncs, the backup) from starving the others' health checks, as
/// separate hosts would.
pub const PER_PROCESS: usize = 250;

/// Worker processes starting their agents at once (each reports on stdout when all its agents
/// answer). Before, workers started one after another and each waited with presence broadcasts
/// that every agent already up answered: quadratic in N (10,000 took 113–139 s).
const STARTING: usize = 4;

/// How long one worker may take until all its agents answer.
const WORKER_READY_WITHIN: Duration = Duration::from_secs(300);

/// The line a worker prints on stdout once all its agents answer their status endpoint.
const READY_LINE: &str = "ready";

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
        Self::start_over(nats_url, &[nats_url.to_owned()], None, service, n, allow).await
    }

    /// As [`SimFleet::start`], with the workers' agents connecting to `agent_urls` in turn (the
    /// leaf nodes of `hub_url`, where the streams are and the presence broadcast is sent), and
    /// reaching JetStream in `domain` (the hub's, through the leaves).
    pub async fn start_over(
        hub_url: &str,
        agent_urls: &[String],
        domain: Option<&str>,
        service: &str,
        n: usize,
        allow: &[&str],
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!agent_urls.is_empty(), "no URL for the agents");
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-fleet-")
            .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
        let (key, key_path) = common::signing_key(dir.path())?;
        let client = async_nats::connect(hub_url).await?;
        let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
        common::ensure_streams(&client, &subjects).await?;

        let started = Instant::now();
        let mut workers = Vec::new();
        let mut starting = std::collections::VecDeque::new();
        let mut first = 1;
        while first <= n || !starting.is_empty() {
            // Up to STARTING workers connect their agents at once; the next starts when one
            // reports ready.
            if first <= n && starting.len() < STARTING {
                let count = PER_PROCESS.min(n + 1 - first);
                let nats_url = &agent_urls[workers.len() % agent_urls.len()];
                let mut child = tokio::process::Command::new(std::env::current_exe()?)
                    .arg("sim-worker")
                    .args(["--nats", nats_url, "--service", service])
                    .args(["--first", &first.to_string(), "--count", &count.to_string()])
                    .args(["--trusted", &key.public_key_text()])
                    .arg("--dir")
                    .arg(dir.path())
                    .args(allow.iter().flat_map(|a| ["--allow", a]))
                    .args(domain.iter().flat_map(|d| ["--domain", d]))
                    .env(
                        "RUST_LOG",
                        std::env::var("RUST_LOG").unwrap_or("warn".into()),
                    )
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(std::fs::File::create(
                        dir.path().join(format!("sim-{first}.log")),
                    )?)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting a simulator process")?;
                let stdout = child.stdout.take().context("a worker's stdout")?;
                let range = format!("agents {first}..{} of {n}", first + count - 1);
                starting.push_back(tokio::spawn(async move {
                    worker_ready(stdout, WORKER_READY_WITHIN)
                        .await
                        .context(range)
                }));
                workers.push(child);
                first += count;
                continue;
            }
            if let Some(next) = starting.pop_front() {
                next.await??;
            }
        }
        // What discovery will see: every agent answers one broadcast.
        common::wait_presence(
            &client,
            &subjects,
            n,
            Duration::from_secs(2),
            Duration::from_secs(120),
        )
        .await
        .context("the whole fleet's presence")?;
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

/// Waits until a worker prints [`READY_LINE`] (or fails when it exits or `within` passes).
async fn worker_ready(stdout: tokio::process::ChildStdout, within: Duration) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(within, lines.next_line())
        .await
        .with_context(|| format!("not ready within {within:?}"))??;
    anyhow::ensure!(
        line.as_deref() == Some(READY_LINE),
        "the simulator process ended before its agents were ready (its sim-*.log says why)"
    );
    Ok(())
}

/// Waits until agent `instance` answers its own status endpoint (the NATS service API's
/// `<group>.status`, started beside its presence responder once its command subscription
/// exists): one request per agent and retry, not a broadcast every agent answers.
async fn agent_answers(
    client: &async_nats::Client,
    subjects: &Subjects,
    service: &ServiceName,
    instance: &InstanceId,
    deadline: tokio::time::Instant,
) -> anyhow::Result<()> {
    let subject = format!("{}.status", subjects.agent_service_group(service, instance));
    loop {
        let asked = tokio::time::timeout(
            Duration::from_secs(2),
            client.request(subject.clone(), Vec::new().into()),
        );
        if let Ok(Ok(_)) = asked.await {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "agent {instance} did not answer its status endpoint in time"
        );
        // No responders yet: the agent is still connecting. Polling interval, under a deadline.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `sim-worker` command: runs `count` agents from instance number `first` until stdin
/// closes; prints [`READY_LINE`] once every one of them answers its status endpoint.
#[allow(clippy::too_many_arguments)]
pub async fn worker(
    nats_url: &str,
    service: &str,
    first: usize,
    count: usize,
    trusted: &str,
    dir: &Path,
    allow: &[String],
    domain: Option<&str>,
    telemetry: Arc<flotilla_telemetry::TelemetryGuard>,
) -> anyhow::Result<()> {
    common::raise_fd_limit();
    let health_port = common::health_server().await?;
    let client = async_nats::connect(nats_url).await?;
    let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    let shutdown = CancellationToken::new();
    let mut agents = Vec::with_capacity(count);
    let mut names = Vec::with_capacity(count);
    for i in first..first + count {
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
        let mut config: AgentConfig =
            toml::from_str(&text).context("simulated agent configuration")?;
        config.nats.domain = domain.map(str::to_owned);
        names.push((config.service.name.clone(), config.agent.instance.clone()));
        let telemetry = telemetry.clone();
        let shutdown = shutdown.child_token();
        // An agent that stops with an error (e.g. its first registry write or stream lookup
        // timed out while the server was saturated by thousands of others starting) is started
        // again after a second, as systemd's `Restart=on-failure` would restart the binary.
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
    let deadline = tokio::time::Instant::now() + WORKER_READY_WITHIN;
    futures::future::try_join_all(
        names.iter().map(|(service, instance)| {
            agent_answers(&client, &subjects, service, instance, deadline)
        }),
    )
    .await?;
    {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{READY_LINE}")?;
        stdout.flush()?;
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
