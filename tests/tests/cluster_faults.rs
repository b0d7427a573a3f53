//! Broker-node faults on a real 3-node JetStream cluster (issue 19): the leader of the commands
//! stream, of the events stream or of the run-record bucket is killed -9 at a stage of a run
//! (dispatch, mid-phase, results, rollback, finalize), a node is kept down past the command
//! timeout, and all three nodes are restarted in turn during a run. Every run must end with
//! every service fully migrated or fully restored and the record saying which (I1-I6).
//!
//! A stage is reached deterministically: the first service's plan waits at a gate (a file the
//! test creates) so the test kills the leader while the run stands where it wants it, then
//! opens the gate. The second wave's dispatch (or the rollback, or the finalize) follows the
//! first's result within milliseconds, well inside the election the kill starts (seconds).

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use flotilla_tests::invariants::Scenario;
use flotilla_tests::{Cluster, Evidence, Fleet, wait_for};
use serde_json::Value;

const ROLES: [&str; 2] = ["inference", "ingest"];
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What the test kills: the node leading one of these.
#[derive(Debug, Clone, Copy)]
enum Leader {
    Commands,
    Events,
    Runs,
}

impl Leader {
    fn stream(self) -> &'static str {
        match self {
            Leader::Commands => "FLOTILLA_COMMANDS",
            Leader::Events => "FLOTILLA_EVENTS",
            Leader::Runs => "KV_flotilla_runs",
        }
    }
}

/// A cluster, a fleet on it with the streams set up (replicated on all three nodes), and the
/// fault scenario of `roles`.
fn cluster_fleet() -> (Cluster, Fleet, Scenario) {
    let mut cluster = Cluster::start(3).unwrap();
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    let fleet = Fleet::start(&cluster.url_list(), &ROLES).unwrap();
    let setup = fleet.flotilla(&["setup"]);
    assert!(
        setup.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    for leader in [Leader::Commands, Leader::Events, Leader::Runs] {
        assert_eq!(
            cluster.stream_replicas(leader.stream()),
            Some(3),
            "{leader:?} is replicated on every node"
        );
    }
    let scenario = Scenario::new(&fleet, &ROLES, COMMAND_TIMEOUT);
    (cluster, fleet, scenario)
}

/// A step that waits until `gate` exists.
fn gate_step(gate: &Path) -> String {
    format!(
        "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"while [ ! -f {} ]; do sleep 0.05; done\"]\n",
        gate.display()
    )
}

/// A plan of two waves, `inference` first (waiting at `gate`) then `ingest`; `ingest` fails when
/// `fail_second`, which rolls `inference` back.
fn two_wave_plan(
    fleet: &Fleet,
    scenario: &Scenario,
    name: &str,
    gate: &Path,
    fail_second: bool,
) -> PathBuf {
    let mut text = format!(
        "name = \"{name}\"\ncommand_timeout = \"{}s\"\n\
         [[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n\
         [[wave]]\nname = \"rest\"\n",
        COMMAND_TIMEOUT.as_secs()
    );
    text.push_str(&scenario.service(fleet, "inference", name, &gate_step(gate)));
    if fail_second {
        text.push_str(&scenario.failing_service(fleet, "ingest", name));
    } else {
        text.push_str(&scenario.service(fleet, "ingest", name, ""));
    }
    fleet.write_plan(&format!("{name}.toml"), &text)
}

fn status(fleet: &Fleet, run: &str) -> Value {
    serde_json::from_slice(&fleet.flotilla(&["status", run, "--output", "json"]).stdout)
        .unwrap_or(Value::Null)
}

/// The newest run's ID, once the coordinator has recorded it.
fn newest_run(fleet: &Fleet) -> String {
    let mut run = String::new();
    wait_for("the run to be recorded", Duration::from_secs(30), || {
        let out = fleet.flotilla(&["status", "--output", "json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        report["run_id"]
            .as_str()
            .map(|id| run = id.to_owned())
            .is_some()
    })
    .unwrap();
    run
}

/// Waits for `child` to exit within `timeout`; its exit code (`None`: killed at the timeout).
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let mut code = None;
    let exited = wait_for("the coordinator to exit", timeout, || {
        code = child.try_wait().ok().flatten().map(|s| s.code());
        code.is_some()
    });
    if exited.is_err() {
        let _ = child.kill();
    }
    code.flatten()
}

/// Kills the leader of `leader` once the first service waits at its gate, then opens the gate,
/// and checks the run's end against the invariants. Returns the final report.
fn kill_leader_at_gate(leader: Leader, name: &str, fail_second: bool) -> Value {
    let (mut cluster, fleet, scenario) = cluster_fleet();
    let gate = fleet.dir().join(format!("{name}.gate"));
    let plan = two_wave_plan(&fleet, &scenario, name, &gate, fail_second);
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    wait_for(
        "inference to wait at its gate",
        Duration::from_secs(60),
        || scenario.count("inference", name) == 1,
    )
    .unwrap();
    let victim = cluster
        .wait_for_leader(leader.stream(), Duration::from_secs(10))
        .unwrap();
    cluster.kill(victim);
    // The gate opens at once: the survivors take seconds to elect a new leader, so what follows
    // the gate (a dispatch, results, a rollback) meets the stream leaderless.
    std::fs::write(&gate, "open").unwrap();
    let healed = Instant::now();
    let code = wait_exit(&mut coordinator, Duration::from_secs(120));
    let mut stderr = String::new();
    if let Some(mut pipe) = coordinator.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let retried = stderr.lines().filter(|l| l.contains("retrying")).count();
    eprintln!("{leader:?} leader killed at {name}: {retried} retry line(s) from the coordinator");
    let run = newest_run(&fleet);
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok(&format!("{leader:?} leader killed at {name}"));
    let report = status(&fleet, &run);
    assert!(
        !report["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == "not_delivered"),
        "an election is no reason to give a command up (coordinator exit {code:?}): {report:#}"
    );
    cluster.restart(victim).unwrap();
    report
}

#[test]
fn the_commands_leader_killed_at_dispatch_delays_the_next_wave_and_loses_nothing() {
    let report = kill_leader_at_gate(Leader::Commands, "dispatch", false);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn the_events_leader_killed_mid_phase_loses_no_result() {
    let report = kill_leader_at_gate(Leader::Events, "midphase", false);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn the_run_bucket_leader_killed_as_results_are_filed_stops_nothing() {
    let report = kill_leader_at_gate(Leader::Runs, "results", false);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn the_commands_leader_killed_before_a_rollback_still_restores_the_canary() {
    let report = kill_leader_at_gate(Leader::Commands, "rollback", true);
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = &report["services"][0];
    assert_eq!(canary["service"], "inference");
    assert_eq!(canary["status"], "rolled_back", "{report:#}");
}
