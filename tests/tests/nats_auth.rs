//! The shipped nats-server configuration (`deploy/nats/nats-server.conf`), run for real: no
//! anonymous access, and an agent identity confined to its own commands and events.

use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_tests::NatsServer;
use flotilla_tests::confinement::{
    assert_agent_confined, assert_demo_migrates, assert_registry_confined, connect,
};
use futures::StreamExt;

fn start() -> NatsServer {
    flotilla_tests::secure::start_server()
}

/// Connect options for `user` with `password`.
fn password(user: &str, password: &str) -> ConnectOptions {
    ConnectOptions::new().user_and_password(user.into(), password.into())
}

#[tokio::test]
async fn anonymous_and_wrong_password_clients_are_refused() {
    let server = start();
    assert!(
        async_nats::connect(server.url()).await.is_err(),
        "anonymous access must be refused"
    );
    let wrong = async_nats::ConnectOptions::new()
        .user_and_password("agent-training-a".into(), "guess".into())
        .connect(server.url())
        .await;
    assert!(wrong.is_err(), "a wrong password must be refused");
}

#[tokio::test]
async fn an_agent_reads_and_writes_only_its_own_subjects() {
    let server = start();
    assert_agent_confined(
        server.url(),
        password("coordinator", "coordinator-secret"),
        password("agent-training-a", "training-secret"),
    )
    .await;
}

#[tokio::test]
async fn an_agent_writes_only_its_own_registry_entry() {
    let server = start();
    assert_registry_confined(
        server.url(),
        password("coordinator", "coordinator-secret"),
        password("agent-training-a", "training-secret"),
    )
    .await;
}

/// The whole product through the shipped, secure configuration: every agent and the
/// coordinator with its own identity, signed commands, the demo plan over all five services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_migration_runs_through_the_secure_configuration() {
    let server = start();
    let (_coordinator, fleet) = secure_fleet(&server, &flotilla_tests::ROLES).await;
    assert_demo_migrates(&fleet);
    tokio::task::block_in_place(|| drop(fleet));
}

/// Asks `$SRV.INFO.flotilla-agent` (what `nats micro ls` does) and gathers the answers.
async fn micro_info(client: &async_nats::Client, expected: usize) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.INFO.flotilla-agent", inbox, "".into())
        .await
        .unwrap();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while found.len() < expected {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(message)) => found.push(serde_json::from_slice(&message.payload).unwrap()),
            _ => break,
        }
    }
    found
}

/// Standard NATS tooling sees the agents: `$SRV.INFO` (what `nats micro ls` asks) answered by
/// each agent with its service and instance, through the secure configuration too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_listed_by_the_nats_service_api() {
    let server = start();
    let (coordinator, fleet) = secure_fleet(&server, &["inference", "ingest"]).await;
    let infos = micro_info(&coordinator, 2).await;
    let mut listed: Vec<String> = infos
        .iter()
        .map(|i| {
            assert_eq!(i["name"], "flotilla-agent", "{i}");
            format!(
                "{}/{}",
                i["metadata"]["service"].as_str().unwrap(),
                i["metadata"]["instance"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    assert_eq!(listed, ["inference/a", "ingest/a"]);
    // The status endpoint answers with the agent's presence.
    let status = coordinator
        .request("flotilla.agent.ingest.a.status", "".into())
        .await
        .unwrap();
    let presence: serde_json::Value = serde_json::from_slice(&status.payload).unwrap();
    assert_eq!(presence["schema"], "flotilla.presence.v1");
    assert_eq!(presence["state"], "idle");
    tokio::task::block_in_place(|| drop(fleet));
}

/// A fleet on the secure server: the coordinator's identity creates the streams (agents may
/// not), every agent gets its own identity and private inbox, and `flotilla` runs as the
/// coordinator. Returns the coordinator's client and the fleet.
async fn secure_fleet(
    server: &NatsServer,
    roles: &[&str],
) -> (async_nats::Client, flotilla_tests::Fleet) {
    let subjects = Subjects::default();
    let (coordinator, _) = connect(
        server.url(),
        password("coordinator", "coordinator-secret"),
        "coordinator",
    )
    .await
    .unwrap();
    let admin = jetstream::new(coordinator.clone());
    flotilla_bus::commands_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_bus::events_stream(&admin, &subjects)
        .await
        .unwrap();
    flotilla_telemetry::store::ensure_stream(&admin, subjects.prefix())
        .await
        .unwrap();
    let identity = flotilla_tests::secure::agent_identity;
    let cli = flotilla_tests::secure::coordinator_env();
    let url = server.url().to_owned();
    let fleet = tokio::task::block_in_place(|| {
        flotilla_tests::Fleet::start_with(&url, roles, &identity, cli).unwrap()
    });
    (coordinator, fleet)
}

/// Under the shipped permissions, an agent restarted while its previous incarnation is frozen
/// (its connection and subscription alive to the broker, as for a hung process or a host gone
/// without a TCP reset) shares the queue group of its command subject with it: the migration is
/// handled by exactly one of the two (the frozen one once it wakes, if the broker handed it the
/// command), its step runs once, and the run succeeds before its command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_and_its_frozen_predecessor_never_both_handle_a_command() {
    let server = start();
    let role = "inference";
    let (coordinator, mut fleet) = secure_fleet(&server, &[role]).await;
    let counter = fleet.dir().join("step-ran");
    let subjects = Subjects::default();
    let commands = jetstream::new(coordinator)
        .get_stream(subjects.commands_stream())
        .await
        .unwrap();
    tokio::task::block_in_place(|| {
        let plan = fleet.write_plan(
            "count.toml",
            &format!(
                "name = \"count\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"echo ran >> {}\"]\n",
                counter.display()
            ),
        );
        let log_path = fleet.agent_log(role);
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        let frozen = fleet.agent_pid(role).unwrap();
        assert!(fleet.signal_agent(role, "STOP"));
        // The frozen agent holds its state directory: the new one runs on a copy.
        fleet.start_replacement_agent(role).unwrap();
        flotilla_tests::wait_for("the new agent to be ready", Duration::from_secs(30), || {
            log().matches("ready for commands").count() >= 2
        })
        .unwrap();
        let started = std::time::Instant::now();
        let migrate = std::thread::scope(|scope| {
            let run = scope.spawn(|| fleet.flotilla(&["migrate", plan.to_str().unwrap()]));
            // Once the command is out (stored, so published to the subscribers too), the
            // frozen agent wakes: whichever of the two the broker chose handles it.
            let runtime = tokio::runtime::Handle::current();
            flotilla_tests::wait_for("the migrate command", Duration::from_secs(30), || {
                runtime
                    .block_on(commands.direct_get_last_for_subject("flotilla.command.inference.a"))
                    .is_ok()
            })
            .unwrap();
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(frozen.to_string())
                .status();
            run.join().unwrap()
        });
        let took = started.elapsed();
        assert_eq!(
            migrate.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&migrate.stderr)
        );
        assert!(
            took < Duration::from_secs(60),
            "the migration took {took:?}"
        );
        // Both stopped: nothing can run the step any more.
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .arg(frozen.to_string())
            .status();
        fleet.stop_agent(role);
        let ran = std::fs::read_to_string(&counter).unwrap_or_default();
        assert_eq!(ran.lines().count(), 1, "the step ran {ran:?}");
        // Each command (the migrate, then the finalize) was taken by one of the two, once.
        let log = log();
        let received: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("command received"))
            .filter_map(|l| l.rsplit("command_id=").next())
            .collect();
        let distinct: std::collections::BTreeSet<&&str> = received.iter().collect();
        assert_eq!(received.len(), distinct.len(), "{log}");
        drop(fleet);
    });
}
