//! The soak: hundreds of migrate/rollback cycles over the demo fleet (the five T006 services
//! with their agents), each with a random fault, each checked against the invariants I1–I6,
//! while the agents' memory is sampled. Not part of `cargo test`; run it with
//!
//! ```sh
//! cargo build --workspace --bins
//! target/debug/flotilla-soak --cycles 200 [--seed N]
//! ```
//!
//! Every cycle is a `--rehearse` run (migrate, validate, roll back, finalize: the fleet ends
//! where it started) or, for the `failing` fault, a real run in which one service fails and the
//! coordinator rolls the others back. Exits 1 when any invariant broke or an agent's memory
//! grew by more than `--max-rss-growth-pct` (default 25) between the first and last samples of
//! the same process.

use std::collections::BTreeMap;
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_tests::faults::{self, rss_bytes};
use flotilla_tests::invariants::{Violation, journal_path, read_journal};
use flotilla_tests::{Cluster, Evidence, Fleet, NatsServer, Proxy, ROLES, Scenario};
use serde_json::Value;

/// The shortest agent pause: seconds, against a round trip of milliseconds.
const PAUSE: Duration = Duration::from_secs(3);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const CRASH_POINTS: [&str; 5] = [
    "accepted",
    "backed_up",
    "applying",
    "restarted",
    "validated",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    None,
    AgentCrash,
    CoordinatorKill,
    BrokerKill,
    AgentPause,
    AgentCut,
    Duplicate,
    Forged,
    Failing,
}

const FAULTS: [Fault; 9] = [
    Fault::None,
    Fault::AgentCrash,
    Fault::CoordinatorKill,
    Fault::BrokerKill,
    Fault::AgentPause,
    Fault::AgentCut,
    Fault::Duplicate,
    Fault::Forged,
    Fault::Failing,
];

/// xorshift64*: reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Options {
    cycles: usize,
    seed: u64,
    max_rss_growth_pct: f64,
    /// On a 3-node JetStream cluster: the broker fault kills a node (the leader of a stream, at
    /// random), and there are no network cuts (the proxy fronts one server).
    cluster: bool,
    /// The faults drawn from (`--faults broker-kill,none`); all by default.
    faults: Vec<Fault>,
}

/// A fault as `--faults` spells it: its name in kebab case (`broker-kill`).
fn parse_fault(name: &str) -> anyhow::Result<Fault> {
    FAULTS
        .into_iter()
        .find(|f| kebab(&format!("{f:?}")) == name)
        .with_context(|| format!("unknown fault {name:?}"))
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn options() -> anyhow::Result<Options> {
    let mut options = Options {
        cycles: 200,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            | 1,
        max_rss_growth_pct: 25.0,
        cluster: false,
        faults: FAULTS.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().context("a value after the flag");
        match arg.as_str() {
            "--cycles" => options.cycles = value()?.parse()?,
            "--seed" => options.seed = value()?.parse::<u64>()? | 1,
            "--max-rss-growth-pct" => options.max_rss_growth_pct = value()?.parse()?,
            "--cluster" => options.cluster = true,
            "--faults" => {
                options.faults = value()?
                    .split(',')
                    .map(parse_fault)
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!(
                "unknown argument {other}; usage: flotilla-soak [--cycles N] [--seed N] [--max-rss-growth-pct P] [--cluster] [--faults a,b]"
            ),
        }
    }
    Ok(options)
}

/// The broker the soak runs on.
enum Broker {
    /// One server; the agents reach it through a proxy that can cut them off.
    Single { nats: NatsServer, proxy: Proxy },
    /// A 3-node cluster, streams replicated on all three.
    Cluster(Cluster),
}

impl Broker {
    fn start(cluster: bool) -> anyhow::Result<Self> {
        if !cluster {
            let nats = NatsServer::start().context("starting nats-server")?;
            let proxy = Proxy::start(nats.url())?;
            return Ok(Broker::Single { nats, proxy });
        }
        let mut cluster = Cluster::start(3).context("starting the cluster")?;
        cluster.wait_ready(Duration::from_secs(60))?;
        Ok(Broker::Cluster(cluster))
    }

    /// What the coordinator connects to.
    fn direct(&self) -> String {
        match self {
            Broker::Single { nats, .. } => nats.url().to_owned(),
            Broker::Cluster(cluster) => cluster.url_list(),
        }
    }

    /// What the agents connect to.
    fn for_agents(&self) -> String {
        match self {
            Broker::Single { proxy, .. } => proxy.url(),
            Broker::Cluster(cluster) => cluster.url_list(),
        }
    }

    /// Kills the server (on a cluster, the node leading one of the streams, `pick` says which),
    /// leaves it down for `down`, and restarts it on its store.
    fn kill_and_restart(&mut self, down: Duration, pick: usize) -> anyhow::Result<()> {
        match self {
            Broker::Single { nats, .. } => {
                nats.kill();
                std::thread::sleep(down);
                nats.restart()
            }
            Broker::Cluster(cluster) => {
                let streams = [
                    "FLOTILLA_COMMANDS_V2",
                    "FLOTILLA_EVENTS",
                    "KV_flotilla_runs",
                ];
                let stream = streams[pick % streams.len()];
                let node = cluster
                    .stream_leader(stream)
                    .unwrap_or(pick % cluster.len());
                cluster.kill(node);
                std::thread::sleep(down);
                cluster.restart(node)?;
                cluster.wait_ready(Duration::from_secs(60))
            }
        }
    }

    fn proxy(&self) -> Option<&Proxy> {
        match self {
            Broker::Single { proxy, .. } => Some(proxy),
            Broker::Cluster(_) => None,
        }
    }
}

struct Soak {
    broker: Broker,
    fleet: Fleet,
    scenario: Scenario,
    rng: Rng,
    direct: String,
}

fn main() -> anyhow::Result<ExitCode> {
    let options = options()?;
    println!(
        "flotilla-soak: {} cycles, seed {}",
        options.cycles, options.seed
    );
    let broker = Broker::start(options.cluster)?;
    let direct = broker.direct();
    let fleet = Fleet::start(&broker.for_agents(), &ROLES).context("starting the demo fleet")?;
    // The streams first, replicated as `flotilla setup` makes them (on a cluster: on all three
    // nodes).
    let setup = fleet.flotilla_with_env(&["setup"], &[("FLOTILLA_NATS__URL", &direct)]);
    anyhow::ensure!(
        setup.status.success(),
        "flotilla setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let scenario = Scenario::new(&fleet, &ROLES, COMMAND_TIMEOUT);
    let mut soak = Soak {
        broker,
        fleet,
        scenario,
        rng: Rng(options.seed),
        direct,
    };
    println!("fleet in {}", soak.fleet.dir().display());

    let started = Instant::now();
    let mut faults_seen: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut violations: Vec<(usize, Fault, Violation)> = Vec::new();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut terminal_times: Vec<Duration> = Vec::new();
    let mut cycle_times: Vec<Duration> = Vec::new();
    // role -> (pid, first RSS, last RSS, samples)
    let mut memory: BTreeMap<String, (u32, u64, u64, usize)> = BTreeMap::new();
    let mut restarts = 0usize;
    for cycle in 0..options.cycles {
        let mut fault = options.faults[soak.rng.below(options.faults.len())];
        if fault == Fault::AgentCut && soak.broker.proxy().is_none() {
            fault = Fault::BrokerKill;
        }
        *faults_seen.entry(fault).or_default() += 1;
        let cycle_started = Instant::now();
        let outcome = soak.cycle(cycle, fault);
        cycle_times.push(cycle_started.elapsed());
        match outcome {
            Ok((status, took, verdict)) => {
                println!(
                    "cycle {cycle}: {fault:?} -> {status}, terminal {took:?} after the fault, cycle {:?}",
                    cycle_started.elapsed()
                );
                *outcomes.entry(status).or_default() += 1;
                terminal_times.push(took);
                for v in verdict {
                    println!("cycle {cycle} ({fault:?}): {}: {}", v.invariant, v.detail);
                    violations.push((cycle, fault, v));
                }
            }
            Err(e) => {
                println!("cycle {cycle} ({fault:?}): harness error: {e:#}");
                violations.push((
                    cycle,
                    fault,
                    Violation {
                        invariant: "harness",
                        detail: format!("{e:#}"),
                    },
                ));
                // Bring the fleet back to a known state before the next cycle.
                if let Some(proxy) = soak.broker.proxy() {
                    proxy.heal();
                }
                for role in ROLES {
                    if soak.fleet.agent_pid(role).is_none() {
                        soak.fleet.clear_agent_env(role);
                        let _ = soak.fleet.start_agent(role);
                    }
                    soak.fleet.signal_agent(role, "CONT");
                }
                let _ = soak.fleet.wait_ready(Duration::from_secs(30));
            }
        }
        for role in ROLES {
            let Some(pid) = soak.fleet.agent_pid(role) else {
                continue;
            };
            let Some(rss) = rss_bytes(pid) else { continue };
            let entry = memory.entry(role.to_owned()).or_insert((pid, rss, rss, 0));
            if entry.0 != pid {
                restarts += 1;
                *entry = (pid, rss, rss, 0);
            }
            // The first samples include warm-up (allocator arenas, TLS, caches): the baseline is
            // the fifth sample of a process.
            entry.3 += 1;
            if entry.3 == 5 {
                entry.1 = rss;
            }
            entry.2 = rss;
        }
        if (cycle + 1) % 10 == 0 {
            println!(
                "cycle {} done, {:?} elapsed, {} violation(s) so far",
                cycle + 1,
                started.elapsed(),
                violations.len()
            );
        }
    }

    println!("\n== flotilla-soak figures ==");
    println!(
        "cycles: {}, seed {}, wall time {:?}",
        options.cycles,
        options.seed,
        started.elapsed()
    );
    println!("faults injected: {faults_seen:?}");
    println!("run outcomes: {outcomes:?}");
    if !terminal_times.is_empty() {
        terminal_times.sort();
        cycle_times.sort();
        let pct = |v: &[Duration], p: usize| v[(v.len() - 1) * p / 100];
        println!(
            "time to terminal after the fault stopped: p50 {:?}, p95 {:?}, max {:?} (I6 bound {:?})",
            pct(&terminal_times, 50),
            pct(&terminal_times, 95),
            terminal_times.last().copied().unwrap_or_default(),
            soak.scenario.bound
        );
        println!(
            "cycle time: p50 {:?}, p95 {:?}, max {:?}",
            pct(&cycle_times, 50),
            pct(&cycle_times, 95),
            cycle_times.last().copied().unwrap_or_default()
        );
    }
    let mut memory_ok = true;
    println!(
        "agent memory (RSS of the same process, 5th sample → last; {restarts} agent restarts):"
    );
    for (role, (pid, first, last, samples)) in &memory {
        let growth = (*last as f64 - *first as f64) / *first as f64 * 100.0;
        let flat = *samples < 10 || growth <= options.max_rss_growth_pct;
        memory_ok &= flat;
        println!(
            "  {role:11} pid {pid:>7}: {:.1} MiB → {:.1} MiB ({growth:+.1}%) over {samples} samples{}",
            *first as f64 / 1048576.0,
            *last as f64 / 1048576.0,
            if flat { "" } else { "  NOT FLAT" }
        );
    }
    let journal_lines: usize = ROLES
        .iter()
        .map(|r| {
            read_journal(&journal_path(&soak.fleet, r))
                .map(|j| j.len())
                .unwrap_or(0)
        })
        .sum();
    let journal_bytes: u64 = ROLES
        .iter()
        .filter_map(|r| std::fs::metadata(journal_path(&soak.fleet, r)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "journal records across the fleet: {journal_lines} ({:.1} MiB on disk, after the agents' compactions)",
        journal_bytes as f64 / 1048576.0
    );
    println!("invariant violations: {}", violations.len());
    let mut by_invariant: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, _, v) in &violations {
        *by_invariant.entry(v.invariant).or_default() += 1;
    }
    println!("by invariant: {by_invariant:?}");
    drop(soak);
    Ok(if violations.is_empty() && memory_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

impl Soak {
    /// One cycle: a run with `fault`, then the invariant check. Returns the run's status, the
    /// time from the end of the fault to a terminal run, and the violations.
    fn cycle(
        &mut self,
        cycle: usize,
        fault: Fault,
    ) -> anyhow::Result<(String, Duration, Vec<Violation>)> {
        let tag = format!("soak-{cycle}");
        let mut scenario = self.scenario.clone();
        let slow = "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 1\"]\n";
        let failing = ROLES[self.rng.below(ROLES.len())];
        let mut plan = format!(
            "name = \"{tag}\"\ncommand_timeout = \"{}s\"\n",
            COMMAND_TIMEOUT.as_secs()
        );
        for role in ROLES {
            if fault == Fault::Failing && role == failing {
                plan.push_str(&scenario.failing_service(&self.fleet, role, &tag));
            } else {
                plan.push_str(&scenario.service(&self.fleet, role, &tag, slow));
            }
        }
        let plan = self.fleet.write_plan(&format!("{tag}.toml"), &plan);
        let plan = plan.to_str().context("UTF-8 path")?.to_owned();
        let mut args = vec![
            "migrate",
            plan.as_str(),
            "--discovery-window",
            "700ms",
            "--output",
            "json",
        ];
        if fault != Fault::Failing {
            args.push("--rehearse");
        }

        let direct_url = self.direct.clone();
        let direct = [("FLOTILLA_NATS__URL", direct_url.as_str())];
        let healed;
        let run;
        match fault {
            Fault::None | Fault::Failing | Fault::Duplicate | Fault::Forged => {
                let out = self.fleet.flotilla_with_env(&args, &direct);
                run = run_of(&out.stdout)
                    .with_context(|| format!("no run: {}", String::from_utf8_lossy(&out.stderr)))?;
                healed = Instant::now();
                if fault == Fault::Duplicate {
                    self.replay_a_command(&run)?;
                }
                if fault == Fault::Forged {
                    let id = self.forge(&run, &scenario)?;
                    scenario.forbid(id);
                }
            }
            Fault::AgentCrash => {
                let role = ROLES[self.rng.below(ROLES.len())];
                let point = CRASH_POINTS[self.rng.below(CRASH_POINTS.len())];
                self.fleet.stop_agent(role);
                self.fleet
                    .set_agent_env(role, flotilla_agent::crashpoint::ENV, point);
                self.fleet.start_agent(role)?;
                self.fleet.wait_ready(Duration::from_secs(30))?;
                let marker = self
                    .fleet
                    .dir()
                    .join("state")
                    .join(role)
                    .join(format!("crashpoint-{point}"));
                let _ = std::fs::remove_file(&marker);
                let mut child = self.fleet.spawn_flotilla_with_env(&args, &direct);
                let reached =
                    flotilla_tests::wait_for("the crash point", Duration::from_secs(30), || {
                        marker.exists()
                    });
                self.fleet.kill_agent(role);
                self.fleet.clear_agent_env(role);
                let _ = std::fs::remove_file(&marker);
                let restarted = self.fleet.start_agent(role);
                healed = Instant::now();
                run = self.finish(&mut child, &direct)?;
                restarted?;
                if let Err(e) = reached {
                    // The fault did not land (e.g. the migration of that service was refused
                    // before its crash point): the run is still checked like any other.
                    println!("cycle {cycle}: {role} never reached {point}: {e:#}");
                }
            }
            Fault::CoordinatorKill => {
                let mut child = self.fleet.spawn_flotilla_with_env(&args, &direct);
                let id = self
                    .wait_in_flight(&mut child, &tag, Duration::from_secs(30))
                    .map_err(|e| with_output(&mut child, e))?;
                std::thread::sleep(Duration::from_millis(self.rng.below(1500) as u64));
                let _ = child.kill();
                let _ = child.wait();
                healed = Instant::now();
                let out = self
                    .fleet
                    .flotilla_with_env(&["resume", &id, "--output", "json"], &direct);
                if !matches!(out.status.code(), Some(0 | 1 | 2 | 6)) {
                    anyhow::bail!("resume failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                run = id;
            }
            Fault::BrokerKill => {
                let mut child = self.fleet.spawn_flotilla_with_env(&args, &direct);
                self.wait_in_flight(&mut child, &tag, Duration::from_secs(30))
                    .map_err(|e| with_output(&mut child, e))?;
                let down = Duration::from_millis(200 + self.rng.below(1500) as u64);
                let pick = self.rng.below(3);
                self.broker.kill_and_restart(down, pick)?;
                healed = Instant::now();
                run = self.finish(&mut child, &direct)?;
            }
            Fault::AgentPause => {
                let role = ROLES[self.rng.below(ROLES.len())];
                let mut child = self.fleet.spawn_flotilla_with_env(&args, &direct);
                self.wait_in_flight(&mut child, &tag, Duration::from_secs(30))
                    .map_err(|e| with_output(&mut child, e))?;
                self.fleet.signal_agent(role, "STOP");
                std::thread::sleep(
                    PAUSE + Duration::from_millis(500 + self.rng.below(2000) as u64),
                );
                self.fleet.signal_agent(role, "CONT");
                healed = Instant::now();
                run = self.finish(&mut child, &direct)?;
            }
            Fault::AgentCut => {
                let mut child = self.fleet.spawn_flotilla_with_env(&args, &direct);
                self.wait_in_flight(&mut child, &tag, Duration::from_secs(30))
                    .map_err(|e| with_output(&mut child, e))?;
                let length = Duration::from_millis(500 + self.rng.below(4000) as u64);
                let proxy = self.broker.proxy().context("cuts need the proxy")?;
                proxy.cut_for(length);
                if self.rng.below(2) == 0 {
                    proxy.reset();
                }
                healed = Instant::now();
                run = self.finish(&mut child, &direct)?;
            }
        }
        let took = scenario.wait_terminal(&self.fleet, &run, healed)?;
        let evidence = Evidence::collect(&self.fleet, &scenario, &run)?;
        let verdict = scenario.check(&evidence, Some(took));
        let status = evidence.report["status"].as_str().unwrap_or("?").to_owned();
        Ok((status, took, verdict.violations))
    }

    /// The run `child` drives, once one of its services is in flight (or the run ended): its
    /// ID, read from the coordinator's first line (`run <id>: …`) so that no listing of every
    /// run is needed. The coordinator's stderr is drained from then on.
    fn wait_in_flight(
        &self,
        child: &mut Child,
        tag: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        // Drained, so the coordinator never blocks on a full pipe; with `--output json` it
        // prints no progress, and the run is found in the store by its plan's name.
        let mut stderr = child.stderr.take().context("the coordinator's stderr")?;
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()).ok());
        let mut id = None;
        while id.is_none() && Instant::now() < deadline {
            id = runs(&self.fleet)
                .iter()
                .find(|r| r["plan"] == tag)
                .and_then(|r| r["run_id"].as_str().map(str::to_owned));
            if id.is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let Some(id) = id else {
            anyhow::bail!("no run of plan {tag} recorded within {timeout:?}")
        };
        while Instant::now() < deadline {
            let report = status(&self.fleet, &id);
            if report["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["status"] == "in_flight"))
                || (report["status"].is_string() && report["status"] != "running")
            {
                return Ok(id);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("run {id}: no migration in flight within {timeout:?}")
    }

    /// Waits for the coordinator; resumes the run when the coordinator stopped without ending
    /// it (e.g. it lost the broker). Returns the run's ID.
    fn finish(&mut self, child: &mut Child, direct: &[(&str, &str)]) -> anyhow::Result<String> {
        let deadline = Instant::now() + COMMAND_TIMEOUT * 3;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let mut stdout = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            use std::io::Read;
            let _ = out.read_to_end(&mut stdout);
        }
        let _ = child.wait();
        let run = match run_of(&stdout) {
            Some(run) => run,
            None => newest(&self.fleet).context("no run recorded")?,
        };
        if status(&self.fleet, &run)["status"] == "running" {
            let out = self
                .fleet
                .flotilla_with_env(&["resume", &run, "--output", "json"], direct);
            if !matches!(out.status.code(), Some(0 | 1 | 6)) {
                anyhow::bail!("resume failed: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(run)
    }

    /// Publishes one of the run's recorded commands again under a new message ID (a duplicate
    /// the broker cannot dedupe); the agent must answer it from its journal.
    fn replay_a_command(&mut self, run: &str) -> anyhow::Result<()> {
        let role = ROLES[self.rng.below(ROLES.len())];
        let target = ROLES.iter().position(|r| *r == role).context("a role")?;
        let (targets, _) = read_targets(&self.direct, run)?;
        let Some(target) = targets
            .iter()
            .find(|t| t["service"] == role)
            .or(targets.get(target))
        else {
            anyhow::bail!("no target record for {role}");
        };
        let kinds = ["migrate", "rollback", "finalize"];
        let kind = kinds[self.rng.below(kinds.len())];
        let command = &target[kind]["command"];
        if !command.is_object() {
            return Ok(());
        }
        let payload = serde_json::to_vec(command)?;
        faults::publish_command(
            &self.direct,
            role,
            payload,
            Some(&self.fleet.signing_key()),
            &faults::new_id(),
        )?;
        let id = command["command_id"].as_str().unwrap_or_default();
        let results = faults::results_of(&self.direct, run, id, 2, Duration::from_secs(20))?;
        anyhow::ensure!(
            results.len() >= 2 && results.iter().skip(1).all(|r| r["replayed"] == true),
            "the duplicate of {id} was not answered as a replay: {results:?}"
        );
        Ok(())
    }

    /// Publishes a command that must do nothing (unsigned, signed by a stranger, expired, or
    /// issued in the future beyond the clock skew) under the run's ID; returns its ID.
    fn forge(&mut self, run: &str, scenario: &Scenario) -> anyhow::Result<String> {
        let role = ROLES[self.rng.below(ROLES.len())];
        let id = faults::new_id();
        let now = time::OffsetDateTime::now_utc();
        let (issued, expires, key) = match self.rng.below(4) {
            0 => (now, now + time::Duration::minutes(5), None),
            1 => (
                now,
                now + time::Duration::minutes(5),
                Some(flotilla_bus::signing::SigningKey::generate()?),
            ),
            2 => (
                now - time::Duration::hours(1),
                now - time::Duration::minutes(10),
                Some(self.fleet.signing_key()),
            ),
            _ => (
                now + time::Duration::minutes(10),
                now + time::Duration::minutes(20),
                Some(self.fleet.signing_key()),
            ),
        };
        let command = faults::command_json(
            role,
            run,
            &id,
            issued,
            expires,
            faults::counting_action(&scenario.counter(role), &id),
        );
        faults::publish_command(
            &self.direct,
            role,
            serde_json::to_vec(&command)?,
            key.as_ref(),
            &id,
        )?;
        let results = faults::results_of(&self.direct, run, &id, 1, Duration::from_secs(20))?;
        anyhow::ensure!(
            results.first().is_some_and(|r| r["outcome"] == "refused"),
            "forged {id} was not refused: {results:?}"
        );
        Ok(id)
    }
}

/// Stops a coordinator that did not get as far as expected, and adds what it said to `error`.
fn with_output(child: &mut Child, error: anyhow::Error) -> anyhow::Error {
    use std::io::Read;
    let _ = child.kill();
    let _ = child.wait();
    let mut said = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut said);
    }
    let tail: Vec<&str> = said.lines().rev().take(5).collect();
    error.context(format!("the coordinator said: {tail:?}"))
}

fn run_of(stdout: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdout)
        .ok()?
        .get("run_id")?
        .as_str()
        .map(str::to_owned)
}

fn status(fleet: &Fleet, run: &str) -> Value {
    serde_json::from_slice(&fleet.flotilla(&["status", run, "--output", "json"]).stdout)
        .unwrap_or(Value::Null)
}

fn runs(fleet: &Fleet) -> Vec<Value> {
    serde_json::from_slice::<Value>(&fleet.flotilla(&["runs", "--output", "json"]).stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// The most recently started run.
fn newest(fleet: &Fleet) -> Option<String> {
    runs(fleet)
        .into_iter()
        .max_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()))
        .and_then(|r| r["run_id"].as_str().map(str::to_owned))
}

fn read_targets(url: &str, run: &str) -> anyhow::Result<(Vec<Value>, ())> {
    let (url, run) = (url.to_owned(), run.to_owned());
    faults::block_on(async move {
        let client = faults::connect(&url).await?;
        let js = async_nats::jetstream::new(client);
        let kv = js
            .get_key_value(flotilla_schemas::subjects::Subjects::default().runs_bucket())
            .await?;
        let targets = flotilla_tests::run_store::target_records(&kv, &run).await?;
        Ok((targets, ()))
    })
}
