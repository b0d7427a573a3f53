//! Agents on a real 3-node JetStream cluster, given every node's URL: an agent whose first node
//! is dead starts and answers, and an agent whose node dies moves to a live one and still
//! migrates its service.

use std::process::Output;
use std::time::{Duration, Instant};

use flotilla_tests::{Cluster, Fleet, Plan, Service, json_stdout, wait_for};

/// The services `flotilla agents --output json` lists.
fn listed(out: &Output) -> Vec<String> {
    let listed = json_stdout(out);
    listed
        .as_array()
        .or_else(|| listed["agents"].as_array())
        .unwrap_or_else(|| panic!("a list of agents: {listed:#}"))
        .iter()
        .map(|a| a["service"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every stream `flotilla setup` makes.
const STREAMS: [&str; 6] = [
    "FLOTILLA_COMMANDS_V2",
    "FLOTILLA_EVENTS",
    "FLOTILLA_TELEMETRY",
    "KV_flotilla_runs",
    "KV_flotilla_agents",
    "OBJ_flotilla_files",
];

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn counting(role: &str) -> Service {
    Service::new(role).sh("echo x >> counter.txt")
}

#[test]
fn an_agent_whose_first_node_is_dead_starts_and_answers() {
    let mut cluster = Cluster::start(3).unwrap();
    let mut fleet = Fleet::empty(&cluster.url_list(), Vec::new()).unwrap();
    // R3 streams are made while every node is up; then the first node of the list dies.
    let out = fleet.flotilla(&["setup"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    cluster.kill(0);
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    fleet
        .add_and_start(&["inference"], &|_| Vec::new())
        .unwrap();
    fleet.wait_ready(Duration::from_secs(30)).unwrap();
    let out = fleet.flotilla(&["agents", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(listed(&out), ["inference"]);
    assert!(
        cluster
            .node_of_client("flotilla-agent inference/a")
            .is_some(),
        "the agent is not connected to a live node"
    );
}

#[test]
fn an_agent_whose_node_dies_moves_to_another_and_still_migrates() {
    let mut cluster = Cluster::start(3).unwrap();
    let fleet = Fleet::start(&cluster.url_list(), &["inference"]).unwrap();
    let agent = "flotilla-agent inference/a";
    let node = cluster
        .node_of_client(agent)
        .expect("the agent is connected");
    let killed = Instant::now();
    cluster.kill(node);
    wait_for("the agent on another node", Duration::from_secs(30), || {
        cluster.node_of_client(agent).is_some_and(|n| n != node)
    })
    .unwrap();
    eprintln!(
        "agent reconnected {:?} after its node died",
        killed.elapsed()
    );
    // At once, while the streams led by the dead node elect new leaders: the coordinator's
    // start (JetStream probe, stream lookups) waits for them rather than failing.
    let out = fleet.flotilla(&["agents", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("exists with other settings"),
        "{}",
        stderr(&out)
    );
    eprintln!(
        "`flotilla agents` done {:?} after the kill",
        killed.elapsed()
    );
    for stream in STREAMS {
        cluster
            .wait_for_leader(stream, Duration::from_secs(30))
            .unwrap();
    }
    eprintln!("streams led again {:?} after the kill", killed.elapsed());
    wait_for("the agent to answer", Duration::from_secs(30), || {
        listed(&fleet.flotilla(&["agents", "--output", "json"])) == ["inference"]
    })
    .unwrap();
    let plan = Plan::new("after-failover")
        .wave("all", &["inference"])
        .service(counting("inference"));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
}
