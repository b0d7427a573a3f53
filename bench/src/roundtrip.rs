//! `roundtrip`: one signed command to one real `flotilla-agent` process and its result back,
//! over the wire protocol (the coordinator's publish path: JetStream, `Nats-Msg-Id`, Ed25519
//! signature), with the transport's own floor measured beside it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Outcome, RunId};
use futures::StreamExt;

use crate::common::{self, Nats, Stats, Sync};

/// A real agent process against `nats`, its service simulated (`supervisor = "none"`, health
/// on this process's HTTP server). Killed on drop.
pub struct AgentProcess {
    pub child: tokio::process::Child,
    /// Holds the agent's state and configuration until the agent is dropped.
    pub _dir: tempfile::TempDir,
    pub key: flotilla_bus::signing::SigningKey,
    pub spawned: Instant,
}

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
            .unwrap_or_else(|| flotilla_tests::binary("flotilla-agent"));
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

/// Runs one migrate (and, untimed unless asked, its finalize) and returns the round trip.
pub async fn one_migration(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    key: &flotilla_bus::signing::SigningKey,
    events: &mut async_nats::Subscriber,
    run_id: RunId,
    service: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let command = common::migrate_command(run_id, service, "a", common::noop_steps())?;
    let started = Instant::now();
    common::send(js, subjects, key, &command).await?;
    let result = common::wait_result(events, command.command_id, Duration::from_secs(60)).await?;
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
    common::send(js, subjects, key, &finalize).await?;
    common::wait_result(events, finalize.command_id, Duration::from_secs(60)).await?;
    let _ = client;
    Ok((migrate, started.elapsed()))
}

/// The agent's own phase durations (ms), from the results, by phase.
static PHASES: std::sync::Mutex<std::collections::BTreeMap<String, Vec<f64>>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

pub async fn roundtrip(runs: usize, warmup: usize) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for sync in [Sync::Default, Sync::Always] {
        let nats = Nats::start(sync)?;
        let client = async_nats::connect(nats.url()).await?;
        let js = async_nats::jetstream::new(client.clone());
        let subjects = Subjects::new(flotilla_schemas::subjects::DEFAULT_PREFIX)?;
        common::ensure_streams(&client, &subjects).await?;

        // The floor: what the transport alone costs on this machine.
        let floor = floor(&client, &js, runs).await?;

        let agent = AgentProcess::spawn(nats.url(), "rt", &[]).await?;
        common::wait_presence(
            &client,
            &subjects,
            1,
            Duration::from_millis(5),
            Duration::from_secs(30),
        )
        .await?;
        let run_id = RunId::new();
        let mut events = client.subscribe(subjects.run_events(&run_id)).await?;
        let (mut migrate, mut finalize) = (Vec::new(), Vec::new());
        for i in 0..warmup + runs {
            let (m, f) = one_migration(
                &client,
                &js,
                &subjects,
                &agent.key,
                &mut events,
                run_id,
                "rt",
            )
            .await
            .with_context(|| format!("migration {i}"))?;
            if i >= warmup {
                migrate.push(common::ms(m));
                finalize.push(common::ms(f));
            }
        }
        eprintln!("roundtrip ({}): {} migrations done", sync.label(), runs);
        for (what, values) in [
            ("core NATS request/reply (floor)", floor.0),
            ("JetStream publish + ack (floor)", floor.1),
            ("no-op migrate command → result", migrate),
            ("finalize command → result", finalize),
        ] {
            let s = Stats::new(values);
            rows.push(vec![
                sync.label().to_owned(),
                what.to_owned(),
                s.count().to_string(),
                format!("{:.3}", s.median()),
                format!("{:.3}", s.quantile(0.99)),
                format!("{:.3}", s.max()),
                format!("{:.3}", s.min()),
            ]);
        }
        if let Ok(mut phases) = PHASES.lock() {
            for (phase, values) in std::mem::take(&mut *phases) {
                let s = Stats::new(values);
                rows.push(vec![
                    sync.label().to_owned(),
                    format!("agent phase `{phase}` (as reported, whole ms)"),
                    s.count().to_string(),
                    format!("{:.0}", s.median()),
                    format!("{:.0}", s.quantile(0.99)),
                    format!("{:.0}", s.max()),
                    format!("{:.0}", s.min()),
                ]);
            }
        }
        drop(agent);
        drop(nats);
    }
    println!("## roundtrip: one signed command to one real agent process and its result back\n");
    println!(
        "{}; loopback; {warmup} warm-up run(s) not counted; milliseconds\n",
        common::machine()
    );
    common::table(
        &["nats-server", "what", "n", "p50", "p99", "max", "min"],
        &rows,
    );
    Ok(())
}

/// Core request/reply to an in-process responder, and a JetStream publish awaiting its ack.
async fn floor(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut echo = client.subscribe("bench.echo").await?;
    let responder = client.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    let mut rr = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        client.request("bench.echo", "ping".into()).await?;
        rr.push(common::ms(t.elapsed()));
    }
    task.abort();
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_FLOOR".into(),
        subjects: vec!["bench.floor".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let mut pa = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        js.publish("bench.floor", "x".repeat(600).into())
            .await?
            .await?;
        pa.push(common::ms(t.elapsed()));
    }
    Ok((rr, pa))
}
