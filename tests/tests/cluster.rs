//! The cluster harness itself, on a real 3-node JetStream cluster: it forms, an R3 stream keeps
//! taking writes when its leader is killed (another node is elected), and the killed node
//! rejoins with every message.

use std::time::{Duration, Instant};

use async_nats::ServerAddr;
use async_nats::jetstream::{self, stream};
use flotilla_tests::{Cluster, wait_for};

const STREAM: &str = "PROBE";

async fn connect(cluster: &Cluster) -> jetstream::Context {
    let addrs: Vec<ServerAddr> = cluster.urls().iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::connect(addrs).await.unwrap();
    jetstream::new(client)
}

/// Publishes `count` messages, retrying each until the stream acknowledges it (an election
/// in progress refuses writes for a moment).
async fn publish(js: &jetstream::Context, count: usize) {
    for n in 0..count {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let acked = match js.publish("probe.one", format!("{n}").into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            if acked {
                break;
            }
            assert!(Instant::now() < deadline, "message {n} never acknowledged");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[test]
fn an_r3_stream_elects_a_new_leader_when_its_leader_dies_and_the_node_rejoins() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = Cluster::start(3).unwrap();
    let js = runtime.block_on(connect(&cluster));
    runtime
        .block_on(js.create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec!["probe.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        }))
        .unwrap();
    runtime.block_on(publish(&js, 10));
    let first = cluster
        .wait_for_leader(STREAM, Duration::from_secs(10))
        .unwrap();
    assert_eq!(cluster.stream_replicas(STREAM), Some(3));

    let killed = Instant::now();
    cluster.kill(first);
    let second = cluster
        .wait_for_leader(STREAM, Duration::from_secs(30))
        .unwrap();
    eprintln!("stream leader re-elected in {:?}", killed.elapsed());
    assert_ne!(second, first, "the dead node cannot lead");
    runtime.block_on(publish(&js, 10));

    let restarted = Instant::now();
    cluster.restart(first).unwrap();
    wait_for(
        "the restarted node to catch up on all 20 messages",
        Duration::from_secs(30),
        || {
            cluster
                .stream_detail(first, STREAM)
                .is_some_and(|s| s["state"]["messages"] == 20)
        },
    )
    .unwrap();
    eprintln!("restarted node caught up in {:?}", restarted.elapsed());
    cluster.wait_ready(Duration::from_secs(10)).unwrap();
    assert_eq!(cluster.stream_replicas(STREAM), Some(3));
}
