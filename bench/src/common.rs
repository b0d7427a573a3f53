//! What every benchmark shares: statistics and tables, a real nats-server in either sync mode,
//! a tiny in-process HTTP server that plays the services' health endpoints, `/proc` readings,
//! signed commands over the wire, and waiting for agents to answer presence.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Command, HEADER_RUN_ID, RunResult, encode};
use flotilla_testkit::{NatsServer, Plan};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// JetStream's fsync policy for a benchmark's nats-server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `sync_interval: always`: every stored message is fsynced before it is acknowledged (what
    /// the demo and the tests run).
    Always,
    /// nats-server's default (fsync every 2 minutes).
    Default,
}

impl Sync {
    pub fn label(self) -> &'static str {
        match self {
            Sync::Always => "sync_interval: always",
            Sync::Default => "default sync",
        }
    }
}

/// A nats-server with its configuration file kept alive.
pub struct Nats {
    pub server: NatsServer,
    _config: tempfile::TempDir,
}

impl Nats {
    /// A JetStream server: the only one of a small fleet, the hub of a large one.
    pub fn start(sync: Sync) -> anyhow::Result<Self> {
        Self::start_config(&Self::jetstream_config(sync, None))
    }

    /// The configuration of a JetStream server with `sync`, in JetStream `domain` if any.
    pub fn jetstream_config(sync: Sync, domain: Option<&str>) -> String {
        // nats-server ≥ 2.15 caps a stream at 1,000 consumers unless told otherwise; agents of
        // the v1 protocol (the before column of docs/performance.md) held one each.
        let limits = "  limits {\n    default_max_consumers: -1\n  }\n";
        let sync = match sync {
            Sync::Always => "  sync_interval: always\n",
            Sync::Default => "",
        };
        let domain = domain.map_or(String::new(), |d| format!("  domain: {d}\n"));
        format!("jetstream {{\n{domain}{sync}{limits}}}\n")
    }

    /// A server with the configuration `text`.
    pub fn start_config(text: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, text)?;
        let server = NatsServer::start_with_config(&config, &[])?;
        Ok(Self {
            server,
            _config: dir,
        })
    }

    pub fn url(&self) -> &str {
        self.server.url()
    }
}

/// Median, min, max and percentiles of a sample.
#[derive(Debug, Clone)]
pub struct Stats {
    sorted: Vec<f64>,
}

impl Stats {
    pub fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(|a, b| a.total_cmp(b));
        Self { sorted: values }
    }

    pub fn count(&self) -> usize {
        self.sorted.len()
    }

    pub fn quantile(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = (q * (self.sorted.len() - 1) as f64).round() as usize;
        self.sorted[rank.min(self.sorted.len() - 1)]
    }

    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    pub fn min(&self) -> f64 {
        self.sorted.first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted.last().copied().unwrap_or(f64::NAN)
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn mmm(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median(),
            self.min(),
            self.max(),
            d = digits
        )
    }
}

/// Prints a Markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    let aligns: Vec<&str> = header
        .iter()
        .enumerate()
        .map(|(i, _)| if i == 0 { "---" } else { "---:" })
        .collect();
    println!("|{}|", aligns.join("|"));
    for row in rows {
        println!("| {} |", row.join(" | "));
    }
    println!();
}

/// The machine, in one line.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1_048_576.0;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cpus} CPUs ({model}), {mem:.1} GiB, kernel {}, loadavg {}",
        kernel.trim(),
        load.join(" ")
    )
}

/// Raises the open-file limit as far as the hard limit allows (as root: to `nr_open`), so that
/// thousands of agents (a NATS connection, a journal and an HTTP connection each) fit in one
/// process; child processes (nats-server) inherit it.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1_048_576);
    for want in [nr_open.min(1_048_576), current.maximum.unwrap_or(nr_open)] {
        let limit = rustix::process::Rlimit {
            current: Some(want),
            maximum: Some(want.max(current.maximum.unwrap_or(0))),
        };
        if setrlimit(Resource::Nofile, limit).is_ok() {
            return want;
        }
    }
    current.current.unwrap_or(0)
}

/// The soft open-file limit of process `pid`, from `/proc/<pid>/limits`.
pub fn fd_limit_of(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Fails at once when nats-server `pid` could not hold `n` agents' connections (one file each,
/// plus its store's files): without this, the agents past the limit would retry their connects
/// for ever and the fleet would never be ready. Raising the limit past the hard one needs
/// `CAP_SYS_RESOURCE` (e.g. `ulimit -Hn` as root outside a container).
pub fn ensure_room_for(pid: &str, n: usize) -> anyhow::Result<()> {
    let Some(limit) = fd_limit_of(pid) else {
        return Ok(());
    };
    let needed = n as u64 + 1000;
    anyhow::ensure!(
        needed <= limit,
        "nats-server's open-file limit is {limit}, and {n} agents need about {needed} \
         (a connection each, plus the store's files): raise the hard limit (`ulimit -Hn`, which \
         needs CAP_SYS_RESOURCE) or split the fleet over several servers (`fleet --leaves K`)"
    );
    Ok(())
}

/// CPU seconds (user + system) of a process, and of its waited-for children.
pub struct Cpu {
    pub own: f64,
    pub children: f64,
}

fn ticks() -> f64 {
    100.0
}

/// CPU times of `pid` (`self` for this process).
pub fn cpu_of(pid: &str) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Some(Cpu {
        own: (n(11) + n(12)) / ticks(),
        children: (n(13) + n(14)) / ticks(),
    })
}

/// A `VmRSS`-style field of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The PID of this process's child named `comm` (e.g. the nats-server the harness started).
pub fn child_named(comm: &str) -> Option<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let ppid = rest.split_whitespace().nth(1)?;
        (name == comm && ppid == me).then_some(pid)
    })
}

/// What the simulated services' health endpoint answers.
const HEALTH_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";

/// A tiny HTTP/1.1 server answering `200 {"status":"ok"}` to every request, with keep-alive:
/// the health endpoint of every simulated service. Returns its port.
pub async fn health_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0usize;
                loop {
                    let Ok(n) = stream.read(&mut buf[have..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    // Requests carry no body (GET): answer at each end of headers.
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        // One write: headers and body in two would leave the body behind
                        // Nagle's algorithm until the client acknowledges the headers.
                        if stream.write_all(HEALTH_RESPONSE).await.is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                    if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// A signing key saved in `dir` (for `flotilla --signing-key`), and its public text.
pub fn signing_key(dir: &Path) -> anyhow::Result<(SigningKey, PathBuf)> {
    let path = dir.join("coordinator.key");
    let key = SigningKey::generate()?;
    key.save(&path)?;
    Ok((key, path))
}

/// The agent configuration of one simulated service: `supervisor = "none"`, its health URL on
/// the shared health server, its own root and state directory under `dir`.
pub fn agent_toml(
    nats_url: &str,
    service: &str,
    instance: &str,
    dir: &Path,
    health_port: u16,
    trusted_key: &str,
    allow: &[&str],
) -> anyhow::Result<String> {
    let root = dir.join("root").join(instance);
    let state = dir.join("state").join(instance);
    std::fs::create_dir_all(root.join("config"))?;
    std::fs::create_dir_all(&state)?;
    std::fs::write(root.join("config/service.toml"), "port = 8080\n")?;
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    Ok(format!(
        r#"[nats]
url = "{nats_url}"

[agent]
instance = "{instance}"
state_dir = "{state}"

[service]
name = "{service}"
root = "{root}"
supervisor = "none"
health_url = "http://127.0.0.1:{health_port}/health"
startup_timeout = "60s"

[commands]
allow = [{allow}]

[security]
trusted_keys = ["{trusted_key}"]
"#,
        state = state.display(),
        root = root.display(),
        allow = allow.join(", "),
    ))
}

/// The trivial migration every Flotilla benchmark runs: one `write_file` of a small file (a plan
/// needs at least one step), the agent's default health check, default gates.
pub const NOOP_STEP_TOML: &str = r#"[[step]]
action = "write_file"
path = "config/bench.toml"
content = "noop = true\n"
"#;

/// The plan's gates for simulated services: their "startup" is one loopback health probe, whose
/// latency under the benchmark's own load is noise, not a regression (the slack keeps the
/// startup gate from rolling a benchmark run back; the memory gate has no PID to measure).
pub const BENCH_GATES_TOML: &str = "[gates]\nstartup_slack_ms = 60000\n";

/// A benchmark's plan: `command_timeout`, [`BENCH_GATES_TOML`], `step` (a top-level `[[step]]`,
/// the default of every service) and the one service `service`.
pub fn bench_plan(name: &str, command_timeout: &str, step: &str, service: &str) -> Plan {
    Plan::new(name)
        .set("command_timeout", command_timeout)
        .service(flotilla_testkit::Service::new(service))
        .table(BENCH_GATES_TOML)
        .table(step)
}

/// A migrate command (built from JSON, so new optional fields of the contract need no change
/// here) for `service`/`instance`, with `steps`.
pub fn migrate_command(
    run_id: flotilla_schemas::RunId,
    service: &str,
    instance: &str,
    steps: serde_json::Value,
) -> anyhow::Result<Command> {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let value = serde_json::json!({
        "schema": flotilla_schemas::CommandSchema::VALUE,
        "command_id": flotilla_schemas::CommandId::new(),
        "run_id": run_id,
        "service": service,
        "instance": instance,
        "issued_at": fmt(now),
        "expires_at": fmt(now + time::Duration::seconds(120)),
        "action": { "kind": "migrate", "steps": steps },
    });
    serde_json::from_value(value).context("building a migrate command")
}

/// A finalize command for the migration `migration`.
pub fn finalize_command(migrate: &Command) -> anyhow::Result<Command> {
    let mut value = serde_json::to_value(migrate)?;
    value["command_id"] = serde_json::json!(flotilla_schemas::CommandId::new());
    value["action"] = serde_json::json!({ "kind": "finalize", "migration": migrate.command_id });
    serde_json::from_value(value).context("building a finalize command")
}

/// The default no-op steps, as JSON.
pub fn noop_steps() -> serde_json::Value {
    serde_json::json!([{ "action": "write_file", "path": "config/bench.toml", "content": "noop = true\n" }])
}

/// Publishes `command` into the commands stream, signed, the way the coordinator does
/// (`Nats-Msg-Id` = command ID), and waits for the stream's acknowledgement.
pub async fn send(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    key: &SigningKey,
    command: &Command,
) -> anyhow::Result<()> {
    let subject = subjects.command(&command.service, &command.instance);
    let payload = encode(command);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", command.command_id.to_string().as_str());
    headers.insert(HEADER_RUN_ID, command.run_id.to_string().as_str());
    headers.insert(SIGNATURE_HEADER, key.sign(&payload).as_str());
    js.publish_with_headers(subject, headers, payload.into())
        .await?
        .await?;
    Ok(())
}

/// Waits on `events` (a core subscription to the run's events) for the result of `command_id`.
pub async fn wait_result(
    events: &mut async_nats::Subscriber,
    command_id: flotilla_schemas::CommandId,
    timeout: Duration,
) -> anyhow::Result<RunResult> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let message = tokio::time::timeout_at(deadline, events.next())
            .await
            .context("no result in time")?
            .context("events subscription ended")?;
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&message.payload) else {
            continue;
        };
        if value["schema"] != flotilla_schemas::ResultSchema::VALUE
            || value["command_id"] != serde_json::json!(command_id)
        {
            continue;
        }
        return serde_json::from_value(value).context("decoding a result");
    }
}

/// Sends presence requests every `every` to one inbox until `n` distinct agents have answered
/// (or `timeout`); returns the time until then.
pub async fn wait_presence(
    client: &async_nats::Client,
    subjects: &Subjects,
    n: usize,
    every: Duration,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await?;
    let mut seen = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(every);
    while started.elapsed() < timeout {
        tokio::select! {
            _ = tick.tick() => {
                client
                    .publish_with_reply(subjects.presence(), inbox.clone(), Vec::new().into())
                    .await?;
            }
            Some(message) = answers.next() => {
                if let Ok(p) = serde_json::from_slice::<serde_json::Value>(&message.payload) {
                    seen.insert(format!("{}/{}", p["service"], p["instance"]));
                    if seen.len() >= n {
                        return Ok(started.elapsed());
                    }
                }
            }
        }
    }
    anyhow::bail!(
        "only {} of {n} agents answered presence within {timeout:?}",
        seen.len()
    )
}

/// Creates the commands and events streams and the agent registry as the coordinator does
/// (agents wait for them).
pub async fn ensure_streams(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    flotilla_bus::commands_stream(&js, subjects).await?;
    flotilla_bus::events_stream(&js, subjects).await?;
    if js.get_key_value(subjects.agents_bucket()).await.is_err() {
        js.create_key_value(flotilla_bus::registry::bucket_config(subjects))
            .await?;
    }
    Ok(())
}

/// Milliseconds of a duration, as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
