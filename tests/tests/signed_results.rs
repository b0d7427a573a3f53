//! Results as trustworthy as commands: a real coordinator files only results signed by the key
//! of the agent they name, and refusals only of the command it sent, on the open demo server
//! where anyone may publish anywhere.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Command, InstanceId, Outcome, RunResult, ServiceName, decode, encode};
use flotilla_tests::{Fleet, NatsServer, json_stdout, wait_for};

fn agent_of(role: &str) -> (ServiceName, InstanceId) {
    (
        ServiceName::parse(role).unwrap(),
        InstanceId::parse("a").unwrap(),
    )
}

/// The command the coordinator has put in the stream for `role`, with its stream sequence and
/// signature header, once there is one.
async fn pending_command(
    js: &jetstream::Context,
    role: &str,
) -> (Command, u64, Option<String>, Vec<u8>) {
    let subjects = Subjects::default();
    let stream = js.get_stream(subjects.commands_stream()).await.unwrap();
    let (service, instance) = agent_of(role);
    let subject = subjects.command(&service, &instance);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await {
            let signature = message
                .headers
                .get(SIGNATURE_HEADER)
                .map(|v| v.as_str().to_owned());
            let payload = message.payload.to_vec();
            let command = decode::<Command>(&payload).unwrap();
            return (command, message.sequence, signature, payload);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no command for {role}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_command(js: &jetstream::Context, role: &str, payload: &[u8], sig: Option<&str>) {
    let (service, instance) = agent_of(role);
    let mut headers = async_nats::HeaderMap::new();
    // A new message ID: the stream's deduplication does not catch it.
    headers.insert(
        "Nats-Msg-Id",
        flotilla_schemas::CommandId::new().to_string().as_str(),
    );
    if let Some(sig) = sig {
        headers.insert(SIGNATURE_HEADER, sig);
    }
    js.publish_with_headers(
        Subjects::default().command(&service, &instance),
        headers,
        payload.to_vec().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn plan(fleet: &Fleet, script: &str) -> std::path::PathBuf {
    fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"signed\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"{script}\"]\n"
        ),
    )
}

/// Starts `flotilla migrate` of `plan`, with its JSON report.
fn migrate(fleet: &Fleet, plan: &std::path::Path) -> std::process::Child {
    fleet.spawn_flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--no-verify",
    ])
}

fn notes(report: &serde_json::Value) -> Vec<String> {
    report["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn training_status(report: &serde_json::Value) -> String {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "training")
        .map(|s| s["status"].as_str().unwrap_or_default().to_owned())
        .unwrap()
}

/// The tester's attack: the coordinator's command re-published unsigned (same bytes, a new
/// message ID) reaches the agent before the genuine one, and the agent refuses it on the
/// genuine command's IDs. That refusal answers another copy (its digest) and is not filed; the
/// genuine command's success is. To put the copy first, the agent is down when the coordinator
/// sends the genuine command (a canary wave holds its dispatch back until then); the genuine
/// command is taken out of the stream, and once the agent is back, the copy and then the
/// genuine command are published to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_of_an_unsigned_replay_is_not_filed_against_the_genuine_command() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = tokio::task::block_in_place(|| {
        Fleet::start(nats.url(), &["inference", "training"]).unwrap()
    });
    let js = jetstream::new(async_nats::connect(fleet.nats_url()).await.unwrap());
    let go = fleet.dir().join("go");
    let plan = fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"signed\"\ncommand_timeout = \"60s\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\nservices = [\"training\"]\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"while [ ! -f {} ]; do sleep 0.05; done\"]\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"echo applied >> counter.txt\"]\n",
            go.display()
        ),
    );
    let coordinator = migrate(&fleet, &plan);
    let inference_log = fleet.agent_log("inference");
    tokio::task::block_in_place(|| {
        wait_for("the canary to be running", Duration::from_secs(30), || {
            std::fs::read_to_string(&inference_log).is_ok_and(|l| l.contains("command received"))
        })
        .unwrap();
        fleet.kill_agent("training");
    });
    std::fs::write(&go, "").unwrap();
    let (_, sequence, signature, payload) = pending_command(&js, "training").await;
    let commands = js
        .get_stream(Subjects::default().commands_stream())
        .await
        .unwrap();
    commands.delete_message(sequence).await.unwrap();
    tokio::task::block_in_place(|| {
        fleet.start_agent("training").unwrap();
        fleet.wait_ready(Duration::from_secs(30)).unwrap();
    });
    // The replay goes first, then the genuine command again.
    publish_command(&js, "training", &payload, None).await;
    publish_command(&js, "training", &payload, signature.as_deref()).await;

    let out = tokio::task::block_in_place(|| coordinator.wait_with_output().unwrap());
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(training_status(&report), "succeeded", "{report:#}");
    let notes = notes(&report);
    assert!(
        notes.iter().any(|n| n
            .contains("ignored 1 forged result for training/a: it answers a copy of the command")),
        "{notes:?}"
    );
    let log = std::fs::read_to_string(fleet.agent_log("training")).unwrap();
    assert!(log.contains("not signed"), "the replay reached the agent");
    tokio::task::block_in_place(|| drop(fleet));
}

/// While the agent works, forged successes for its command are published on its own subject
/// (the open server lets anyone): one unsigned, one signed by another agent's key. Neither is
/// filed; both are noted; the run follows the genuine result (a rollback).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_successes_unsigned_or_signed_by_another_agent_are_ignored_with_a_note() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| {
        Fleet::start(nats.url(), &["training", "inference"]).unwrap()
    });
    let js = jetstream::new(async_nats::connect(fleet.nats_url()).await.unwrap());
    let go = fleet.dir().join("go");
    let plan = plan(
        &fleet,
        &format!(
            "while [ ! -f {} ]; do sleep 0.05; done; exit 1",
            go.display()
        ),
    );
    let coordinator = migrate(&fleet, &plan);
    // The step waits for `go`: the forgeries are published while the agent works.
    let (command, ..) = pending_command(&js, "training").await;
    let other_agent = SigningKey::load(&fleet.dir().join("state/inference/agent.key")).unwrap();
    let forged = RunResult::of(
        &command,
        time::OffsetDateTime::now_utc(),
        Outcome::Succeeded,
    );
    let payload = encode(&forged);
    let subject = Subjects::default().event(&command.run_id, &command.service, &command.instance);
    for signature in [None, Some(other_agent.sign(&payload))] {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(signature) = &signature {
            headers.insert(SIGNATURE_HEADER, signature.as_str());
        }
        js.publish_with_headers(subject.clone(), headers, payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let log = fleet.agent_log("training");
    // The coordinator has read both forgeries before the genuine result exists.
    tokio::task::block_in_place(|| {
        wait_for("the step to be running", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("command received"))
        })
        .unwrap()
    });
    std::fs::write(&go, "").unwrap();

    let out = tokio::task::block_in_place(|| coordinator.wait_with_output().unwrap());
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(training_status(&report), "rolled_back", "{report:#}");
    let notes = notes(&report);
    for why in [
        "not signed by its agent's key",
        &format!(
            "signed by key {}, which is not its agent's",
            other_agent.id()
        ),
    ] {
        assert!(
            notes
                .iter()
                .any(|n| n == &format!("ignored 1 forged result for training/a: {why}")),
            "{why}: {notes:?}"
        );
    }
    tokio::task::block_in_place(|| drop(fleet));
}
