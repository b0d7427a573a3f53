//! A site behind a leaf node, for real: a 3-node hub cluster (JetStream domain `hub`) holds the
//! streams, a site's nats-server without JetStream joins it as a leaf node, and the site's
//! agent (connected to the leaf, `nats.domain = "hub"`) answers `flotilla agents` and migrates
//! its service for a coordinator connected to the hub. Without the domain, or without any
//! JetStream, a client is refused with the error that says so.

use std::process::Output;

use flotilla_tests::{Cluster, ClusterOptions, Fleet, NatsServer, Plan, Service, json_stdout};

/// The hub: three nodes in JetStream domain `hub`, each taking leaf node connections.
fn hub() -> Cluster {
    Cluster::start_with(
        3,
        &ClusterOptions {
            jetstream: vec!["domain: hub".to_owned()],
            leafnodes: true,
            ..Default::default()
        },
    )
    .unwrap()
}

/// A site's server: no JetStream, a leaf node of every hub node.
fn leaf(hub: &Cluster, dir: &std::path::Path) -> NatsServer {
    let urls: Vec<String> = (0..hub.len())
        .map(|i| format!("\"{}\"", hub.leafnode_url(i)))
        .collect();
    let config = dir.join("leaf.conf");
    std::fs::write(
        &config,
        format!(
            "server_name: site-a\nleafnodes {{\n  remotes: [ {{ urls: [{}] }} ]\n}}\n",
            urls.join(", ")
        ),
    )
    .unwrap();
    NatsServer::start_with_config(&config, &[]).unwrap()
}

fn flotilla(url: &str, args: &[&str]) -> Output {
    flotilla_tests::flotilla_against(url, args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_at_a_leaf_site_answers_and_migrates_for_a_coordinator_at_the_hub() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let site = leaf(&hub, dir.path());
    let at_site = vec![
        ("FLOTILLA_NATS__URL".to_owned(), site.url().to_owned()),
        ("FLOTILLA_NATS__DOMAIN".to_owned(), "hub".to_owned()),
    ];
    let fleet = Fleet::start_with(
        &hub.url_list(),
        &["inference"],
        &|_| at_site.clone(),
        vec![],
    )
    .unwrap();
    let out = fleet.flotilla(&["agents", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed = json_stdout(&out);
    let agents = listed
        .as_array()
        .or_else(|| listed["agents"].as_array())
        .unwrap();
    assert_eq!(agents.len(), 1, "{listed:#}");
    assert_eq!(agents[0]["service"], "inference");
    assert_eq!(
        site.connections()
            .iter()
            .filter(|c| c["name"] == "flotilla-agent inference/a")
            .count(),
        1,
        "the agent is not the leaf's client"
    );

    let plan = Plan::new("to-the-site")
        .wave("all", &["inference"])
        .service(Service::new("inference").sh("echo x >> counter.txt"));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    assert!(fleet.root("inference").join("counter.txt").exists());
}

#[test]
fn without_the_domain_or_without_any_jetstream_a_client_is_refused_saying_why() {
    let hub = hub();
    let dir = tempfile::tempdir().unwrap();
    let site = leaf(&hub, dir.path());
    let out = flotilla(site.url(), &["agents"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has JetStream disabled")
            && stderr(&out).contains("on a leaf node, set nats.domain"),
        "{}",
        stderr(&out)
    );

    let config = dir.path().join("plain.conf");
    std::fs::write(&config, "server_name: no-jetstream\n").unwrap();
    let plain = NatsServer::start_with_config(&config, &[]).unwrap();
    let out = flotilla(plain.url(), &["agents"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has JetStream disabled; Flotilla needs it"),
        "{}",
        stderr(&out)
    );
}
