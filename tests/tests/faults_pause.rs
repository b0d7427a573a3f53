//! F5: SIGSTOP of an agent for seconds, then SIGCONT — while its command is on the way (the
//! broker sends it into the frozen agent's connection, which holds it) and in the middle of a
//! step. The step runs once; the run ends; I1–I6 hold.

use std::time::{Duration, Instant};

use flotilla_tests::faults::create_streams;
use flotilla_tests::invariants::{drive_to_end, wait_for_run, wait_in_flight};
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, wait_for};
use serde_json::Value;

/// How long the agent stays frozen after its command is dispatched.
const FROZEN: Duration = Duration::from_secs(6);
const ROLES: [&str; 2] = ["inference", "ingest"];
const SLOW: &str =
    "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n";

fn service_status(fleet: &Fleet, run: &str, role: &str) -> Value {
    let report: Value =
        serde_json::from_slice(&fleet.flotilla(&["status", run, "--output", "json"]).stdout)
            .unwrap_or(Value::Null);
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == role).cloned())
        .unwrap_or(Value::Null)
}

/// Freezes `ingest`'s agent when `freeze_when` says so, keeps it frozen for [`FROZEN`] after
/// its command is dispatched, thaws it, and checks the run. Returns the evidence.
fn pause(name: &str, before_dispatch: bool) -> Evidence {
    let nats = NatsServer::start().unwrap();
    create_streams(nats.url()).unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let scenario = Scenario::new(&fleet, &ROLES, Duration::from_secs(30));
    let header =
        "[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n";
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, name, header, SLOW));
    let mut coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    if before_dispatch {
        wait_in_flight(&fleet, &run, Duration::from_secs(20)).unwrap();
        assert!(fleet.signal_agent("ingest", "STOP"));
    }
    wait_for(
        "ingest's command dispatched",
        Duration::from_secs(30),
        || service_status(&fleet, &run, "ingest")["status"] == "in_flight",
    )
    .unwrap();
    if !before_dispatch {
        // Into its slow step, past the ack.
        std::thread::sleep(Duration::from_millis(700));
        assert!(fleet.signal_agent("ingest", "STOP"));
    }
    std::thread::sleep(FROZEN);
    assert!(fleet.signal_agent("ingest", "CONT"));
    let healed = Instant::now();
    drive_to_end(&fleet, &mut coordinator, &run, Duration::from_secs(60), &[]);
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario.check(&evidence, Some(took)).assert_ok(name);
    for role in ROLES {
        assert_eq!(scenario.count(role, name), 1, "{name}: {role}");
    }
    evidence
}

#[test]
fn an_agent_frozen_while_its_command_arrives_runs_it_once() {
    let evidence = pause("frozen-before", true);
    // The command waited in the frozen agent's connection and was handled once it woke: one
    // result, the original (nothing redelivers a command; nothing needed to).
    let ingest = evidence.targets[1]["migrate"]["command"]["command_id"].clone();
    let copies: Vec<&Value> = evidence
        .events
        .iter()
        .filter(|e| e["schema"] == "flotilla.result.v1" && e["command_id"] == ingest)
        .collect();
    assert_eq!(copies.len(), 1, "{copies:#?}");
    assert_ne!(copies[0]["replayed"], true, "{:#}", copies[0]);
}

#[test]
fn an_agent_frozen_mid_step_finishes_once() {
    pause("frozen-mid-step", false);
}

/// Gap G1, fixed: the agent is frozen mid-step past its command's deadline. The coordinator
/// gives up on the migrate (`timed_out`) and, since the agent may still apply it, sends it a
/// rollback too. Thawed, the agent finishes the migrate, then runs the rollback that waited in
/// its connection behind it (or, had the connection died meanwhile, the rollback its catch-up
/// read finds: the last command sent to it): the tree is back as it was, and the record files the late migrate result beside the
/// rollback's, so it says what the journal says (I1).
#[test]
fn an_agent_frozen_past_its_deadline_is_rolled_back_once_it_wakes() {
    const ROLE: [&str; 1] = ["ingest"];
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLE).unwrap();
    let timeout = Duration::from_secs(4);
    let scenario = Scenario::new(&fleet, &ROLE, timeout);
    let plan = fleet.write_plan(
        "plan.toml",
        &scenario.plan(&fleet, "frozen-past-deadline", "", SLOW),
    );
    let mut coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    wait_for(
        "ingest's command dispatched",
        Duration::from_secs(30),
        || service_status(&fleet, &run, "ingest")["status"] == "in_flight",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    assert!(fleet.signal_agent("ingest", "STOP"));
    wait_for(
        "the coordinator to give up on the migrate",
        Duration::from_secs(20),
        || service_status(&fleet, &run, "ingest")["status"] == "timed_out",
    )
    .unwrap();
    assert!(fleet.signal_agent("ingest", "CONT"));
    let healed = Instant::now();
    let (code, _) = drive_to_end(&fleet, &mut coordinator, &run, Duration::from_secs(60), &[]);
    assert_ne!(
        code,
        Some(0),
        "a run with a timed-out service cannot succeed"
    );
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let journal = flotilla_tests::invariants::journal_path(&fleet, "ingest");
    wait_for(
        "the agent to run the rollback",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&journal)
                .is_ok_and(|j| j.contains("\"outcome\":\"rolled_back\""))
        },
    )
    .unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok("frozen past the deadline");
    assert_eq!(scenario.count("ingest", "frozen-past-deadline"), 1);
    let ingest = &evidence.targets[0];
    assert_eq!(
        ingest["migrate"]["result"]["outcome"], "succeeded",
        "{ingest:#}"
    );
    assert_eq!(
        ingest["rollback"]["result"]["outcome"], "rolled_back",
        "{ingest:#}"
    );
    assert_eq!(
        service_status(&fleet, &run, "ingest")["status"],
        "rolled_back"
    );
}
