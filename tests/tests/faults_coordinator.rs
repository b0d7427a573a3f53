//! F2: kill -9 of the coordinator at each stage of a run — right after the run is recorded,
//! with a migration in flight, while rolling back, while finalizing — then `flotilla resume`.
//! The resumed run re-sends the same command IDs (the agents answer from their journals), so
//! nothing runs twice; every run ends with the invariant check I1–I6.

use std::time::{Duration, Instant};

use flotilla_tests::invariants::wait_for_run;
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, json_stdout};
use serde_json::Value;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const ROLES: [&str; 2] = ["inference", "ingest"];

fn status(fleet: &Fleet, run: &str) -> Value {
    serde_json::from_slice(&fleet.flotilla(&["status", run, "--output", "json"]).stdout)
        .unwrap_or(Value::Null)
}

/// Runs a two-wave plan (`ingest` fails validation when `fail`), kills the coordinator with
/// SIGKILL as soon as `when` holds for its status, resumes, and checks the invariants. Returns
/// the stage the kill landed in.
fn kill_then_resume(name: &str, fail: bool, when: impl Fn(&Value) -> bool) -> String {
    kill_then_resume_holding(name, fail, None, when)
}

/// [`kill_then_resume`], with `ingest`'s agent killed at crash point `hold` (when given) so that
/// the run stays in that stage until the coordinator is killed; the agent is then started
/// again (it finishes what it journalled) before the resume.
fn kill_then_resume_holding(
    name: &str,
    fail: bool,
    hold: Option<&str>,
    when: impl Fn(&Value) -> bool,
) -> String {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    if let Some(point) = hold {
        fleet.stop_agent("ingest");
        fleet.set_agent_env("ingest", "FLOTILLA_TEST_CRASH_AT", point);
        fleet.start_agent("ingest").unwrap();
        fleet.wait_ready(Duration::from_secs(20)).unwrap();
    }
    let scenario = Scenario::new(&fleet, &ROLES, COMMAND_TIMEOUT);
    let slow = "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 1\"]\n";
    let mut plan = format!(
        "name = \"{name}\"\ncommand_timeout = \"30s\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n"
    );
    plan.push_str(&scenario.service(&fleet, "inference", name, slow));
    if fail {
        plan.push_str(&scenario.failing_service(&fleet, "ingest", name));
    } else {
        plan.push_str(&scenario.service(&fleet, "ingest", name, slow));
    }
    let plan = fleet.write_plan("plan.toml", &plan);
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = wait_for_run(&fleet, Duration::from_secs(20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut landed = String::new();
    while Instant::now() < deadline {
        let report = status(&fleet, &run);
        if when(&report) || report["status"] != "running" {
            landed = format!("{}/{}", report["status"], report["stage"]);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if hold.is_some() {
        // The stage is recorded before its commands go out (the cross-service and correlation
        // checks run first): kill the coordinator only once the agent holds at its crash point,
        // so the kill lands with the stage's command in flight.
        let log = fleet.agent_log("ingest");
        flotilla_tests::wait_for(
            "ingest's agent to reach its crash point",
            Duration::from_secs(40),
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("test crash point reached")),
        )
        .unwrap();
    }
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    if hold.is_some() {
        // The crash point holds the agent until it is killed.
        fleet.kill_agent("ingest");
        fleet.clear_agent_env("ingest");
        fleet.start_agent("ingest").unwrap();
    }

    let healed = Instant::now();
    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    // A run the kill did not interrupt is refused (exit 2); any other run is driven to its end.
    if out.status.code() != Some(2) {
        assert!(
            report["status"].is_string() && report["status"] != "running",
            "{name}: {report:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok(&format!("kill -9 of the coordinator at {landed}"));
    let expected = if fail { "legacy" } else { "standard" };
    for role in ROLES {
        let tree = if evidence.trees[role] == scenario.before[role] {
            "legacy"
        } else {
            "standard"
        };
        assert_eq!(tree, expected, "{name}: {role} after resume");
        assert!(scenario.count(role, name) <= 1);
    }
    let final_status = json_stdout(&fleet.flotilla(&["status", &run, "--output", "json"]));
    assert_eq!(
        final_status["status"],
        if fail { "failed" } else { "succeeded" },
        "{final_status:#}"
    );
    landed
}

#[test]
fn kill_9_of_the_coordinator_right_after_it_records_the_run_then_resume() {
    let landed = kill_then_resume("recorded", false, |_| true);
    assert!(landed.contains("running"), "{landed}");
}

#[test]
fn kill_9_of_the_coordinator_with_a_migration_in_flight_then_resume() {
    let landed = kill_then_resume("in-flight", false, |r| {
        r["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["wave"] == "rest" && s["status"] == "in_flight")
        })
    });
    assert!(landed.contains("migrating"), "{landed}");
}

#[test]
fn kill_9_of_the_coordinator_while_rolling_back_then_resume() {
    let landed = kill_then_resume("rolling-back", true, |r| r["stage"] == "rolling_back");
    assert!(landed.contains("rolling_back"), "{landed}");
}

#[test]
fn kill_9_of_the_coordinator_while_finalizing_then_resume() {
    // Finalizing is quick: ingest's agent stops at its `finalizing` crash point and holds the
    // run in this stage until the kill.
    let landed = kill_then_resume_holding("finalizing", false, Some("finalizing"), |r| {
        r["stage"] == "finalizing"
    });
    assert!(landed.contains("finalizing"), "{landed}");
}
