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
