//! The agent's promises, end to end: regression gates, at-most-once application, and refusals
//! that change nothing. Crash safety at every phase (kill -9 at each crash point) is in
//! `faults_agent.rs`, with the invariant check.

use std::time::Duration;

use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Command, CommandId, InstanceId, RunId, RunResult, ServiceName, Step, decode, encode,
};
use flotilla_tests::{Fleet, NatsServer, snapshot, standard_config_step};
use futures::StreamExt;

/// The T006 migration of one service (the demo plan's steps).
fn migrate_inference_plan() -> String {
    format!(
        "name = \"inference-to-standard\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"inference\"\n{}{}",
        standard_config_step("inference", ""),
        "[[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n"
    )
}

#[test]
fn twice_slower_start_or_twice_the_memory_trips_the_gates_with_figures() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "ingest"]).unwrap();
    let before_inference = snapshot(&fleet.root("inference"));
    let before_ingest = snapshot(&fleet.root("ingest"));
    let plan = r#"
name = "regressions"
on_failure = "leave"
[[service]]
name = "inference"
[[service.step]]
action = "replace_text"
path = "legacy.conf"
find = "startup_delay_ms=0"
replace = "startup_delay_ms=600"
[[service]]
name = "ingest"
[[service.step]]
action = "replace_text"
path = "legacy.conf"
find = "extra_memory_mb=0"
replace = "extra_memory_mb=64"
"#;
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(1), "{report:#}");
    for (role, gate) in [("inference", "startup_ms"), ("ingest", "memory_bytes")] {
        let service = report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == role)
            .unwrap();
        assert_eq!(service["status"], "rolled_back", "{service:#}");
        assert!(
            service["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("{gate} regression")),
            "{service:#}"
        );
        let m = &service["measurements"];
        let (before, after) = match gate {
            "startup_ms" => (
                m["startup_ms_before"].as_u64().unwrap(),
                m["startup_ms_after"].as_u64().unwrap(),
            ),
            _ => (
                m["rss_bytes_before"].as_u64().unwrap(),
                m["rss_bytes_after"].as_u64().unwrap(),
            ),
        };
        assert!(after >= 2 * before, "{role}: {before} -> {after}");
    }
    assert_eq!(snapshot(&fleet.root("inference")), before_inference);
    assert_eq!(snapshot(&fleet.root("ingest")), before_ingest);
}

#[test]
fn a_backup_over_the_quota_is_refused_before_any_change() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start_with_env(
        nats.url(),
        &["preprocess"],
        &[("FLOTILLA_AGENT__MAX_BACKUP_BYTES", "100")],
    )
    .unwrap();
    let before = snapshot(&fleet.root("preprocess"));
    let (_, report) = fleet.migrate("name = \"q\"\n[[service]]\nname = \"preprocess\"\n[[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n");
    let service = &report["services"][0];
    assert_eq!(service["status"], "refused", "{report:#}");
    assert!(
        service["reason"]
            .as_str()
            .unwrap()
            .contains("max_backup_bytes"),
        "{report:#}"
    );
    assert_eq!(snapshot(&fleet.root("preprocess")), before);
}

/// The same command delivered twice (a coordinator re-send or a broker redelivery): applied
/// once, answered twice, the second answer marked as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_command_is_applied_once() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let client = async_nats::connect(fleet.nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let subjects = Subjects::default();
    let (service, instance) = (
        ServiceName::parse("training").unwrap(),
        InstanceId::parse("a").unwrap(),
    );
    let now = time::OffsetDateTime::now_utc();
    let command = Command {
        schema: Default::default(),
        command_id: CommandId::new(),
        run_id: RunId::new(),
        service: service.clone(),
        instance: instance.clone(),
        issued_at: now,
        expires_at: now + Duration::from_secs(60),
        action: Action::Migrate {
            steps: vec![Step::RunCommand {
                program: "sh".into(),
                args: vec!["-c".into(), "echo applied >> counter.txt".into()],
                timeout_ms: 5000,
                env: Default::default(),
            }],
            health: Vec::new(),
            gates: Default::default(),
            preconditions: Vec::new(),
            checks: Vec::new(),
            workloads: Vec::new(),
        },
    };
    let events = js.get_stream(subjects.events_stream()).await.unwrap();
    let consumer = events
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects.event(&command.run_id, &service, &instance),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    // Two distinct message IDs, so the broker's own deduplication does not hide the copy.
    let key = fleet.signing_key();
    for copy in 0..2 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            flotilla_bus::signing::SIGNATURE_HEADER,
            key.sign(&encode(&command)).as_str(),
        );
        headers.insert(
            "Nats-Msg-Id",
            format!("{}-{copy}", command.command_id).as_str(),
        );
        let subject = subjects.command(&service, &instance);
        js.publish_with_headers(subject, headers, encode(&command).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut results: Vec<RunResult> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while results.len() < 2 {
        let message = tokio::time::timeout_at(deadline, messages.next())
            .await
            .expect("two results")
            .unwrap()
            .unwrap();
        if let Ok(result) = decode::<RunResult>(&message.payload) {
            results.push(result);
        }
    }
    assert_eq!(
        results[0].outcome,
        flotilla_schemas::Outcome::Succeeded,
        "{:?}",
        results[0]
    );
    assert!(!results[0].replayed);
    assert!(results[1].replayed, "the second answer must be a replay");
    assert_eq!(results[1].outcome, results[0].outcome);
    let counter = std::fs::read_to_string(fleet.root("training").join("counter.txt")).unwrap();
    assert_eq!(counter, "applied\n", "the step ran more than once");
    tokio::task::block_in_place(|| drop(fleet));
}

/// Unmounts a test file system when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_backup_volume_fails_cleanly_with_nothing_changed() {
    let nats = NatsServer::start().unwrap();
    let volume = tempfile::tempdir().unwrap();
    // A real, small file system for the backups (CI runs as root, like this machine's sessions).
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "flotilla-test"])
        .arg(volume.path())
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 1 MiB tmpfs needs root");
    let _unmount = Mounted(volume.path().to_owned());
    let backup_dir = volume.path().to_str().unwrap();
    let fleet = Fleet::start_with_env(
        nats.url(),
        &["inference"],
        &[("FLOTILLA_AGENT__BACKUP_DIR", backup_dir)],
    )
    .unwrap();
    // 2 MiB of model weights: more than the backup volume holds.
    std::fs::write(
        fleet.root("inference").join("model.bin"),
        vec![7u8; 2 << 20],
    )
    .unwrap();
    let before = snapshot(&fleet.root("inference"));
    let (_, report) = fleet.migrate(migrate_inference_plan());
    let service = &report["services"][0];
    assert_eq!(service["status"], "refused", "{report:#}");
    assert!(
        service["reason"]
            .as_str()
            .unwrap()
            .contains("not enough space for the backup"),
        "{report:#}"
    );
    assert_eq!(snapshot(&fleet.root("inference")), before);
    assert_eq!(
        std::fs::read_dir(volume.path()).unwrap().count(),
        0,
        "a partial backup was left behind"
    );
}
