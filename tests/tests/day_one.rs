//! Day one on the shipped secure configuration (`deploy/nats/nats-server.conf`): an empty
//! JetStream store, agents that may not create streams, and nothing run by hand in between.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::confinement::{assert_demo_migrates, connect};
use flotilla_tests::{Fleet, ROLES, json_stdout, secure, wait_for};

/// The line an agent logs once while the streams are missing.
const WAITING: &str = "waiting for the streams (run `flotilla setup`)";

/// Agents started first on an empty server wait for the streams; `flotilla migrate`, run
/// directly (no `flotilla agents`, no `flotilla setup`), creates them, finds the agents and
/// migrates the fleet, and every agent goes on without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_started_before_the_streams_recover_and_migrate() {
    let server = secure::start_server();
    let url = server.url().to_owned();
    let mut fleet = Fleet::empty(&url, secure::coordinator_env()).unwrap();
    tokio::task::block_in_place(|| fleet.add_and_start(&ROLES, &secure::agent_identity)).unwrap();
    for role in ROLES {
        wait_for(
            &format!("{role}'s agent to wait for the streams"),
            Duration::from_secs(30),
            || agent_log(&fleet, role).contains(WAITING),
        )
        .unwrap();
    }
    let pids: Vec<_> = ROLES.iter().map(|r| fleet.agent_pid(r)).collect();

    assert_demo_migrates(&fleet);

    for (role, pid) in ROLES.iter().zip(pids) {
        let log = agent_log(&fleet, role);
        assert!(
            pid.is_some() && fleet.agent_pid(role) == pid,
            "{role} restarted:\n{log}"
        );
        assert_eq!(
            log.matches(WAITING).count(),
            1,
            "{role} logs the wait once:\n{log}"
        );
        assert!(
            log.contains("the streams are there; going on"),
            "{role} did not recover:\n{log}"
        );
    }
    tokio::task::block_in_place(|| drop(fleet));
}

/// `flotilla setup` creates everything on an empty server, finds it all the second time, and
/// reports a stream whose settings an operator changed, without touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_creates_then_finds_then_reports_what_differs() {
    let server = secure::start_server();
    let url = server.url().to_owned();
    let fleet = Fleet::empty(&url, secure::coordinator_env()).unwrap();
    let setup = || {
        let out = tokio::task::block_in_place(|| fleet.flotilla(&["setup", "--output", "json"]));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), json_stdout(&out), stderr)
    };
    let statuses = |report: &serde_json::Value| -> Vec<(String, String)> {
        report["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let name = r["name"].as_str().unwrap().to_owned();
                (name, r["status"].as_str().unwrap().to_owned())
            })
            .collect()
    };
    let names = [
        "FLOTILLA_COMMANDS_V2",
        "FLOTILLA_EVENTS",
        "FLOTILLA_TELEMETRY",
        "flotilla_runs",
        "flotilla_agents",
        "flotilla_files",
    ];
    let all = |status: &str| -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), status.to_owned()))
            .collect()
    };

    let (code, first, stderr) = setup();
    assert_eq!(code, Some(0), "{first:#}\n{stderr}");
    assert_eq!(statuses(&first), all("created"), "{first:#}");
    let (code, second, stderr) = setup();
    assert_eq!(code, Some(0), "{second:#}\n{stderr}");
    assert_eq!(statuses(&second), all("found"), "{second:#}");

    // An operator shortens the audit log's retention.
    let (admin, _) = connect(
        &url,
        async_nats::ConnectOptions::new()
            .user_and_password("coordinator".into(), "coordinator-secret".into()),
        "coordinator",
    )
    .await
    .unwrap();
    let mut config = flotilla_bus::events_stream_config(&Subjects::default());
    config.max_age = Duration::from_secs(3600);
    jetstream::new(admin).update_stream(config).await.unwrap();

    let (code, third, stderr) = setup();
    assert_eq!(code, Some(3), "{third:#}\n{stderr}");
    let events = &third["resources"][1];
    assert_eq!(events["name"], "FLOTILLA_EVENTS", "{third:#}");
    assert_eq!(events["status"], "differs", "{third:#}");
    assert_eq!(
        events["differences"],
        serde_json::json!([{ "setting": "max_age", "wanted": "30days", "found": "1h" }]),
        "{third:#}"
    );
    assert!(stderr.contains("other settings"), "{stderr}");
    // Reported, not changed.
    let (_, again, _) = setup();
    assert_eq!(again["resources"][1]["status"], "differs", "{again:#}");
}

/// `flotilla agents` with no agent says why and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_with_none_answering_says_why_and_fails() {
    let server = secure::start_server();
    let fleet = Fleet::empty(server.url(), secure::coordinator_env()).unwrap();
    let out =
        tokio::task::block_in_place(|| fleet.flotilla(&["agents", "--discovery-window", "300ms"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for hint in [
        "no agent answered within 300ms",
        "--prefix (flotilla)",
        "flotilla.presence",
    ] {
        assert!(stderr.contains(hint), "{hint:?} missing from:\n{stderr}");
    }
}

fn agent_log(fleet: &Fleet, role: &str) -> String {
    std::fs::read_to_string(fleet.agent_log(role)).unwrap_or_default()
}
