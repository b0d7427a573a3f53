//! One real `flotilla-agent` process and the wire to it, as `roundtrip` and `footprint` use
//! them: a nats-server with the streams, the agent (its service simulated), and signed migrate
//! and finalize commands published the way the coordinator does.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Outcome, RunId};

use crate::common::{self, Nats, Sync};

/// A nats-server with the commands and events streams, and a client of it.
pub struct Bus {
    pub nats: Nats,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
}

/// A real agent process against `nats`, its service simulated (`supervisor = "none"`, health
/// on this process's HTTP server). Killed on drop.
pub struct AgentProcess {
    pub child: tokio::process::Child,
    /// Holds the agent's state and configuration until the agent is dropped.
    pub _dir: tempfile::TempDir,
    pub key: flotilla_bus::signing::SigningKey,
    pub spawned: Instant,
}

/// Migrations of one agent's service within one run, whose events are subscribed once.
pub struct Migrations<'a> {
    bus: &'a Bus,
    key: &'a flotilla_bus::signing::SigningKey,
    service: &'a str,
    run_id: RunId,
    events: async_nats::Subscriber,
    done: usize,
}

/// The agent's own phase durations (ms), from the results, by phase.
pub static PHASES: std::sync::Mutex<std::collections::BTreeMap<String, Vec<f64>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

// === impl Bus ===

impl Bus {
    /// Starts a nats-server with `sync`, connects, and creates the streams as the coordinator
    /// does (agents wait for them).
    pub async fn start(sync: Sync) -> anyhow::Result<Self> {
        let nats = Nats::start(sync)?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
        common::ensure_streams(&client, &subjects).await?;
        Ok(Self {
            nats,
            client,
            js,
            subjects,
        })
    }

    /// Waits (30 s at most) for one agent to answer presence, asking every `every`.
    pub async fn wait_agent(&self, every: Duration) -> anyhow::Result<Duration> {
        common::wait_presence(
            &self.client,
            &self.subjects,
            1,
            every,
            Duration::from_secs(30),
        )
        .await
    }
}

// === impl AgentProcess ===

impl AgentProcess {
    pub async fn spawn(nats_url: &str, service: &str, allow: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-bench-agent-")
            .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))?;
        let (key, _) = common::signing_key(dir.path())?;
        let health = common::health_server().await?;
        let text = common::agent_toml(
            nats_url,
            service,
            "a",
            dir.path(),
            health,
            &key.public_key_text(),
            allow,
        )?;
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.path().join("agent.log"))?;
        let spawned = Instant::now();
        // FLOTILLA_AGENT_BIN measures another build of the agent, e.g. the shipped one
        // (`cargo build --profile agent -p flotilla-agent`: target/agent/flotilla-agent).
        let binary = std::env::var_os("FLOTILLA_AGENT_BIN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| flotilla_testkit::binary("flotilla-agent"));
        let child = tokio::process::Command::new(binary)
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting flotilla-agent")?;
        Ok(Self {
            child,
            _dir: dir,
            key,
            spawned,
        })
    }

    pub fn pid(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }
}

// === impl Migrations ===

impl<'a> Migrations<'a> {
    /// A new run for `agent`'s `service`.
    pub async fn new(
        bus: &'a Bus,
        agent: &'a AgentProcess,
        service: &'a str,
    ) -> anyhow::Result<Self> {
        let run_id = RunId::new();
        let events = bus
            .client
            .subscribe(bus.subjects.run_events(&run_id))
            .await?;
        Ok(Self {
            bus,
            key: &agent.key,
            service,
            run_id,
            events,
            done: 0,
        })
    }

    /// Runs one migrate and its finalize; returns each one's round trip.
    pub async fn next(&mut self) -> anyhow::Result<(Duration, Duration)> {
        let i = self.done;
        let times = self
            .migrate_and_finalize()
            .await
            .with_context(|| format!("migration {i}"))?;
        self.done += 1;
        Ok(times)
    }

    async fn migrate_and_finalize(&mut self) -> anyhow::Result<(Duration, Duration)> {
        let (js, subjects) = (&self.bus.js, &self.bus.subjects);
        let command =
            common::migrate_command(self.run_id, self.service, "a", common::noop_steps())?;
        let started = Instant::now();
        common::send(js, subjects, self.key, &command).await?;
        let result = common::wait_result(
            &mut self.events,
            command.command_id,
            Duration::from_secs(60),
        )
        .await?;
        let migrate = started.elapsed();
        if let Ok(mut phases) = PHASES.lock() {
            for p in &result.phases {
                phases
                    .entry(p.phase.as_str().to_owned())
                    .or_default()
                    .push(p.duration_ms as f64);
            }
        }
        ensure!(
            result.outcome == Outcome::Succeeded,
            "migration {:?}: {:?}",
            result.outcome,
            result.reason
        );
        let finalize = common::finalize_command(&command)?;
        let started = Instant::now();
        common::send(js, subjects, self.key, &finalize).await?;
        common::wait_result(
            &mut self.events,
            finalize.command_id,
            Duration::from_secs(60),
        )
        .await?;
        Ok((migrate, started.elapsed()))
    }
}
