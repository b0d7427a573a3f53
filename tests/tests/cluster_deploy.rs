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
    let streams = [
        "FLOTILLA_COMMANDS_V2",
        "FLOTILLA_EVENTS",
        "KV_flotilla_runs",
    ];
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

/// The hub's password for the sites' leaf connections, in the test.
const LEAF_PASSWORD: &str = "leaf-secret";

/// `deploy/nats/hub-node.conf` (with `hub-leafnodes.conf`) as a 3-node hub, and
/// `deploy/nats/leaf-site.conf` as a site: the site's agent, with its own identity, connects to
/// the leaf with `domain = "hub"`, and the coordinator, at the hub, migrates it.
#[test]
fn the_shipped_hub_and_leaf_files_run_a_site_agent_for_a_coordinator_at_the_hub() {
    let env: Vec<(String, String)> = node_env()
        .into_iter()
        .chain([(
            "FLOTILLA_LEAF_PASSWORD".to_owned(),
            LEAF_PASSWORD.to_owned(),
        )])
        .collect();
    let hub = Cluster::start_with(
        3,
        &ClusterOptions {
            include: Some(repo_root().join("deploy/nats/hub-node.conf")),
            leafnodes: true,
            leafnode_include: Some(repo_root().join("deploy/nats/hub-leafnodes.conf")),
            env: env.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let mut site_env: Vec<(String, String)> = (0..3)
        .map(|i| {
            let url = hub.leafnode_url(i).replace(
                "nats-leaf://",
                &format!("nats-leaf://leaf-site:{LEAF_PASSWORD}@"),
            );
            (format!("FLOTILLA_HUB_LEAF_URL_{}", i + 1), url)
        })
        .collect();
    site_env.extend(env);
    let site_env: Vec<(&str, &str)> = site_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let site = flotilla_tests::NatsServer::start_with_config(
        &repo_root().join("deploy/nats/leaf-site.conf"),
        &site_env,
    )
    .unwrap();
    let at_site = |role: &str| {
        let mut env = agent_identity(role);
        env.push(("FLOTILLA_NATS__URL".to_owned(), site.url().to_owned()));
        env.push(("FLOTILLA_NATS__DOMAIN".to_owned(), "hub".to_owned()));
        env
    };
    let fleet =
        Fleet::start_with(&hub.url_list(), &["inference"], &at_site, coordinator_env()).unwrap();
    let plan = Plan::new("to-the-site")
        .wave("all", &["inference"])
        .service(Service::new("inference").sh("echo x >> counter.txt"));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    // The site's agent wrote its entry in the hub's registry across the leaf node, through the
    // domain's API prefix (`forget` refuses an agent that is not registered).
    flotilla_tests::wait_for(
        "the site's agent in the registry",
        std::time::Duration::from_secs(20),
        || {
            fleet
                .flotilla(&["agents", "forget", "inference/a"])
                .status
                .success()
        },
    )
    .unwrap_or_else(|e| {
        let out = fleet.flotilla(&["agents", "forget", "inference/a"]);
        let log = std::fs::read_to_string(fleet.agent_log("inference")).unwrap_or_default();
        panic!(
            "{e}: {}\nagent log:\n{log}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
}

/// The site's agent blocks are nats-server.conf's, for the hub's JetStream domain (its API and
/// its key-value puts, which a client of another domain sends through the API prefix).
#[test]
fn the_leaf_site_agent_permissions_are_the_hubs_for_its_domain() {
    let read = |file: &str| std::fs::read_to_string(repo_root().join(file)).unwrap();
    let block = |text: &str| {
        let start = text
            .find("{ user: \"agent-inference-a\"")
            .expect("the inference block");
        let end = start + text[start..].find("} }").expect("its end") + 3;
        text[start..end].to_owned()
    };
    let hub = block(&read("deploy/nats/nats-server.conf"));
    let site = block(&read("deploy/nats/leaf-site.conf"));
    assert_eq!(
        site,
        hub.replace("$JS.API.", "$JS.hub.API.")
            .replace("\"$KV.", "\"$JS.hub.API.$KV.")
    );
    assert!(
        site.contains("$JS.hub.API.DIRECT.GET.FLOTILLA_COMMANDS_V2.flotilla.command.inference.a")
    );
}
