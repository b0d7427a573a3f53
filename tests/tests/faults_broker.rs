//! F3 and F9 at the broker: kill -9 of nats-server mid-run, restarted on the same port and
//! store (acked commands may come back — the journal must absorb them), and a broker that is
//! full (JetStream stream limits) when the coordinator sends a command or an agent a result.
//! Every run ends with the invariant check.

use std::process::Child;
use std::time::{Duration, Instant};

use flotilla_tests::faults::{limit_commands_stream, limit_events_stream, results_of};
use flotilla_tests::invariants::wait_for_run;
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, demo_plan_text, snapshot, wait_for};
use serde_json::Value;

const ROLES: [&str; 2] = ["inference", "ingest"];

fn status(fleet: &Fleet, run: &str) -> Value {
    serde_json::from_slice(&fleet.flotilla(&["status", run, "--output", "json"]).stdout)
        .unwrap_or(Value::Null)
}

/// Waits (bounded) for a coordinator to exit; returns its exit code.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Drives `run` to its end after a fault: the coordinator either finished it, or stopped (its
/// store became unreachable) and `flotilla resume` finishes it.
fn finish(fleet: &Fleet, coordinator: &mut Child, run: &str, timeout: Duration) {
    let code = wait_exit(coordinator, timeout);
    if status(fleet, run)["status"] == "running" {
        let out = fleet.flotilla(&["resume", run, "--output", "json"]);
        assert!(
            matches!(out.status.code(), Some(0 | 1 | 6)),
            "resume after coordinator exit {code:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn kill_9_of_nats_server_mid_run_then_restart_on_the_same_port_and_store() {
    let mut nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let scenario = Scenario::new(&fleet, &ROLES, Duration::from_secs(40));
    let slow = "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n";
    let plan = fleet.write_plan(
        "plan.toml",
        &scenario.plan(&fleet, "broker-crash", "", slow),
    );
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    wait_for("a migration in flight", Duration::from_secs(20), || {
        status(&fleet, &run)["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "in_flight"))
    })
    .unwrap();
    let url = nats.url().to_owned();
    nats.kill();
    std::thread::sleep(Duration::from_secs(1));
    nats.restart().unwrap();
    assert_eq!(nats.url(), url, "same port");
    let healed = Instant::now();
    finish(&fleet, &mut coordinator, &run, Duration::from_secs(60));
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok("kill -9 of nats-server mid-run");
    for role in ROLES {
        assert!(scenario.count(role, "broker-crash") <= 1);
    }
}

/// The commands stream is full (its byte limit reached, discard new): the coordinator's
/// publish is refused, the service is reported `not_delivered`, and nothing changes anywhere.
#[test]
fn a_full_commands_stream_is_reported_not_delivered_and_changes_nothing() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], Duration::from_secs(10));
    limit_commands_stream(nats.url(), 64).unwrap();
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "full-commands", "", ""));
    let healed = Instant::now();
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["services"][0]["status"], "not_delivered",
        "{report:#}"
    );
    assert_ne!(out.status.code(), Some(0));
    let run = report["run_id"].as_str().unwrap();
    let took = scenario.wait_terminal(&fleet, run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok("full commands stream");
    assert_eq!(scenario.count("inference", "full-commands"), 0);
}

/// The events stream is full while an agent works, past the coordinator's deadline: its
/// progress and result are refused by the broker. Once the broker has room again, the agent
/// publishes the journalled result (I2) without a restart, the tree matches the journal (I4),
/// the step ran once (I3). The coordinator had recorded `timed_out` meanwhile and sent a
/// rollback, which the agent ran after the migrate; `status` then files both late results, so
/// the record agrees with the journal (I1; gap G1 in docs/reliability.md, fixed).
#[test]
fn a_full_events_stream_loses_no_journalled_outcome() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], Duration::from_secs(6));
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "full-events", "", ""));
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    // From now on, no event fits.
    limit_events_stream(nats.url(), 1).unwrap();
    let out = coordinator.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let journal = flotilla_tests::invariants::read_journal(
        &flotilla_tests::invariants::journal_path(&fleet, "inference"),
    )
    .unwrap();
    let journalled = journal
        .iter()
        .rev()
        .find(|r| r["record"] == "finished")
        .map(|r| r["result"]["outcome"].clone());
    eprintln!(
        "full events stream: coordinator saw {}, the agent journalled {journalled:?}",
        report["services"][0]["status"]
    );
    // Room again: the agent publishes what its journal holds unpublished (it retries every
    // 2 s), with no restart: the migrate's result and that of the rollback the coordinator sent
    // after giving up on it.
    limit_events_stream(nats.url(), 1 << 30).unwrap();
    let healed = Instant::now();
    let finished: Vec<String> = journal
        .iter()
        .filter(|r| r["record"] == "finished")
        .filter_map(|r| r["result"]["command_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        finished.len() >= 2,
        "the agent journalled the migrate and the rollback: {finished:?}"
    );
    for command in &finished {
        let published = results_of(nats.url(), &run, command, 1, Duration::from_secs(15)).unwrap();
        assert_eq!(
            published.len(),
            1,
            "the journalled result of {command} never reached the stream"
        );
    }
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    // `status` files the results that came after the coordinator gave up (gap G1, fixed): the
    // record then says what the journal says.
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    let verdict = scenario.check(&evidence, Some(took));
    verdict.assert_ok("full events stream");
}

/// The events stream is full while the agent finishes, and has room again before the
/// coordinator's deadline: the agent publishes the journalled result as soon as the broker
/// takes it (it retries; before the fix it waited for its next start) and the run ends as if
/// nothing happened.
#[test]
fn a_full_events_stream_that_recovers_before_the_deadline_delivers_the_outcome() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], Duration::from_secs(20));
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "events-full", "", ""));
    limit_events_stream(nats.url(), 1).unwrap();
    let mut coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    let journal = flotilla_tests::invariants::journal_path(&fleet, "inference");
    wait_for(
        "the agent to journal its result",
        Duration::from_secs(20),
        || std::fs::read_to_string(&journal).is_ok_and(|j| j.contains("\"record\":\"finished\"")),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    limit_events_stream(nats.url(), 1 << 30).unwrap();
    let healed = Instant::now();
    let code = wait_exit(&mut coordinator, Duration::from_secs(40));
    assert_eq!(
        code,
        Some(0),
        "the coordinator did not hear the outcome in time"
    );
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok("events stream full, then not");
    assert_eq!(evidence.trees["inference"], scenario.after["inference"]);
}

/// A rollback that the broker refuses until it expires (the commands stream full: the same as
/// a stream with no leader for that long) is not recorded `rolled_back`: the run ends
/// `unresolved` (exit 6), the service stays migrated and says its rollback was not delivered.
/// Once the broker takes commands again, `flotilla rollback RUN` sends the rollback again, as a
/// new command, and only the agent's answer makes the run `rolled_back`.
#[test]
fn a_rollback_the_broker_never_took_leaves_the_run_unresolved_until_it_is_sent_again() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let before = snapshot(&fleet.root("inference"));
    let plan = demo_plan_text(&["inference"])
        .replace("command_timeout = \"60s\"", "command_timeout = \"3s\"");
    let (code, report) = fleet.migrate_with(plan, &["--no-finalize"]);
    assert_eq!(code, Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap().to_owned();
    let migrated = snapshot(&fleet.root("inference"));
    assert_ne!(migrated, before);

    limit_commands_stream(nats.url(), 64).unwrap();
    let out = fleet.flotilla(&["rollback", &run, "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(6), "{report:#}");
    assert_eq!(report["status"], "unresolved", "{report:#}");
    let inference = &report["services"][0];
    assert_eq!(inference["status"], "not_delivered", "{report:#}");
    assert!(
        inference["reason"]
            .as_str()
            .unwrap()
            .contains("may still be migrated"),
        "{report:#}"
    );
    assert_eq!(
        snapshot(&fleet.root("inference")),
        migrated,
        "nothing was restored"
    );

    limit_commands_stream(nats.url(), -1).unwrap();
    let out = fleet.flotilla(&["rollback", &run, "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "rolled_back", "{report:#}");
    assert_eq!(report["services"][0]["status"], "rolled_back", "{report:#}");
    assert!(
        report["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("sent again as a new command")),
        "{report:#}"
    );
    assert_eq!(
        snapshot(&fleet.root("inference")),
        before,
        "restored byte for byte"
    );
}
