//! F6, F8 and F9 of issue 9 — what arrives on the wire:
//! - clock skew: commands issued in the future or expired beyond `security.clock_skew` (30 s)
//!   are refused and do nothing; within the skew they are accepted;
//! - duplicated, reordered and late commands and results, replayed by the harness: nothing
//!   runs twice, a late rollback cannot undo a finalized run, the coordinator files one result
//!   per command;
//! - version skew: a command of another schema version is refused with the reason; an agent
//!   that speaks another command version (or answers presence in another version) stops the
//!   run before anything changes (exit 3, with the version named).
//!
//! Commands are forged as JSON and signed with the fleet's key (as `security.rs` does), so the
//! tests do not depend on the Rust structs' fields.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flotilla_tests::faults::{
    command_json, counting_action, new_id, publish_command, publish_event, results_of,
};
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, json_stdout};
use serde_json::{Value, json};
use time::OffsetDateTime;

const TIMEOUT: Duration = Duration::from_secs(20);

/// A fleet of one that has finished one clean run of the fault plan: the scenario, the run.
fn after_a_clean_run(nats: &NatsServer, name: &str) -> (Fleet, Scenario, String) {
    let fleet = Fleet::start(nats.url(), &["training"]).unwrap();
    let scenario = Scenario::new(&fleet, &["training"], Duration::from_secs(30));
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, name, "", ""));
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap().to_owned();
    (fleet, scenario, run)
}

/// Sends `command` signed with the fleet's key and returns the agent's (first) answer.
fn send(fleet: &Fleet, run: &str, command: &Value) -> Value {
    let id = command["command_id"].as_str().unwrap();
    publish_command(
        fleet.nats_url(),
        command["service"].as_str().unwrap(),
        serde_json::to_vec(command).unwrap(),
        Some(&fleet.signing_key()),
        &new_id(),
    )
    .unwrap();
    results_of(fleet.nats_url(), run, id, 1, TIMEOUT)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no answer to {id}"))
}

fn refused_because(result: &Value, because: &str) {
    assert_eq!(result["outcome"], "refused", "{result:#}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(because),
        "{because:?} not in {result:#}"
    );
}

#[test]
fn commands_skewed_beyond_the_allowed_clock_skew_are_refused_and_do_nothing() {
    let nats = NatsServer::start().unwrap();
    let (fleet, mut scenario, run) = after_a_clean_run(&nats, "clock");
    let now = OffsetDateTime::now_utc();
    let minutes = time::Duration::minutes;
    let seconds = time::Duration::seconds;
    let counter = scenario.counter("training");
    let forged = |issued: OffsetDateTime, expires: OffsetDateTime| {
        let id = new_id();
        command_json(
            "training",
            &run,
            &id,
            issued,
            expires,
            counting_action(&counter, &id),
        )
    };
    // The coordinator's clock 10 minutes ahead of the agent's, then 10 minutes behind.
    let future = forged(now + minutes(10), now + minutes(20));
    refused_because(&send(&fleet, &run, &future), "issued in the future");
    let expired = forged(now - minutes(20), now - minutes(10));
    refused_because(&send(&fleet, &run, &expired), "expired");
    for command in [&future, &expired] {
        scenario.forbid(command["command_id"].as_str().unwrap());
    }
    // Within the 30 s tolerance both ways: accepted and carried out, once.
    let ahead = forged(now + seconds(10), now + minutes(5));
    let behind = forged(now - minutes(1), now - seconds(10));
    for command in [&ahead, &behind] {
        let result = send(&fleet, &run, command);
        assert_eq!(result["outcome"], "succeeded", "{result:#}");
        assert_eq!(
            scenario.count("training", command["command_id"].as_str().unwrap()),
            1
        );
    }
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario.check(&evidence, None).assert_ok("clock skew");
}

#[test]
fn duplicated_reordered_and_late_messages_change_nothing_twice() {
    let nats = NatsServer::start().unwrap();
    let (fleet, scenario, run) = after_a_clean_run(&nats, "replayed");
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    let target = &evidence.targets[0];
    let migrate = target["migrate"]["command"].clone();
    let finalize = target["finalize"]["command"].clone();
    let migrate_id = migrate["command_id"].as_str().unwrap().to_owned();

    // Duplicates under new message IDs (the broker cannot dedupe them): answered from the
    // journal, marked replayed, with the original outcomes.
    for (command, outcome) in [(&migrate, "succeeded"), (&finalize, "finalized")] {
        let id = command["command_id"].as_str().unwrap();
        publish_command(
            fleet.nats_url(),
            "training",
            serde_json::to_vec(command).unwrap(),
            Some(&fleet.signing_key()),
            &new_id(),
        )
        .unwrap();
        let copies = results_of(fleet.nats_url(), &run, id, 2, TIMEOUT).unwrap();
        assert_eq!(copies.len(), 2, "{copies:#?}");
        assert_eq!(copies[1]["replayed"], true, "{copies:#?}");
        assert_eq!(copies[1]["outcome"], outcome);
    }
    // The same message ID again within the broker's duplicate window: dropped by the broker (not
    // stored, so not delivered either: the agent takes its commands from the stream).
    publish_command(
        fleet.nats_url(),
        "training",
        serde_json::to_vec(&migrate).unwrap(),
        Some(&fleet.signing_key()),
        &migrate_id,
    )
    .unwrap();
    let copies = results_of(
        fleet.nats_url(),
        &run,
        &migrate_id,
        3,
        Duration::from_secs(3),
    )
    .unwrap();
    assert_eq!(
        copies.len(),
        2,
        "the broker let a same-ID duplicate through: {copies:#?}"
    );
    assert_eq!(
        flotilla_tests::faults::last_command(fleet.nats_url(), "training")
            .map(|c| c["command_id"].clone()),
        Some(finalize["command_id"].clone()),
        "the broker stored a same-ID duplicate"
    );
    // Reordered and late: a rollback of the migration after its finalize (the backup is gone),
    // and a finalize of a migration the agent never saw.
    let now = OffsetDateTime::now_utc();
    let late_rollback = command_json(
        "training",
        &run,
        &new_id(),
        now,
        now + time::Duration::minutes(1),
        json!({"kind": "rollback", "migration": migrate_id}),
    );
    refused_because(&send(&fleet, &run, &late_rollback), "cannot roll back");
    let early_finalize = command_json(
        "training",
        &run,
        &new_id(),
        now,
        now + time::Duration::minutes(1),
        json!({"kind": "finalize", "migration": new_id()}),
    );
    let answer = send(&fleet, &run, &early_finalize);
    assert!(
        matches!(answer["outcome"].as_str(), Some("refused" | "finalized")),
        "{answer:#}"
    );
    // Late and duplicated results on the run's subject, after the run ended: the record keeps
    // its one result per command.
    let stored = evidence.results()[&migrate_id][0].clone();
    let mut contradicting = stored.clone();
    contradicting["outcome"] = json!("rolled_back");
    for event in [&stored, &contradicting] {
        publish_event(
            fleet.nats_url(),
            &run,
            "training",
            serde_json::to_vec(event).unwrap(),
        )
        .unwrap();
    }

    let after = Evidence::collect(&fleet, &scenario, &run).unwrap();
    assert_eq!(
        after.targets[0]["migrate"]["result"]["outcome"], "succeeded",
        "a late result rewrote the record"
    );
    // The contradicting result is the harness's forgery: leave it out of I2's comparison.
    let mut checked = after.clone();
    checked
        .events
        .retain(|e| !(e["command_id"] == migrate_id.as_str() && e["outcome"] == "rolled_back"));
    scenario
        .check(&checked, None)
        .assert_ok("replayed messages");
    assert_eq!(scenario.count("training", "replayed"), 1);
    assert_eq!(after.trees["training"], scenario.after["training"]);
}

/// Answers presence requests on `nats_url` as the agent that `presence` describes (another
/// version's agent), until dropped. (A v1 agent also waits for the v1 work queue, which a v2
/// deployment does not have; it answers presence meanwhile, which is all a coordinator sees.)
struct FakeAgent {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeAgent {
    fn start(nats_url: &str, presence: Value) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (nats_url.to_owned(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                use futures::StreamExt;
                let client = async_nats::connect(&url).await.unwrap();
                let (service, instance) = (
                    presence["service"].as_str().unwrap(),
                    presence["instance"].as_str().unwrap(),
                );
                let _ = (service, instance);
                let mut requests = client.subscribe("flotilla.presence").await.unwrap();
                client.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                while !flag.load(Ordering::Relaxed) {
                    let Ok(Some(request)) =
                        tokio::time::timeout(Duration::from_millis(100), requests.next()).await
                    else {
                        continue;
                    };
                    if let Some(reply) = request.reply {
                        let _ = client
                            .publish(reply, serde_json::to_vec(&presence).unwrap().into())
                            .await;
                        let _ = client.flush().await;
                    }
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn presence(schema: &str, service: &str, accepts: &str) -> Value {
    json!({
        "schema": schema,
        "service": service,
        "instance": "a",
        "version": "9.0.0",
        "accepts": [accepts],
        "host": "elsewhere",
        "state": "idle",
        "started_at": "2026-01-01T00:00:00Z",
    })
}

#[test]
fn other_schema_versions_fail_closed_with_a_clear_error_and_change_nothing() {
    let nats = NatsServer::start().unwrap();
    let (fleet, mut scenario, run) = after_a_clean_run(&nats, "versions");

    // Commands of other versions to this (v2) agent: an older coordinator's v1 (which would
    // have gone to v1's work queue, but may be published here) and a newer one's v3. Each is
    // refused, naming the version; nothing runs.
    for other in ["flotilla.command.v1", "flotilla.command.v3"] {
        let now = OffsetDateTime::now_utc();
        let id = new_id();
        let mut skewed = command_json(
            "training",
            &run,
            &id,
            now,
            now + time::Duration::minutes(5),
            counting_action(&scenario.counter("training"), &id),
        );
        skewed["schema"] = json!(other);
        refused_because(&send(&fleet, &run, &skewed), other);
        scenario.forbid(id);
    }
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, None)
        .assert_ok("v1 and v3 commands");

    // What an older coordinator reads of this agent: it accepts v2 only, so an older
    // coordinator's pre-flight stops with "does not accept flotilla.command.v1 (it accepts
    // flotilla.command.v2)" instead of sending where no agent reads.
    let agents = json_stdout(&fleet.flotilla(&["agents", "--output", "json"]));
    let training = agents
        .as_array()
        .or_else(|| agents["agents"].as_array())
        .and_then(|a| a.iter().find(|a| a["service"] == "training").cloned())
        .unwrap_or_else(|| panic!("{agents:#}"));
    assert_eq!(
        training["accepts"],
        json!(["flotilla.command.v2"]),
        "{training:#}"
    );

    // Agents of another version: an older one (v1 only: it reads a work queue this coordinator
    // no longer writes), a newer one (v3 only), and one that answers presence in a v2 schema
    // this coordinator cannot read. The run stops before anything is recorded or sent (exit 3),
    // naming the version, at once: never a command sent into silence and a timeout.
    let before_runs = json_stdout(&fleet.flotilla(&["runs", "--output", "json"]));
    let _older_agent = FakeAgent::start(
        nats.url(),
        presence("flotilla.presence.v1", "inference", "flotilla.command.v1"),
    );
    let _newer_agent = FakeAgent::start(
        nats.url(),
        presence("flotilla.presence.v1", "execution", "flotilla.command.v3"),
    );
    let _unreadable_agent = FakeAgent::start(
        nats.url(),
        presence("flotilla.presence.v2", "ingest", "flotilla.command.v2"),
    );
    for (service, expected) in [
        (
            "inference",
            "does not accept flotilla.command.v2 (it accepts flotilla.command.v1); it is older than per-agent command delivery: upgrade it",
        ),
        (
            "execution",
            "does not accept flotilla.command.v2 (it accepts flotilla.command.v3)",
        ),
        ("ingest", "no live agent"),
    ] {
        let plan = fleet.write_plan(
            "skew.toml",
            &format!(
                "name = \"skew\"\n[[service]]\nname = \"{service}\"\n[[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n"
            ),
        );
        let started = Instant::now();
        let out = fleet.flotilla(&[
            "migrate",
            plan.to_str().unwrap(),
            "--discovery-window",
            "1s",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{service}: {err}");
        assert!(
            err.contains(expected),
            "{service}: {expected:?} not in {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    assert_eq!(
        json_stdout(&fleet.flotilla(&["runs", "--output", "json"])),
        before_runs,
        "a refused pre-flight recorded a run"
    );
    assert_eq!(
        flotilla_tests::snapshot(&fleet.root("training")),
        scenario.after["training"]
    );
}

/// A result published on another agent's event subject is a forgery (the broker lets each
/// agent publish only on its own): the coordinator files only the result that came on the
/// subject of the agent the command went to, whatever the payload claims.
#[test]
fn a_result_on_another_agents_subject_is_not_filed() {
    const ROLES: [&str; 2] = ["inference", "ingest"];
    let slow = "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n";
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let scenario = Scenario::new(&fleet, &ROLES, Duration::from_secs(30));
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "forged", "", slow));
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = flotilla_tests::invariants::wait_for_run(&fleet, TIMEOUT).unwrap();
    let mut ingest_command = String::new();
    flotilla_tests::wait_for("ingest's migrate in flight", TIMEOUT, || {
        let status = json_stdout(&fleet.flotilla(&["status", &run, "--output", "json"]));
        let ingest = status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["service"] == "ingest").cloned())
            .unwrap_or(Value::Null);
        ingest_command = ingest["command_id"].as_str().unwrap_or_default().to_owned();
        ingest["status"] == "in_flight"
    })
    .unwrap();
    let forged = |service: &str| {
        json!({
            "schema": "flotilla.result.v1",
            "run_id": run,
            "command_id": ingest_command,
            "service": service,
            "instance": "a",
            "at": OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap(),
            "outcome": "rollback_failed",
            "reason": "forged",
        })
    };
    // On inference's subject: once naming ingest, once naming inference itself.
    for service in ["ingest", "inference"] {
        publish_event(
            fleet.nats_url(),
            &run,
            "inference",
            serde_json::to_vec(&forged(service)).unwrap(),
        )
        .unwrap();
    }
    let out = coordinator.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a forgery was filed: {report:#}"
    );
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    assert_eq!(
        evidence.targets[1]["migrate"]["result"]["outcome"], "succeeded",
        "{:#}",
        evidence.targets[1]
    );
    let mut checked = evidence.clone();
    checked.events.retain(|e| e["reason"] != "forged");
    scenario.check(&checked, None).assert_ok("forged results");
}
