//! `fleet`: the real `flotilla migrate` over N simulated agents (see [`crate::sim`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::common::{self, Stats, Sync};
use crate::cost::{Cost, Fsyncs, Snapshot};
use crate::servers::{self, Servers};
use crate::sim::SimFleet;

/// One `flotilla migrate` process: wall time, CPU, peak memory, and what it reported.
pub struct CoordinatorRun {
    pub wall: Duration,
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    pub exit: i32,
    pub services: usize,
    pub succeeded: usize,
    pub json: serde_json::Value,
}

/// Runs `flotilla migrate plan` against `nats_url` and measures it. The coordinator's
/// OpenTelemetry is off (`OTEL_SDK_DISABLED=true`): the simulated agents export no telemetry,
/// so the correlation check would have nothing to read.
pub async fn run_coordinator(
    nats_url: &str,
    key_path: &Path,
    plan: &Path,
    extra: &[&str],
    log: &Path,
) -> anyhow::Result<CoordinatorRun> {
    let before = common::cpu_of("self").context("own /proc stat")?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(flotilla_testkit::binary("flotilla"))
        .arg("migrate")
        .arg(plan)
        .args(["--output", "json", "--no-verify"])
        .args(extra)
        .env("FLOTILLA_NATS__URL", nats_url)
        .env("FLOTILLA_SIGNING_KEY", key_path)
        .env("OTEL_SDK_DISABLED", "true")
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .context("starting flotilla migrate")?;
    let pid = child.id().context("child pid")?.to_string();
    let mut stdout = child.stdout.take().context("stdout")?;
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stdout, &mut out).await;
        out
    });
    let mut peak = 0u64;
    let status = loop {
        if let Some(hwm) = common::status_kib(&pid, "VmHWM:") {
            peak = peak.max(hwm);
        }
        tokio::select! {
            status = child.wait() => break status?,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let wall = started.elapsed();
    let after = common::cpu_of("self").context("own /proc stat")?;
    let out = reader.await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(
        |_| serde_json::json!({ "unparsed": String::from_utf8_lossy(&out).to_string() }),
    );
    let services = json["services"].as_array().map_or(0, Vec::len);
    let succeeded = json["services"].as_array().map_or(0, |s| {
        s.iter().filter(|s| s["status"] == "succeeded").count()
    });
    Ok(CoordinatorRun {
        wall,
        cpu_s: after.children - before.children,
        peak_rss_kib: peak,
        exit: status.code().unwrap_or(-1),
        services,
        succeeded,
        json,
    })
}

/// One N's figures.
struct Row {
    n: usize,
    ready_s: f64,
    wall: Stats,
    cpu: Stats,
    rss_mib: Stats,
    sim_cpu: Stats,
    nats_cpu: Stats,
    hub_cpu: Stats,
    leaf_cpu: Stats,
    /// The leaf-node servers the agents were on (0: one server).
    leaves: usize,
    agent_phase_ms: Stats,
    /// What the last timed run asked of the broker, per agent.
    cost: Cost,
}

/// One N's measurements, run by run.
#[derive(Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    rss_mib: Vec<f64>,
    sim_cpu: Vec<f64>,
    nats_cpu: Vec<f64>,
    hub_cpu: Vec<f64>,
    leaf_cpu: Vec<f64>,
    agent_phase_ms: Vec<f64>,
}

/// How the fleet bench runs: the nats-server's sync, the optional fsync count, and the cap on
/// agents migrating at once for large fleets.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub runs: usize,
    pub sync: Sync,
    pub fsyncs: bool,
    /// The plan's `max_parallel` for every N above it (smaller fleets' plans have none, as in
    /// every earlier sitting). The simulator runs all N agents on this machine's cores: with
    /// 10,000 dispatched at once their health servers missed the agent's 2 s precheck probe,
    /// and the run measured the simulator, not the protocol.
    pub max_parallel: usize,
    /// Leaf-node servers for the agents; `None`: [`servers::leaves_for`].
    pub leaves: Option<usize>,
}

impl Options {
    /// The plan's cap for `n` agents, if any.
    pub fn cap_for(&self, n: usize) -> Option<usize> {
        (n > self.max_parallel).then_some(self.max_parallel)
    }
}

pub async fn fleet(counts: &[usize], options: Options) -> anyhow::Result<()> {
    let limit = common::raise_fd_limit();
    eprintln!("open-file limit {limit}");
    let mut rows = Vec::new();
    for &n in counts {
        let leaves = options
            .leaves
            .unwrap_or_else(|| servers::leaves_for(n, limit));
        if options.leaves.is_none() && leaves > 0 {
            eprintln!(
                "fleet N={n}: more agents than one nats-server's {limit} open files hold: \
                 a JetStream hub and {leaves} leaf nodes (about {} agents per leaf)",
                servers::AGENTS_PER_LEAF
            );
        }
        rows.push(measure(n, leaves, &options).await?);
    }
    print_table(&rows, &options);
    print_cost(&rows);
    Ok(())
}

/// `runs` no-op migrations over N simulated agents, on a nats-server of their own.
async fn measure(n: usize, leaves: usize, options: &Options) -> anyhow::Result<Row> {
    let Options {
        runs, sync, fsyncs, ..
    } = *options;
    let servers = Servers::start(sync, leaves)?;
    servers.ensure_room_for(n)?;
    let nats_pid = servers.hub.pid.clone();
    eprintln!(
        "fleet N={n}: starting {n} simulated agents ({})",
        servers.label()
    );
    let sim = SimFleet::start_over(
        servers.hub_url(),
        &servers.agent_urls(),
        servers.agent_domain(),
        "noop",
        n,
        &[],
    )
    .await?;
    eprintln!(
        "fleet N={n}: all agents ready after {:.1} s",
        sim.ready_after.as_secs_f64()
    );
    let plan = sim.dir.path().join("plan.toml");
    let mut text = common::bench_plan("bench-noop", "600s", common::NOOP_STEP_TOML, "noop");
    if let Some(cap) = options.cap_for(n) {
        text = text.raw(&format!("max_parallel = {cap}"));
    }
    std::fs::write(&plan, text.to_string())?;
    // Discovery ends as soon as every registered agent answered; the window only bounds a
    // fleet that does not. Behind leaf nodes 50,000 answers took longer than 10 s to arrive.
    let window = match n {
        0..1000 => "2s",
        1000..20_000 => "10s",
        _ => "60s",
    };
    let mut samples = Samples::default();
    let mut cost = Cost::default();
    let monitor_port = servers.hub_monitoring_port()?;
    for run in 0..runs {
        let counters = Snapshot::take(monitor_port)?;
        let own = sim.cpu();
        let (hub_before, leaves_before) = servers.cpu();
        let log = sim.dir.path().join(format!("flotilla-{run}.log"));
        let extra = ["--discovery-window", window];
        let r = run_coordinator(servers.hub_url(), &sim.key_path, &plan, &extra, &log).await?;
        let own_after = sim.cpu();
        let (hub_after, leaves_after) = servers.cpu();
        let (hub, leaf) = (hub_after - hub_before, leaves_after - leaves_before);
        eprintln!(
            "fleet N={n} run {}: nats-server CPU {:.1} s (hub {hub:.1} s, leaves {leaf:.1} s)",
            run + 1,
            hub + leaf
        );
        let slowest = check_run(n, run, &r)
            .map_err(|e| e.context(format!("{}\n{}", log_tail(&log), keep_evidence(&log, &r))))?;
        cost = Cost::between(&counters, &Snapshot::take(monitor_port)?, n);
        samples.wall.push(r.wall.as_secs_f64());
        samples.cpu.push(r.cpu_s);
        samples.rss_mib.push(r.peak_rss_kib as f64 / 1024.0);
        samples.sim_cpu.push(own_after - own);
        samples.nats_cpu.push(hub + leaf);
        samples.hub_cpu.push(hub);
        samples.leaf_cpu.push(leaf);
        samples.agent_phase_ms.push(slowest);
    }
    if fsyncs {
        let traced = Fsyncs::attach(&nats_pid, sim.dir.path())?;
        let log = sim.dir.path().join("flotilla-fsyncs.log");
        let extra = ["--discovery-window", window];
        let r = run_coordinator(servers.hub_url(), &sim.key_path, &plan, &extra, &log).await?;
        let calls = traced.stop()?;
        check_run(n, runs, &r)?;
        cost.fsyncs = Some(calls as f64 / n as f64);
    }
    let row = Row {
        n,
        ready_s: sim.ready_after.as_secs_f64(),
        wall: Stats::new(samples.wall),
        cpu: Stats::new(samples.cpu),
        rss_mib: Stats::new(samples.rss_mib),
        sim_cpu: Stats::new(samples.sim_cpu),
        nats_cpu: Stats::new(samples.nats_cpu),
        hub_cpu: Stats::new(samples.hub_cpu),
        leaf_cpu: Stats::new(samples.leaf_cpu),
        leaves,
        agent_phase_ms: Stats::new(samples.agent_phase_ms),
        cost,
    };
    sim.stop().await;
    drop(servers);
    Ok(row)
}

/// Reports run `run` on stderr, fails unless every agent succeeded, and returns the agents' own
/// time: the slowest agent's sum of phase durations.
fn check_run(n: usize, run: usize, r: &CoordinatorRun) -> anyhow::Result<f64> {
    eprintln!(
        "fleet N={n} run {}: {:.3} s, exit {}, {}/{} succeeded, coordinator {:.2} CPU-s, {} MiB peak",
        run + 1,
        r.wall.as_secs_f64(),
        r.exit,
        r.succeeded,
        r.services,
        r.cpu_s,
        r.peak_rss_kib / 1024
    );
    ensure!(
        r.exit == 0 && r.services == n && r.succeeded == n,
        "run {} over N={n} did not succeed everywhere (exit {}, {}/{} of {n}): {}",
        run + 1,
        r.exit,
        r.succeeded,
        r.services,
        reasons(&r.json)
    );
    let slowest = r.json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["duration_ms"].as_f64())
                .sum::<f64>()
        })
        .fold(0.0, f64::max);
    eprintln!(
        "fleet N={n} run {}: agents' phases {}",
        run + 1,
        phase_spread(&r.json)
    );
    Ok(slowest)
}

fn print_table(rows: &[Row], options: &Options) {
    let Options {
        runs,
        sync,
        max_parallel,
        ..
    } = *options;
    println!(
        "## fleet: no-op migration (`flotilla migrate`, discovery → pre-flight → dispatch → 5 phases → results → finalize) over N simulated agents\n"
    );
    println!(
        "{}; nats-server with {}; {runs} run(s) per N; median (min–max)\n",
        common::machine(),
        sync.label()
    );
    if rows.iter().any(|r| r.n > max_parallel) {
        println!(
            "Plans for N above {max_parallel} set `max_parallel = {max_parallel}` (at most that many agents migrating at once): \
             the simulator runs every agent on this machine's cores, and with all of them dispatched at once \
             its health servers missed the agent's 2 s precheck probe. Smaller N: no cap, as in earlier sittings.\n"
        );
    }
    let base = rows.first().map(|r| (r.n, r.wall.median()));
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let per_agent_ms = r.wall.median() * 1000.0 / r.n as f64;
            let growth = base.map_or(String::new(), |(n0, w0)| {
                format!(
                    "×{:.1} for ×{:.0} agents",
                    r.wall.median() / w0,
                    r.n as f64 / n0 as f64
                )
            });
            vec![
                r.n.to_string(),
                r.wall.mmm(3),
                format!("{per_agent_ms:.2}"),
                growth,
                r.cpu.mmm(2),
                r.rss_mib.mmm(1),
                r.sim_cpu.mmm(1),
                r.nats_cpu.mmm(1),
                format!("{:.1} / {:.1}", r.hub_cpu.median(), r.leaf_cpu.median()),
                servers::label(r.leaves),
                format!("{:.0}", r.agent_phase_ms.median()),
                format!("{:.1}", r.ready_s),
                options
                    .cap_for(r.n)
                    .map_or("none".into(), |c| c.to_string()),
            ]
        })
        .collect();
    common::table(
        &[
            "N",
            "wall s",
            "ms per agent",
            "growth vs first N",
            "coordinator CPU s",
            "coordinator peak RSS MiB",
            "agents' CPU s (simulator processes)",
            "nats-server CPU s (all servers)",
            "of which hub / leaves s",
            "servers",
            "slowest agent's phases ms",
            "fleet start-up s",
            "plan's max_parallel",
        ],
        &table_rows,
    );
}

/// The cost model: what one run asked of the broker, per agent.
fn print_cost(rows: &[Row]) {
    println!(
        "\n## fleet: what one no-op run asks of nats-server, per agent (the last timed run)\n"
    );
    if rows.iter().any(|r| r.leaves > 0) {
        println!(
            "With leaf nodes, the counters are the hub's (JetStream and what reaches it through \
             the leaves); the CPU is every server's.\n"
        );
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let c = &r.cost;
            vec![
                r.n.to_string(),
                format!("{:.1}", c.in_msgs),
                format!("{:.1}", c.out_msgs),
                format!("{:.1}", c.api_calls),
                format!("{:.1}", c.stored_total()),
                c.stored_by_stream(),
                format!("{:.2}", c.consumers),
                c.fsyncs.map_or("not counted".into(), |f| format!("{f:.1}")),
                format!("{:.3}", r.nats_cpu.median() * 1000.0 / r.n as f64),
            ]
        })
        .collect();
    common::table(
        &[
            "N",
            "messages in",
            "messages out",
            "JetStream API calls",
            "stored messages",
            "stored, by stream",
            "consumers left",
            "nats-server fsyncs",
            "nats-server CPU ms",
        ],
        &table_rows,
    );
}

/// The coordinator's last log lines, for the error of a run that failed.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "flotilla's log ends:\n{}",
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// What a report says went wrong, for an error message: the run's status, how many services
/// ended in each status, and the three most common reasons with their counts (or the start of
/// what the coordinator printed, when that was no report).
pub fn reasons(json: &serde_json::Value) -> String {
    let Some(services) = json["services"].as_array() else {
        let printed: String = json.to_string().chars().take(500).collect();
        return format!("no report printed: {printed}");
    };
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for s in services {
        let status = s["status"].as_str().unwrap_or("(none)");
        *statuses.entry(status.to_owned()).or_default() += 1;
        if status != "succeeded" {
            *why.entry(format!("{status}: {}", s["reason"])).or_default() += 1;
        }
    }
    let mut why: Vec<(String, usize)> = why.into_iter().collect();
    why.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let counts: Vec<String> = statuses.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let top: Vec<String> = why
        .iter()
        .take(3)
        .map(|(w, n)| format!("{n}× {w}"))
        .collect();
    format!(
        "run {}, services: {}; {}",
        json["status"],
        counts.join(", "),
        top.join(" | ")
    )
}

/// Copies a failed run's log and report out of the simulator's directory (which goes with it)
/// to a directory of its own under the system's temporary one, and says where.
fn keep_evidence(log: &Path, r: &CoordinatorRun) -> String {
    let kept = tempfile::Builder::new()
        .prefix("flotilla-bench-failed-")
        .tempdir()
        .map(tempfile::TempDir::keep);
    let copied = kept.and_then(|kept| {
        std::fs::copy(log, kept.join("flotilla.log"))?;
        std::fs::write(kept.join("report.json"), r.json.to_string())?;
        Ok(kept)
    });
    match copied {
        Ok(kept) => format!("its log and report are kept in {}", kept.display()),
        Err(e) => format!("could not keep its log and report: {e}"),
    }
}

/// Each phase's median and maximum duration over the run's services, in ms: where the agents'
/// time went.
fn phase_spread(json: &serde_json::Value) -> String {
    let mut by_phase: BTreeMap<String, Vec<f64>> = Default::default();
    for phase in json["services"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["phases"].as_array().into_iter().flatten())
    {
        if let (Some(name), Some(ms)) = (phase["phase"].as_str(), phase["duration_ms"].as_f64()) {
            by_phase.entry(name.to_owned()).or_default().push(ms);
        }
    }
    by_phase
        .into_iter()
        .map(|(name, mut ms)| {
            ms.sort_by(f64::total_cmp);
            format!(
                "{name} {:.0}/{:.0}",
                ms[ms.len() / 2],
                ms.last().copied().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
        + " (median/max ms)"
}
