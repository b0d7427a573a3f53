//! Discovery never misses a live agent that answers within the window, and does not wait for the
//! window's end once every agent the bus knows of has answered.

use std::time::{Duration, Instant};

use flotilla_tests::{Fleet, NatsServer, json_stdout};
use futures::StreamExt;

const WINDOW: Duration = Duration::from_secs(20);

/// The agent of training is down when discovery asks, and comes up after the first request went
/// out (the test watches the requests), so it cannot answer that one: the bus knows it by its
/// consumer, discovery asks again, and the agent is found, long before the window ends.
#[test]
fn an_agent_that_comes_up_during_the_window_is_found() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &["inference", "training"]).unwrap();
    fleet.stop_agent("training");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_watcher, mut requests) = runtime.block_on(async {
        let client = async_nats::connect(fleet.nats_url()).await.unwrap();
        let requests = client.subscribe("flotilla.presence").await.unwrap();
        client.flush().await.unwrap();
        (client, requests)
    });
    let started = Instant::now();
    let window = format!("{}s", WINDOW.as_secs());
    let discovery =
        fleet.spawn_flotilla(&["agents", "--output", "json", "--discovery-window", &window]);
    runtime
        .block_on(async { tokio::time::timeout(WINDOW, requests.next()).await })
        .expect("discovery sent no presence request")
        .unwrap();
    fleet.start_agent("training").unwrap();

    let out = discovery.wait_with_output().unwrap();
    let took = started.elapsed();
    let agents = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{agents:#}");
    let services: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["inference", "training"], "{agents:#}");
    assert!(
        took < WINDOW,
        "discovery waited for the window's end ({took:?}) though every known agent answered"
    );
}

/// The services and states `flotilla agents --all --output json` lists.
/// `out`, once it exited 0 (its stderr otherwise).
fn succeeded(out: std::process::Output) -> std::process::Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `flotilla ARGS` (an agent listing that must succeed): how long it took, and its rows.
fn timed_listing(fleet: &Fleet, args: &[&str]) -> (Duration, Vec<(String, String)>) {
    let started = Instant::now();
    let out = succeeded(fleet.flotilla(args));
    (started.elapsed(), rows(&out))
}

fn rows(out: &std::process::Output) -> Vec<(String, String)> {
    let listed = json_stdout(out);
    listed
        .as_array()
        .unwrap_or_else(|| panic!("a list of agents: {listed:#}"))
        .iter()
        .map(|a| {
            let name = format!(
                "{}/{}",
                a["service"].as_str().unwrap(),
                a["instance"].as_str().unwrap()
            );
            (name, a["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Waits until `role`'s agent has written its registry entry.
fn wait_registered(fleet: &Fleet, role: &str) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(fleet.nats_url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(kv) = js.get_key_value("flotilla_agents").await
                && let Ok(Some(_)) = kv.get(format!("{role}.a")).await
            {
                return;
            }
            assert!(Instant::now() < deadline, "{role} never registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// An agent killed for good stays registered: while its entry is fresh discovery waits for it
/// (it may be restarting) and `--all` shows it `silent`; once its entry is older than the
/// inactivity threshold discovery no longer waits (milliseconds, not the window) and shows it
/// `inactive`; `agents forget` removes it, and `forget --inactive` every inactive one that does
/// not answer, never a live one.
#[test]
fn a_decommissioned_agent_goes_inactive_stops_slowing_discovery_and_is_forgotten() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &["inference", "training", "ingest"]).unwrap();
    for role in ["inference", "training", "ingest"] {
        wait_registered(&fleet, role);
    }
    fleet.kill_agent("training");
    fleet.kill_agent("ingest");

    // Fresh entries: waited for to the end of the window.
    let (took, listed) = timed_listing(
        &fleet,
        &["agents", "--all", "-o", "json", "--discovery-window", "2s"],
    );
    assert_eq!(
        listed,
        [
            ("inference/a".to_owned(), "idle".to_owned()),
            ("ingest/a".to_owned(), "silent".to_owned()),
            ("training/a".to_owned(), "silent".to_owned()),
        ]
    );
    assert!(
        took >= Duration::from_secs(2),
        "did not wait for the silent agents: {took:?}"
    );

    // Older than the threshold (the 2 s above): not waited for, shown inactive.
    let listing = [
        "agents",
        "--all",
        "-o",
        "json",
        "--discovery-window",
        "20s",
        "--agent-inactive-after",
        "1s",
    ];
    let (took, listed) = timed_listing(&fleet, &listing);
    assert_eq!(
        listed,
        [
            ("inference/a".to_owned(), "idle".to_owned()),
            ("ingest/a".to_owned(), "inactive".to_owned()),
            ("training/a".to_owned(), "inactive".to_owned()),
        ]
    );
    assert!(
        took < Duration::from_secs(2),
        "discovery waited for inactive agents: {took:?}"
    );
    // Without --all: the live agent only, and a note on stderr.
    let out = fleet.flotilla(&[&listing[..1], &listing[2..]].concat());
    assert_eq!(rows(&out), [("inference/a".to_owned(), "idle".to_owned())]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("2 registered agent(s) did not answer (2 inactive)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Forget one by name; an unknown one is refused and nothing is forgotten.
    let out = fleet.flotilla(&["agents", "forget", "training/a", "nosuch/a"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = succeeded(fleet.flotilla(&["agents", "forget", "training/a", "-o", "json"]));
    assert_eq!(
        json_stdout(&out)["forgotten"],
        serde_json::json!(["training/a"])
    );
    // Every inactive one that does not answer: ingest, not the live inference (whose entry is
    // as old).
    let out = succeeded(fleet.flotilla(&[
        "agents",
        "forget",
        "--inactive",
        "--agent-inactive-after",
        "1s",
        "-o",
        "json",
    ]));
    assert_eq!(
        json_stdout(&out)["forgotten"],
        serde_json::json!(["ingest/a"])
    );

    // Nothing left to wait for, even with the default threshold: milliseconds.
    let (took, listed) = timed_listing(
        &fleet,
        &["agents", "--all", "-o", "json", "--discovery-window", "20s"],
    );
    assert_eq!(listed, [("inference/a".to_owned(), "idle".to_owned())]);
    assert!(took < Duration::from_secs(2), "discovery waited: {took:?}");
}
