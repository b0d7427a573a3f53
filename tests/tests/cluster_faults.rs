//! Broker-node faults on a real 3-node JetStream cluster (issue 19): the leader of the commands
//! stream, of the events stream or of the run-record bucket is killed -9 at each stage of a run
//! (mid-phase, as its result is filed and the next wave dispatched; before a rollback; before
//! finalize), the telemetry stream's leader before the correlation check, a node down for a
//! whole run, all three nodes restarted in turn during a run, and the quorum lost for 16 s.
//! Every run must end with every service fully migrated or fully restored and the record
//! saying which (I1-I6).
//!
//! A stage is reached deterministically: the gated service's plan waits at a gate (a file the
//! test creates) so the test strikes while the run stands where it wants it, then opens the
//! gate. What follows the gate (the next dispatch, the rollback, the finalize) comes within
//! milliseconds, well inside the election the kill starts (seconds).

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
    Telemetry,
}

impl Leader {
    fn stream(self) -> &'static str {
        match self {
            Leader::Commands => "FLOTILLA_COMMANDS_V2",
            Leader::Events => "FLOTILLA_EVENTS",
            Leader::Runs => "KV_flotilla_runs",
            Leader::Telemetry => "FLOTILLA_TELEMETRY",
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
    for leader in [
        Leader::Commands,
        Leader::Events,
        Leader::Runs,
        Leader::Telemetry,
    ] {
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

/// Where a run stands when the test strikes: the service that waits at the gate, and whether
/// the second wave's service fails (which rolls the first back).
#[derive(Debug, Clone, Copy)]
struct Stage {
    gated: &'static str,
    fail_second: bool,
}

/// The first wave's service waits: what follows the gate is its result, then the next dispatch.
const FIRST_WAVE: Stage = Stage {
    gated: "inference",
    fail_second: false,
};

/// A plan of two waves, `inference` then `ingest`, the `stage.gated` one waiting at `gate`;
/// `ingest` fails when `stage.fail_second`, which rolls `inference` back.
fn two_wave_plan(
    fleet: &Fleet,
    scenario: &Scenario,
    name: &str,
    gate: &Path,
    stage: Stage,
) -> PathBuf {
    let mut text = format!(
        "name = \"{name}\"\ncommand_timeout = \"{}s\"\n\
         [[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n\
         [[wave]]\nname = \"rest\"\n",
        COMMAND_TIMEOUT.as_secs()
    );
    let extra = |role: &str| {
        if role == stage.gated {
            gate_step(gate)
        } else {
            String::new()
        }
    };
    text.push_str(&scenario.service(fleet, "inference", name, &extra("inference")));
    if stage.fail_second {
        text.push_str(&scenario.failing_service(fleet, "ingest", name));
    } else {
        text.push_str(&scenario.service(fleet, "ingest", name, &extra("ingest")));
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

/// How a run that struck ended: its report, the coordinator's exit code, the cluster.
struct Struck {
    cluster: Cluster,
    report: Value,
    code: Option<i32>,
}

/// Runs the two-wave plan until `stage.gated` waits at its gate, then lets `strike` do its
/// damage to the cluster; `strike` opens the gate (the path it is given) when the run should
/// go on. Then checks the run's end against the invariants, and that no command was given up
/// for want of a leader.
fn strike_at_gate(name: &str, stage: Stage, strike: impl FnOnce(&mut Cluster, &Path)) -> Struck {
    let (mut cluster, fleet, scenario) = cluster_fleet();
    let gate = fleet.dir().join(format!("{name}.gate"));
    let plan = two_wave_plan(&fleet, &scenario, name, &gate, stage);
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    wait_for(
        &format!("{} to wait at its gate", stage.gated),
        Duration::from_secs(60),
        || scenario.count(stage.gated, name) == 1,
    )
    .unwrap();
    strike(&mut cluster, &gate);
    let healed = Instant::now();
    let code = wait_exit(&mut coordinator, Duration::from_secs(120));
    let mut stderr = String::new();
    if let Some(mut pipe) = coordinator.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let retried = stderr.lines().filter(|l| l.contains("retrying")).count();
    eprintln!("{name}: {retried} retry line(s) from the coordinator");
    let run = newest_run(&fleet);
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario.check(&evidence, Some(took)).assert_ok(name);
    let report = status(&fleet, &run);
    assert!(
        !report["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["status"] == "not_delivered"),
        "an outage is no reason to give a command up (coordinator exit {code:?}): {report:#}"
    );
    Struck {
        cluster,
        report,
        code,
    }
}

/// Kills the leader of `leader` once the gated service waits at its gate, then opens the gate
/// at once: the survivors take seconds to elect a new leader, so what follows the gate (a
/// dispatch, results, a rollback, a finalize) meets the stream leaderless. Returns the report.
fn kill_leader_at_gate(leader: Leader, name: &str, stage: Stage) -> Value {
    let mut victim = None;
    let mut struck = strike_at_gate(name, stage, |cluster, gate| {
        let leads = cluster
            .wait_for_leader(leader.stream(), Duration::from_secs(10))
            .unwrap();
        cluster.kill(leads);
        victim = Some(leads);
        std::fs::write(gate, "open").unwrap();
    });
    if let Some(victim) = victim {
        struck.cluster.restart(victim).unwrap();
    }
    struck.report
}

#[test]
fn the_commands_leader_killed_at_dispatch_delays_the_next_wave_and_loses_nothing() {
    let report = kill_leader_at_gate(Leader::Commands, "dispatch", FIRST_WAVE);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn the_events_leader_killed_mid_phase_loses_no_result() {
    let report = kill_leader_at_gate(Leader::Events, "midphase", FIRST_WAVE);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

#[test]
fn the_run_bucket_leader_killed_as_results_are_filed_stops_nothing() {
    let report = kill_leader_at_gate(Leader::Runs, "results", FIRST_WAVE);
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

/// The first service waits; the second then fails at once, which rolls the first back: the
/// rollback follows the kill within milliseconds.
const BEFORE_ROLLBACK: Stage = Stage {
    gated: "inference",
    fail_second: true,
};

/// The last service waits; what follows the gate is the correlation check (which reads the
/// telemetry stream) and the finalize of both services.
const BEFORE_FINALIZE: Stage = Stage {
    gated: "ingest",
    fail_second: false,
};

/// The run failed on the second service and restored the canary.
fn assert_canary_restored(report: &Value) {
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = &report["services"][0];
    assert_eq!(canary["service"], "inference");
    assert_eq!(canary["status"], "rolled_back", "{report:#}");
}

/// The run succeeded and finalized both services.
fn assert_finalized(report: &Value) {
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["finalized"], true, "{report:#}");
}

#[test]
fn the_commands_leader_killed_before_a_rollback_still_restores_the_canary() {
    assert_canary_restored(&kill_leader_at_gate(
        Leader::Commands,
        "rollback",
        BEFORE_ROLLBACK,
    ));
}

#[test]
fn the_events_leader_killed_before_a_rollback_still_restores_the_canary() {
    assert_canary_restored(&kill_leader_at_gate(
        Leader::Events,
        "rollback-events",
        BEFORE_ROLLBACK,
    ));
}

#[test]
fn the_run_bucket_leader_killed_before_a_rollback_still_restores_the_canary() {
    assert_canary_restored(&kill_leader_at_gate(
        Leader::Runs,
        "rollback-runs",
        BEFORE_ROLLBACK,
    ));
}

#[test]
fn the_run_bucket_leader_killed_before_finalize_finalizes_both() {
    assert_finalized(&kill_leader_at_gate(
        Leader::Runs,
        "finalize",
        BEFORE_FINALIZE,
    ));
}

#[test]
fn the_commands_leader_killed_before_finalize_finalizes_both() {
    assert_finalized(&kill_leader_at_gate(
        Leader::Commands,
        "finalize-commands",
        BEFORE_FINALIZE,
    ));
}

#[test]
fn the_events_leader_killed_before_finalize_finalizes_both() {
    assert_finalized(&kill_leader_at_gate(
        Leader::Events,
        "finalize-events",
        BEFORE_FINALIZE,
    ));
}

/// The telemetry stream's leader dies just before the correlation check reads the trace from
/// it: the check reads again until its deadline, and the run is proven and finalized.
#[test]
fn the_telemetry_leader_killed_before_the_correlation_check_finalizes_both() {
    assert_finalized(&kill_leader_at_gate(
        Leader::Telemetry,
        "finalize-telemetry",
        BEFORE_FINALIZE,
    ));
}

/// One node is down from before the run to after it, longer than the command timeout: two of
/// three keep every stream's quorum, and the run does not notice.
#[test]
fn a_node_down_for_the_whole_run_changes_nothing() {
    let (mut cluster, fleet, scenario) = cluster_fleet();
    cluster.kill(0);
    let plan = fleet.write_plan("down.toml", &scenario.plan(&fleet, "down", "", ""));
    let started = Instant::now();
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = report["run_id"].as_str().unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, run).unwrap();
    scenario.check(&evidence, None).assert_ok("a node down");
    assert!(started.elapsed() > Duration::ZERO);
    cluster.restart(0).unwrap();
}

/// Every node is restarted in turn (kill -9, restart on its store, caught up) while the first
/// service waits at its gate; then the run goes on and ends as it would have.
#[test]
fn a_rolling_restart_of_all_three_nodes_during_a_run_loses_nothing() {
    let struck = strike_at_gate("rolling", FIRST_WAVE, |cluster, gate| {
        for node in 0..cluster.len() {
            cluster.kill(node);
            cluster.restart(node).unwrap();
            cluster.wait_ready(Duration::from_secs(60)).unwrap();
            for leader in [Leader::Commands, Leader::Events, Leader::Runs] {
                cluster
                    .wait_for_leader(leader.stream(), Duration::from_secs(60))
                    .unwrap();
            }
        }
        std::fs::write(gate, "open").unwrap();
    });
    let report = &struck.report;
    assert_eq!(struck.code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded", "{report:#}");
}

/// Two of the three nodes are killed as the first service's result comes: no stream and no
/// bucket has a quorum, so none can elect a leader, for 16 s (longer than the 15 s an election
/// may take). Then one node comes back. The result, its filing, the next dispatch and the
/// telemetry all waited for it: the run ends as it would have, nothing given up.
#[test]
fn a_quorum_lost_for_sixteen_seconds_mid_run_loses_nothing() {
    let mut struck = strike_at_gate("quorum", FIRST_WAVE, |cluster, gate| {
        cluster.kill(1);
        cluster.kill(2);
        std::fs::write(gate, "open").unwrap();
        // The fault is the outage itself, held for its length: nothing here waits for the
        // product.
        std::thread::sleep(Duration::from_secs(16));
        cluster.restart(1).unwrap();
    });
    let report = &struck.report;
    assert_eq!(struck.code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded", "{report:#}");
    struck.cluster.restart(2).unwrap();
}
