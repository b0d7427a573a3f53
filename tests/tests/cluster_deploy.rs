//! The shipped cluster configurations (`deploy/nats/`), each run in real nats-servers with the
//! real binaries: the cluster node file forms a 3-node cluster of the secure configuration, on
//! which `flotilla setup` makes everything R3 and a fleet with its own identities migrates.

use flotilla_tests::secure::{PASSWORDS, agent_identity, coordinator_env};
use flotilla_tests::{Cluster, ClusterOptions, Fleet, Plan, Service, repo_root};

/// The environment of every node of the shipped cluster file: the passwords of the secure
/// configuration it includes, and a name (which the kit then overrides per node).
fn node_env() -> Vec<(String, String)> {
    PASSWORDS
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .chain([(
            "FLOTILLA_NATS_SERVER_NAME".to_owned(),
            "replaced-per-node".to_owned(),
        )])
        .collect()
}

#[test]
fn the_shipped_cluster_node_file_runs_a_secure_r3_fleet() {
    let mut cluster = Cluster::start_with(
        3,
        &ClusterOptions {
            include: Some(repo_root().join("deploy/nats/cluster-node.conf")),
            env: node_env(),
            ..Default::default()
        },
    )
    .unwrap();
    let roles = ["inference", "training"];
    let fleet = Fleet::start_with(
        &cluster.url_list(),
        &roles,
        &agent_identity,
        coordinator_env(),
    )
    .unwrap();
    let out = fleet.flotilla(&["setup", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streams = ["FLOTILLA_COMMANDS", "FLOTILLA_EVENTS", "KV_flotilla_runs"];
    for stream in streams {
        assert_eq!(cluster.stream_replicas(stream), Some(3), "{stream}");
    }
    let plan = Plan::new("on-the-cluster")
        .wave("all", &roles)
        .service(Service::new("inference").sh("echo x >> counter.txt"))
        .service(Service::new("training").sh("echo x >> counter.txt"));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
}
