//! `flotilla setup` on a real 3-node JetStream cluster: every stream and bucket gets 3 replicas
//! by default, `--replicas 1` is honoured, an existing resource with other replicas is reported
//! (exit 3) and left alone, `--update` moves it from 1 to 3 replicas in place with its data,
//! and more replicas than nodes is a clear error that creates nothing.

use std::process::Output;
use std::time::Duration;

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::{
    Cluster, ClusterOptions, Fleet, NatsServer, Plan, Service, json_stdout, wait_for,
};
use serde_json::Value;

fn flotilla(url: &str, args: &[&str]) -> Output {
    flotilla_tests::flotilla_against(url, args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The streams under everything `flotilla setup` creates (a bucket is a stream too).
fn streams() -> Vec<String> {
    let subjects = Subjects::new("flotilla").unwrap();
    vec![
        subjects.commands_stream(),
        subjects.events_stream(),
        flotilla_telemetry::store::stream_name("flotilla"),
        format!("KV_{}", subjects.runs_bucket()),
        format!("KV_{}", subjects.agents_bucket()),
        format!("OBJ_{}", subjects.files_bucket()),
    ]
}

/// Each stream's configured replica count and the peers the cluster reports for it.
fn replicas(cluster: &Cluster) -> Vec<(String, usize, usize)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let addrs: Vec<async_nats::ServerAddr> =
            cluster.urls().iter().map(|u| u.parse().unwrap()).collect();
        let client = async_nats::connect(addrs).await.unwrap();
        let js = jetstream::new(client);
        let mut found = Vec::new();
        for name in streams() {
            let mut stream = js.get_stream(&name).await.unwrap();
            let info = stream.info().await.unwrap();
            let peers = info.cluster.as_ref().map_or(0, |c| c.replicas.len() + 1);
            found.push((name, info.config.num_replicas, peers));
        }
        found
    })
}

/// `setup --output json`'s resources as (status, differences as `setting: wanted→found`).
fn resources(out: &Output) -> Vec<(String, Vec<String>)> {
    let report = json_stdout(out);
    report["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("resources: {report:#}"))
        .iter()
        .map(|r| {
            let differences = r["differences"]
                .as_array()
                .map(|d| d.iter().map(difference_text).collect())
                .unwrap_or_default();
            (r["status"].as_str().unwrap().to_owned(), differences)
        })
        .collect()
}

fn difference_text(d: &Value) -> String {
    format!(
        "{}: {}→{}",
        d["setting"].as_str().unwrap(),
        d["wanted"].as_str().unwrap(),
        d["found"].as_str().unwrap()
    )
}

#[test]
fn setup_on_a_cluster_creates_everything_with_three_replicas() {
    let cluster = Cluster::start(3).unwrap();
    let out = flotilla(&cluster.url_list(), &["setup", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let created = resources(&out);
    assert_eq!(created.len(), 6, "{created:?}");
    assert!(created.iter().all(|(s, _)| s == "created"), "{created:?}");
    for (name, configured, peers) in replicas(&cluster) {
        assert_eq!((configured, peers), (3, 3), "{name}");
    }
    // Again: everything is found as wanted.
    let out = flotilla(&cluster.url_list(), &["setup", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(resources(&out).iter().all(|(s, _)| s == "found"));
}

#[test]
fn more_replicas_than_nodes_is_refused_and_creates_nothing() {
    let cluster = Cluster::start(3).unwrap();
    let out = flotilla(&cluster.url_list(), &["setup", "--replicas", "4"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "4 replicas asked, but the NATS cluster {} cannot place them",
            cluster.name()
        )),
        "{said}"
    );
    let out = flotilla(&cluster.url_list(), &["setup", "--replicas", "6"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 to 5"), "{}", stderr(&out));
    assert!(
        (0..3).all(|i| cluster.stream_detail(i, &streams()[0]).is_none()),
        "a stream was created"
    );

    let single = NatsServer::start().unwrap();
    let out = flotilla(single.url(), &["setup", "--replicas", "3"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the NATS server is not clustered"),
        "{}",
        stderr(&out)
    );
}

/// The R1 → R3 move on a deployment that holds a run: `setup` reports the difference (exit 3),
/// `setup --update` makes every stream R3 in place, and the run record then survives the death
/// of the node that held the only copy.
/// A cluster that cannot place the replicas yet is given a moment: `setup` started while the
/// third node of a cluster has not joined yet says it waits, and succeeds with three replicas
/// once the node is there.
#[test]
fn setup_waits_for_a_cluster_still_forming() {
    let options = ClusterOptions {
        held_back: 1,
        ..Default::default()
    };
    let mut cluster = Cluster::start_with(3, &options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let said = dir.path().join("setup.stderr");
    let mut setup = flotilla_tests::flotilla_command(&cluster.url_list(), &["setup"]);
    let setup = setup
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    wait_for("setup to say it waits", Duration::from_secs(30), || {
        std::fs::read_to_string(&said)
            .unwrap_or_default()
            .contains("cannot place 3 replicas yet")
    })
    .unwrap();
    cluster.restart(2).unwrap();
    let out = setup.wait_with_output().unwrap();
    let said = std::fs::read_to_string(&said).unwrap();
    assert_eq!(out.status.code(), Some(0), "{said}");
    for (name, configured, peers) in replicas(&cluster) {
        assert_eq!((configured, peers), (3, 3), "{name}");
    }
}

#[test]
fn update_moves_an_r1_deployment_to_r3_and_its_run_survives_the_old_node() {
    let mut cluster = Cluster::start(3).unwrap();
    let mut fleet = Fleet::empty(&cluster.url_list(), Vec::new()).unwrap();
    let out = fleet.flotilla(&["setup", "--replicas", "1", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        replicas(&cluster)
            .iter()
            .all(|(_, configured, _)| *configured == 1)
    );
    fleet
        .add_and_start(&["inference"], &|_| Vec::new())
        .unwrap();
    fleet.wait_ready(Duration::from_secs(30)).unwrap();
    let plan = Plan::new("before-r3")
        .wave("all", &["inference"])
        .service(Service::new("inference").sh("echo x >> counter.txt"));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap().to_owned();

    let out = fleet.flotilla(&["setup", "--output", "json"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    for (status, differences) in resources(&out) {
        assert_eq!(status, "differs");
        assert_eq!(differences, ["replicas: 3→1"]);
    }
    assert!(
        replicas(&cluster).iter().all(|(_, c, _)| *c == 1),
        "changed"
    );

    let out = fleet.flotilla(&["setup", "--update", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        resources(&out)
            .iter()
            .all(|(s, d)| s == "updated" && d.is_empty())
    );
    assert!(replicas(&cluster).iter().all(|(_, c, _)| *c == 3));
    // The server adds the new peers by itself, soon after the update.
    wait_for("3 peers for every stream", Duration::from_secs(30), || {
        replicas(&cluster).iter().all(|(_, _, peers)| *peers == 3)
    })
    .unwrap();

    let runs = streams()[3].clone();
    let holder = cluster
        .wait_for_leader(&runs, Duration::from_secs(10))
        .unwrap();
    wait_for(
        "every node to hold the run records",
        Duration::from_secs(30),
        || {
            let counts: Vec<Value> = (0..3)
                .map(|i| {
                    cluster
                        .stream_detail(i, &runs)
                        .map_or(Value::Null, |s| s["state"]["messages"].clone())
                })
                .collect();
            counts[0].as_u64().is_some_and(|n| n > 0) && counts.iter().all(|c| *c == counts[0])
        },
    )
    .unwrap();
    cluster.kill(holder);
    let killed = std::time::Instant::now();
    cluster.wait_ready(Duration::from_secs(30)).unwrap();
    for stream in streams() {
        cluster
            .wait_for_leader(&stream, Duration::from_secs(30))
            .unwrap();
    }
    eprintln!(
        "every stream led again {:?} after the kill",
        killed.elapsed()
    );
    let out = fleet.flotilla(&["status", &run, "--output", "json"]);
    let status = json_stdout(&out);
    assert_eq!(
        status["status"],
        "succeeded",
        "{status:#}\n{}",
        stderr(&out)
    );
}
