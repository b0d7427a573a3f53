//! Hostile and tricky inputs of issue 17 (item 6), against real agents on a real nats-server:
//! each is refused with a clear reason and changes nothing, and nothing the engine refuses is
//! shown as an outcome.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::signing::{SIGNATURE_HEADER, SigningKey};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{
    Action, Command, CommandId, InstanceId, Measurements, Outcome, RunId, RunResult, ServiceName,
    Step, decode, encode,
};
use flotilla_tests::{Fleet, NatsServer, snapshot, wait_for};
use futures::StreamExt;

/// How long a test waits for one answer.
const ANSWER: Duration = Duration::from_secs(30);

fn agent(service: &str, instance: &str) -> (ServiceName, InstanceId) {
    (
        ServiceName::parse(service).unwrap(),
        InstanceId::parse(instance).unwrap(),
    )
}

/// A command for `service/instance` in `run`, valid for five minutes.
fn command(service: &str, instance: &str, run_id: RunId, action: Action) -> Command {
    let (service, instance) = agent(service, instance);
    let now = time::OffsetDateTime::now_utc();
    Command {
        schema: Default::default(),
        command_id: CommandId::new(),
        run_id,
        service,
        instance,
        issued_at: now,
        expires_at: now + time::Duration::minutes(5),
        action,
    }
}

fn migrate(steps: Vec<Step>) -> Action {
    Action::Migrate {
        steps,
        health: Vec::new(),
        gates: Default::default(),
        preconditions: Vec::new(),
        checks: Vec::new(),
        workloads: Vec::new(),
    }
}

fn write_file(path: &str) -> Step {
    Step::WriteFile {
        path: path.into(),
        content: "owned\n".into(),
        source: None,
        mode: None,
    }
}

fn counting_step() -> Step {
    Step::RunCommand {
        program: "sh".into(),
        args: vec!["-c".into(), "echo applied >> counter.txt".into()],
        timeout_ms: 5000,
        env: Default::default(),
    }
}

/// Publishes `command`, signed by `signer`, on the command subject of `to` (`service/instance`),
/// and returns the first result published on `to`'s event subject of the command's run.
async fn send(
    js: &jetstream::Context,
    to: (&str, &str),
    command: &Command,
    signer: &SigningKey,
) -> RunResult {
    let subjects = Subjects::default();
    let (service, instance) = agent(to.0, to.1);
    let events = js.get_stream(subjects.events_stream()).await.unwrap();
    let consumer = events
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects.event(&command.run_id, &service, &instance),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let payload = encode(command);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", CommandId::new().to_string().as_str());
    headers.insert(SIGNATURE_HEADER, signer.sign(&payload).as_str());
    js.publish_with_headers(
        subjects.command(&service, &instance),
        headers,
        payload.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        let message = tokio::time::timeout_at(deadline, messages.next())
            .await
            .unwrap_or_else(|_| panic!("no answer from {}/{}", to.0, to.1))
            .unwrap()
            .unwrap();
        if let Ok(result) = decode::<RunResult>(&message.payload) {
            return result;
        }
    }
}

fn refused_because(result: &RunResult, expected: &[&str]) {
    assert_eq!(result.outcome, Outcome::Refused, "{result:?}");
    let reason = result.reason.as_deref().unwrap_or_default();
    for part in expected {
        assert!(reason.contains(part), "{reason:?} should contain {part:?}");
    }
}

async fn bus(fleet: &Fleet) -> jetstream::Context {
    jetstream::new(async_nats::connect(fleet.nats_url()).await.unwrap())
}

fn backups(fleet: &Fleet, role: &str) -> usize {
    std::fs::read_dir(fleet.dir().join("state").join(role).join("backups"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A rollback, finalize or revalidating inspect under another run's ID than the migration's is
/// refused with both run IDs named, and changes nothing: the migration's own run can still
/// validate it again (its memory gate) and roll it back; once rolled back, it is not validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_or_finalize_under_another_runs_id_is_refused() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    let run = RunId::new();
    let migration = command("training", "a", run, migrate(vec![counting_step()]));
    let migrated = send(&js, ("training", "a"), &migration, &key).await;
    assert_eq!(migrated.outcome, Outcome::Succeeded, "{migrated:?}");
    let root = fleet.root("training");
    let before = snapshot(&root);
    let pid = fleet.service_pid("training");

    let other = RunId::new();
    for (action, what) in [
        (
            Action::Rollback {
                migration: migration.command_id,
            },
            "rollback",
        ),
        (
            Action::Finalize {
                migration: migration.command_id,
            },
            "finalize",
        ),
        (revalidate(migration.command_id), "inspect"),
    ] {
        let foreign = command("training", "a", other, action);
        let answer = send(&js, ("training", "a"), &foreign, &key).await;
        refused_because(
            &answer,
            &[
                &format!("belongs to run {run}, not to run {other}"),
                &format!("this {what} names"),
            ],
        );
        assert_eq!(snapshot(&root), before, "a foreign {what} changed the root");
        assert_eq!(
            fleet.service_pid("training"),
            pid,
            "a foreign {what} restarted"
        );
    }
    assert_eq!(backups(&fleet, "training"), 1, "the backup was dropped");
    // Its own run's inspect validates it again: the memory gate against its baseline.
    let again = command("training", "a", run, revalidate(migration.command_id));
    let again = send(&js, ("training", "a"), &again, &key).await;
    assert_eq!(again.outcome, Outcome::Succeeded, "{again:?}");
    let gates = again.inspection.map(|i| i.gates).unwrap_or_default();
    let before = migrated.measurements.rss_bytes_before;
    assert!(
        gates
            .iter()
            .any(|g| g.gate == "memory_bytes" && g.passed && Some(g.before) == before),
        "{gates:?}"
    );

    let own = command(
        "training",
        "a",
        run,
        Action::Rollback {
            migration: migration.command_id,
        },
    );
    let rolled_back = send(&js, ("training", "a"), &own, &key).await;
    assert_eq!(rolled_back.outcome, Outcome::RolledBack, "{rolled_back:?}");
    assert!(!root.join("counter.txt").exists());
    let late = command("training", "a", run, revalidate(migration.command_id));
    let late = send(&js, ("training", "a"), &late, &key).await;
    refused_because(&late, &["is rolled back: nothing to validate again"]);
    tokio::task::block_in_place(|| drop(fleet));
}

/// An inspect that validates `migration` again, as a pause between waves sends it.
fn revalidate(migration: flotilla_schemas::CommandId) -> Action {
    Action::Inspect {
        checks: Vec::new(),
        config_files: Vec::new(),
        settings: Vec::new(),
        revalidate: Some(migration),
    }
}

/// Step file names with a newline, a control character or U+202E are refused by `plan check`
/// and, sent straight to the agent, refused naming the character, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_bidi_characters_in_step_paths_are_refused_by_plan_check_and_the_agent() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    for (escaped, code) in [
        ("invoice\\u202Etxt.exe", "U+202E"),
        ("config/a\\nb.toml", "U+000A"),
        ("a\\u001B[31mb", "U+001B"),
    ] {
        let plan = fleet.write_plan(
            "plan.toml",
            &format!(
                "name = \"hostile\"\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"write_file\"\npath = \"{escaped}\"\ncontent = \"x\"\n"
            ),
        );
        let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{escaped}: {stderr}");
        assert!(
            stderr.contains(code) && stderr.contains("bidirectional-formatting"),
            "{escaped}: {stderr}"
        );
    }

    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    let root = fleet.root("training");
    let before = snapshot(&root);
    for (path, code) in [
        ("invoice\u{202E}txt.exe", "U+202E"),
        ("a\nb.toml", "U+000A"),
        ("a\u{7}b", "U+0007"),
    ] {
        let hostile = command(
            "training",
            "a",
            RunId::new(),
            migrate(vec![write_file(path)]),
        );
        let answer = send(&js, ("training", "a"), &hostile, &key).await;
        refused_because(&answer, &["precheck: step 1 (write_file)", code]);
        let reason = answer.reason.unwrap();
        assert!(!reason.contains(path), "the raw name is in {reason:?}");
    }
    assert_eq!(snapshot(&root), before);
    assert_eq!(backups(&fleet, "training"), 0);
    tokio::task::block_in_place(|| drop(fleet));
}

/// An inspection of a config file outside the root (`..`, or through a symlink) is refused,
/// not reported missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspecting_a_config_file_outside_the_root_is_refused() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let outside = fleet.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim.conf"), "password=hunter2\n").unwrap();
    std::os::unix::fs::symlink(&outside, fleet.root("training").join("escape")).unwrap();
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    for (path, why) in [
        ("../outside/victim.conf", "leaves the service root"),
        ("escape/victim.conf", "leads outside the service root"),
    ] {
        let inspect = Action::Inspect {
            checks: Vec::new(),
            config_files: vec!["legacy.conf".into(), path.into()],
            settings: Vec::new(),
            revalidate: None,
        };
        let answer = send(
            &js,
            ("training", "a"),
            &command("training", "a", RunId::new(), inspect),
            &key,
        )
        .await;
        refused_because(&answer, &[&format!("config file {path:?}"), why]);
        assert!(answer.inspection.is_none(), "{answer:?}");
    }
    tokio::task::block_in_place(|| drop(fleet));
}

/// A step whose path leads outside the root through a symlink is refused at precheck: no
/// backup, no restart, nothing written; the dry run says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_escape_is_refused_at_precheck_and_by_the_dry_run() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let outside = fleet.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "untouched").unwrap();
    let root = fleet.root("training");
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim"), root.join("linked.conf")).unwrap();
    let before = snapshot(&root);
    let pid = fleet.service_pid("training");
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    let replace = Step::ReplaceText {
        path: "linked.conf".into(),
        find: "untouched".into(),
        replace: "owned".into(),
    };
    for (steps, step) in [
        (
            vec![counting_step(), write_file("escape/victim")],
            "step 2 (write_file)",
        ),
        (vec![write_file("escape/new/file")], "step 1 (write_file)"),
        (vec![replace.clone()], "step 1 (replace_text)"),
    ] {
        let hostile = command("training", "a", RunId::new(), migrate(steps.clone()));
        let answer = send(&js, ("training", "a"), &hostile, &key).await;
        refused_because(
            &answer,
            &[
                &format!("precheck: {step}"),
                "leads outside the service root",
            ],
        );
        let preview = Action::Preview {
            steps,
            preconditions: Vec::new(),
            checks: Vec::new(),
            workloads: Vec::new(),
        };
        let dry = command("training", "a", RunId::new(), preview);
        let answer = send(&js, ("training", "a"), &dry, &key).await;
        refused_because(
            &answer,
            &[
                &format!("precheck: {step}"),
                "leads outside the service root",
            ],
        );
    }
    assert_eq!(snapshot(&root), before);
    assert_eq!(backups(&fleet, "training"), 0, "a backup was taken");
    assert_eq!(
        fleet.service_pid("training"),
        pid,
        "the service was restarted"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "untouched"
    );
    assert!(!outside.join("new").exists());
    tokio::task::block_in_place(|| drop(fleet));
}

/// A command for `ingest/a` published on training's subject is refused by training in its own
/// name (the subject and key it answers with), saying whom the command was addressed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misaddressed_refusal_names_the_refusing_agent_and_the_addressee() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    let misaddressed = command("ingest", "a", RunId::new(), migrate(vec![counting_step()]));
    let answer = send(&js, ("training", "a"), &misaddressed, &key).await;
    refused_because(
        &answer,
        &["refused by training/a: the command was addressed to ingest/a"],
    );
    assert_eq!(
        (answer.service.as_str(), answer.instance.as_str()),
        ("training", "a")
    );
    assert!(!fleet.root("training").join("counter.txt").exists());
    tokio::task::block_in_place(|| drop(fleet));
}

/// Two agents whose names join alike (`training/q_a` and `training_q/a`, both
/// `agent_training_q_a` before) get their own consumers: each is served its own commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_whose_names_join_alike_each_get_their_own_commands() {
    let nats = NatsServer::start().unwrap();
    let env = |role: &str| -> Vec<(String, String)> {
        let (name, instance) = match role {
            "training" => ("training", "q_a"),
            _ => ("training_q", "a"),
        };
        vec![
            ("FLOTILLA_SERVICE__NAME".into(), name.into()),
            ("FLOTILLA_AGENT__INSTANCE".into(), instance.into()),
        ]
    };
    let fleet = tokio::task::block_in_place(|| {
        Fleet::start_with(nats.url(), &["training", "inference"], &env, Vec::new()).unwrap()
    });
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    for (service, instance) in [("training", "q_a"), ("training_q", "a")] {
        let inspect = Action::Inspect {
            checks: Vec::new(),
            config_files: Vec::new(),
            settings: Vec::new(),
            revalidate: None,
        };
        let sent = command(service, instance, RunId::new(), inspect);
        let answer = send(&js, (service, instance), &sent, &key).await;
        assert_eq!(answer.outcome, Outcome::Succeeded, "{answer:?}");
        assert_eq!(
            (answer.service.as_str(), answer.instance.as_str()),
            (service, instance)
        );
    }
    tokio::task::block_in_place(|| drop(fleet));
}

/// A deployment upgraded in place still holds v1's work-queue commands stream with an agent's
/// durable consumer on it (under the old name of earlier versions, `_` not doubled, too).
/// `flotilla setup` creates the new commands stream beside it and reports the old one as
/// obsolete, naming its consumers, changing nothing and failing nothing; the upgraded agent
/// ignores it and serves its commands through the new delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_leaves_the_v1_work_queue_alone_and_setup_reports_it_obsolete() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = tokio::task::block_in_place(|| Fleet::empty(nats.url(), Vec::new()).unwrap());
    let (js, key) = (bus(&fleet).await, fleet.signing_key());
    let subjects = Subjects::default();
    let (service, instance) = agent("training", "x_a");
    // What a v1 deployment left: the work queue on `flotilla.cmd.>` and an agent's consumer.
    let legacy = js
        .create_stream(jetstream::stream::Config {
            name: subjects.legacy_commands_stream(),
            subjects: vec!["flotilla.cmd.>".into()],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await
        .unwrap();
    let name = format!("agent_{service}_{instance}");
    legacy
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: format!("flotilla.cmd.{service}.{instance}"),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let out = tokio::task::block_in_place(|| fleet.flotilla(&["setup", "--output", "json"]));
    assert!(out.status.success(), "{out:?}");
    let report = flotilla_tests::json_stdout(&out);
    let resources = report["resources"].as_array().unwrap();
    let status_of = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not reported: {report:#}"))
    };
    assert_eq!(status_of("FLOTILLA_COMMANDS_V2")["status"], "created");
    let old = status_of("FLOTILLA_COMMANDS");
    assert_eq!(old["status"], "obsolete", "{old:#}");
    let note = old["note"].as_str().unwrap();
    assert!(
        note.contains("1 agent consumers") && note.contains("nats stream rm FLOTILLA_COMMANDS"),
        "{note}"
    );

    let env = |_: &str| vec![("FLOTILLA_AGENT__INSTANCE".into(), "x_a".into())];
    tokio::task::block_in_place(|| fleet.add_and_start(&["training"], &env).unwrap());
    let inspect = Action::Inspect {
        checks: Vec::new(),
        config_files: Vec::new(),
        settings: Vec::new(),
        revalidate: None,
    };
    let sent = command("training", "x_a", RunId::new(), inspect);
    let answer = send(&js, ("training", "x_a"), &sent, &key).await;
    assert_eq!(answer.outcome, Outcome::Succeeded, "{answer:?}");
    // Left as it was: agents older than v2 may still read it.
    assert!(
        legacy.consumer_info(&name).await.is_ok(),
        "the old consumer went"
    );
    tokio::task::block_in_place(|| drop(fleet));
}

/// A prefix with `_` would share the streams and run store of the prefix spelt with `-`: it is
/// refused before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_that_would_share_another_deployments_streams_is_refused() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::empty(nats.url(), Vec::new()).unwrap());
    let out = fleet.flotilla(&["--prefix", "fleet_a", "setup"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("share the streams and run store of prefix \"fleet-a\""),
        "{stderr}"
    );
    let js = bus(&fleet).await;
    assert!(js.get_stream("FLEET_A_COMMANDS").await.is_err());
    tokio::task::block_in_place(|| drop(fleet));
}

/// Signs and publishes `result` on `service/instance`'s event subject of its run.
async fn publish_result(js: &jetstream::Context, result: &RunResult, key: Option<&SigningKey>) {
    let payload = encode(result);
    let mut headers = async_nats::HeaderMap::new();
    if let Some(key) = key {
        headers.insert(SIGNATURE_HEADER, key.sign(&payload).as_str());
    }
    let subject = Subjects::default().event(&result.run_id, &result.service, &result.instance);
    js.publish_with_headers(subject, headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

fn forged(command: &Command, service: &str, outcome: Outcome, digest: Option<&str>) -> RunResult {
    let (service, instance) = agent(service, "a");
    RunResult {
        schema: Default::default(),
        run_id: command.run_id,
        command_id: command.command_id,
        service,
        instance,
        at: time::OffsetDateTime::now_utc(),
        outcome,
        reason: Some("forged".into()),
        phases: Vec::new(),
        measurements: Measurements::default(),
        gates: Vec::new(),
        workloads: Vec::new(),
        inspection: None,
        preview: None,
        replayed: false,
        command_digest: digest.map(str::to_owned),
    }
}

/// The command the coordinator put in the stream for training/a, once there is one.
async fn pending_command(js: &jetstream::Context) -> Command {
    let subjects = Subjects::default();
    let stream = js.get_stream(subjects.commands_stream()).await.unwrap();
    let (service, instance) = agent("training", "a");
    let subject = subjects.command(&service, &instance);
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        if let Ok(message) = stream.get_last_raw_message_by_subject(&subject).await {
            return decode::<Command>(&message.payload).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no command");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Results the engine refuses — one naming `ghost/a`, an agent not in the run, and one signed
/// by training's own key but refusing a copy of the command the coordinator did not send — are
/// shown neither by live progress nor by `watch --output json`; both are noted in the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_the_engine_refuses_are_shown_neither_live_nor_by_watch() {
    let nats = NatsServer::start().unwrap();
    let fleet = tokio::task::block_in_place(|| Fleet::start(nats.url(), &["training"]).unwrap());
    let js = bus(&fleet).await;
    // The step waits for `go`: the forgeries are read before the genuine result exists.
    let go = fleet.dir().join("go");
    let plan = fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"shown\"\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"while [ ! -f {} ]; do sleep 0.05; done; echo applied >> counter.txt\"]\n",
            go.display()
        ),
    );
    let run = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--no-verify"]);
    let command = pending_command(&js).await;
    let mut watch =
        fleet.spawn_flotilla(&["watch", &command.run_id.to_string(), "--output", "json"]);
    let training_key = SigningKey::load(&fleet.dir().join("state/training/agent.key")).unwrap();
    let ghost = forged(&command, "ghost", Outcome::Succeeded, None);
    publish_result(&js, &ghost, None).await;
    let copy = forged(
        &command,
        "training",
        Outcome::Refused,
        Some("not-the-digest"),
    );
    publish_result(&js, &copy, Some(&training_key)).await;
    std::fs::write(&go, "").unwrap();

    let out = tokio::task::block_in_place(|| run.wait_with_output().unwrap());
    let live = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{live}");
    // Only the notes name them: no line shows them as an outcome.
    assert!(!live.contains("ghost/a =>"), "{live}");
    assert!(!live.contains("=> refused"), "{live}");
    assert!(live.contains("training/a => succeeded"), "{live}");
    assert!(
        live.contains(
            "ignored 1 forged result for ghost/a: it names an agent that is not in this run"
        ),
        "{live}"
    );
    assert!(live.contains("it answers a copy of the command"), "{live}");

    let watched = tokio::task::block_in_place(|| {
        wait_for("watch to end with the run", ANSWER, || {
            watch.try_wait().unwrap().is_some()
        })
        .unwrap();
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut stdout).unwrap();
        stdout
    });
    let lines: Vec<serde_json::Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "result").collect();
    assert!(
        results
            .iter()
            .all(|r| r["service"] == "training" && r["outcome"] != "refused"),
        "{results:#?}"
    );
    let migrated: Vec<_> = results
        .iter()
        .filter(|r| r["command_id"] == command.command_id.to_string())
        .collect();
    assert_eq!(migrated.len(), 1, "{results:#?}");
    assert_eq!(migrated[0]["outcome"], "succeeded");
    tokio::task::block_in_place(|| drop(fleet));
}
