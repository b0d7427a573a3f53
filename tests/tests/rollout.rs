//! The rollout engine end to end: waves with a canary, rollback in reverse wave order, durable
//! runs (kill -9 of the coordinator, then `flotilla resume`), fleet rollback, rehearsal and
//! cancel. Real `flotilla` and `flotilla-agent` binaries, real sample services, real nats-server.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_tests::report::service;
use flotilla_tests::{
    Fleet, NatsServer, Plan, ROLES, Service, Snapshot, json_stdout, repo_root, snapshot, wait_for,
};
use serde_json::Value;

fn snapshots(fleet: &Fleet, roles: &[&str]) -> BTreeMap<String, Snapshot> {
    roles
        .iter()
        .map(|r| ((*r).to_owned(), snapshot(&fleet.root(r))))
        .collect()
}

fn assert_healthy_legacy(fleet: &Fleet, roles: &[&str]) {
    for role in roles {
        let (status, body) = fleet.health(role).expect("service answers");
        assert_eq!(status, 200, "{role}: {body}");
        assert!(body.contains("\"layout\":\"legacy\""), "{role}: {body}");
    }
}

/// A `[[service]]` whose migration counts its applications in `counter.txt` (then waits
/// `sleep` seconds), and fails validation when `fail` is set.
fn counting_service(name: &str, sleep: u32, fail: bool) -> String {
    let mut service = Service::new(name).sh("echo x >> counter.txt");
    if sleep > 0 {
        service = service.sh(&format!("sleep {sleep}"));
    }
    if fail {
        service = service
            .replace_text("legacy.conf", "fail_health=false", "fail_health=true")
            .health_timeout_ms(1500);
    }
    service.to_string()
}

fn status(fleet: &Fleet, run: &str) -> Value {
    json_stdout(&fleet.flotilla(&["status", run, "--output", "json"]))
}

#[test]
fn a_failing_canary_stops_the_run_before_the_next_wave_and_is_rolled_back() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before = snapshots(&fleet, &roles);
    let plan = Plan::new("canary-breaks")
        .set("command_timeout", "30s")
        .wave("canary", &["inference"])
        .wave("rest", &[])
        .service(counting_service("inference", 0, true))
        .service(counting_service("ingest", 0, false))
        .service(counting_service("training", 0, false));
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "failed");
    let canary = service(&report, "inference");
    assert_eq!(canary["status"], "rolled_back", "{canary:#}");
    assert_eq!(canary["failure"], "failed_validation");
    assert_eq!(canary["wave"], "canary");
    for role in ["ingest", "training"] {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "not_started", "{entry:#}");
        assert!(entry.get("command_id").is_none(), "{entry:#}");
        assert_eq!(fleet.counter(role), 0, "{role} was touched");
    }
    assert_eq!(report["waves"][0]["status"], "done");
    assert_eq!(report["waves"][1]["status"], "pending");
    assert_eq!(snapshots(&fleet, &roles), before);
    assert_healthy_legacy(&fleet, &roles);
}

#[test]
fn a_failure_in_wave_two_rolls_back_waves_two_and_one_in_reverse_order() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let before = snapshots(&fleet, &ROLES);
    let plan = format!(
        "name = \"wave-two-breaks\"\ncommand_timeout = \"30s\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"second\"\nservices = [\"ingest\", \"training\"]\nmax_parallel = 1\n[[wave]]\nname = \"last\"\n{}{}{}{}{}",
        counting_service("inference", 0, false),
        counting_service("ingest", 0, false),
        counting_service("training", 0, true),
        counting_service("execution", 0, false),
        counting_service("preprocess", 0, false),
    );
    let (code, report) = fleet.migrate(&plan);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "failed");
    assert_eq!(service(&report, "training")["failure"], "failed_validation");
    for role in ["inference", "ingest"] {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "rolled_back", "{entry:#}");
        assert_eq!(entry["rollback_validated"], true, "{entry:#}");
    }
    // Wave 2's rollback ended before wave 1's started: reverse order.
    let at = |role: &str| {
        time::OffsetDateTime::parse(
            service(&report, role)["rolled_back_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    assert!(at("ingest") <= at("inference"), "{report:#}");
    for role in ["execution", "preprocess"] {
        assert_eq!(service(&report, role)["status"], "not_started");
    }
    assert_eq!(
        snapshots(&fleet, &ROLES),
        before,
        "the fleet is not byte-identical"
    );
    assert_healthy_legacy(&fleet, &ROLES);

    // The Markdown report and JUnit XML tell the same story.
    let run = report["run_id"].as_str().unwrap();
    let md = fleet.flotilla(&["report", run, "--format", "md"]);
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("| training/a | second | rolled_back |"), "{md}");
    assert!(md.contains("failed validation"), "{md}");
    let junit = fleet.flotilla(&["report", run, "--format", "junit"]);
    let junit = String::from_utf8_lossy(&junit.stdout);
    assert!(junit.contains("type=\"failed validation\""), "{junit}");
    assert!(junit.contains("skipped=\"2\""), "{junit}");
}

#[test]
fn kill_9_of_the_coordinator_mid_wave_then_resume_finishes_without_duplicates() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let mut plan = "name = \"slow\"\ncommand_timeout = \"60s\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\nmax_parallel = 2\n".to_owned();
    for role in ROLES {
        plan.push_str(&counting_service(role, 2, false));
    }
    let plan = fleet.write_plan("slow.toml", &plan);
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = fleet.only_run();
    wait_for(
        "a wave-2 service in flight",
        Duration::from_secs(30),
        || {
            let report = status(&fleet, &run);
            report["services"].as_array().is_some_and(|s| {
                s.iter()
                    .any(|s| s["wave"] == "rest" && s["status"] == "in_flight")
            })
        },
    )
    .unwrap();
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    let interrupted = status(&fleet, &run);
    assert_eq!(interrupted["status"], "running", "{interrupted:#}");
    let in_flight: Vec<String> = interrupted["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] == "in_flight")
        .map(|s| s["service"].as_str().unwrap().to_owned())
        .collect();
    assert!(!in_flight.is_empty(), "{interrupted:#}");
    // Let the agents finish while no coordinator listens: their results must be read back.
    wait_for("the agents to go idle", Duration::from_secs(30), || {
        fleet
            .agents()
            .is_ok_and(|a| a.iter().all(|a| a["state"] == "idle"))
    })
    .unwrap();

    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["finalized"], true);
    for role in ROLES {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        assert!(!entry["phases"].as_array().unwrap().is_empty(), "{entry:#}");
        if in_flight.iter().any(|s| s == role) {
            // The same command as before the kill, answered while the coordinator was down.
            let before = service(&interrupted, role);
            assert_eq!(entry["command_id"], before["command_id"], "{role}");
        }
        assert_eq!(fleet.counter(role), 1, "{role} was migrated more than once");
    }
    // Resuming a finished run is refused and changes nothing.
    let again = fleet.flotilla(&["resume", &run]);
    assert_eq!(again.status.code(), Some(2));
}

#[test]
fn rehearse_leaves_every_service_as_it_was_and_validates_rollback() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let before = snapshots(&fleet, &ROLES);
    let plan = repo_root().join("deploy/demo/plan.toml");
    let md = fleet.dir().join("rehearsal.md");
    let junit = fleet.dir().join("rehearsal.xml");
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--rehearse",
        "--output",
        "json",
        "--report-md",
        md.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["status"], "rehearsed");
    assert_eq!(report["finalized"], true);
    // Proven like a real run before the rollback: the cross-service checks and the
    // correlation check ran over the migrated fleet, and their verdicts are recorded.
    assert_eq!(report["cross_service"]["ok"], true, "{report:#}");
    let correlation = &report["correlation"];
    assert_eq!(correlation["ok"], true, "{correlation:#}");
    assert_eq!(
        correlation["services"].as_array().unwrap().len(),
        ROLES.len(),
        "{correlation:#}"
    );
    for role in ROLES {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "rolled_back", "{entry:#}");
        assert_eq!(entry["rollback_validated"], true, "{entry:#}");
        let backups = fleet.dir().join("state").join(role).join("backups");
        assert_eq!(std::fs::read_dir(&backups).unwrap().count(), 0, "{role}");
    }
    assert_eq!(snapshots(&fleet, &ROLES), before);
    assert_healthy_legacy(&fleet, &ROLES);
    let md = std::fs::read_to_string(md).unwrap();
    assert!(md.contains("rollback validated"), "{md}");
    assert!(md.contains("rollback tested: yes"), "{md}");
    assert!(md.contains("`config/service.toml`"), "{md}");
    let junit = std::fs::read_to_string(junit).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
}

#[test]
fn rollback_restores_a_left_run_one_service_then_the_rest_latest_wave_first() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before = snapshots(&fleet, &roles);
    let plan = format!(
        "name = \"leave\"\non_failure = \"leave\"\n[[wave]]\nname = \"one\"\nservices = [\"inference\"]\n[[wave]]\nname = \"two\"\n{}{}{}",
        counting_service("inference", 0, false),
        counting_service("ingest", 0, false),
        counting_service("training", 0, true),
    );
    let (code, report) = fleet.migrate(&plan);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(service(&report, "inference")["status"], "succeeded");
    assert_eq!(service(&report, "ingest")["status"], "succeeded");
    assert_eq!(fleet.counter("ingest"), 1);
    let run = report["run_id"].as_str().unwrap();

    let bad = fleet.flotilla(&["rollback", run, "--service", "nosuch"]);
    assert_eq!(bad.status.code(), Some(2));
    let out = fleet.flotilla(&["rollback", run, "--service", "ingest", "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "rolled_back");
    assert_eq!(service(&report, "ingest")["status"], "rolled_back");
    assert_eq!(service(&report, "inference")["status"], "succeeded");
    assert_eq!(snapshot(&fleet.root("ingest")), before["ingest"]);
    assert_eq!(fleet.counter("inference"), 1);

    let out = fleet.flotilla(&["rollback", run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(
        service(&report, "inference")["status"],
        "rolled_back",
        "{report:#}"
    );
    assert_eq!(snapshots(&fleet, &roles), before);
    assert_healthy_legacy(&fleet, &roles);
}

#[test]
fn cancel_from_elsewhere_stops_dispatching_and_resume_finishes_the_run() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let mut plan = "name = \"one-by-one\"\nmax_parallel = 1\n".to_owned();
    for role in roles {
        plan.push_str(&counting_service(role, 2, false));
    }
    let plan = fleet.write_plan("serial.toml", &plan);
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    let cancel = fleet.flotilla(&["cancel", &run]);
    assert_eq!(
        cancel.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(7), "{report:#}");
    assert_eq!(report["status"], "cancelled");
    let started: Vec<&Value> = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["status"] != "not_started")
        .collect();
    assert!(
        started.len() < 3,
        "cancel did not stop dispatching: {report:#}"
    );
    for s in &started {
        assert_eq!(s["status"], "succeeded", "in-flight services finish: {s:#}");
    }

    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    for role in roles {
        assert_eq!(fleet.counter(role), 1, "{role}");
    }
}

#[test]
fn ctrl_c_lets_in_flight_services_finish_and_leaves_the_run_resumable() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let mut plan = "name = \"interrupted\"\nmax_parallel = 1\n".to_owned();
    for role in roles {
        plan.push_str(&counting_service(role, 2, false));
    }
    let plan = fleet.write_plan("serial.toml", &plan);
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    wait_for("a service in flight", Duration::from_secs(20), || {
        status(&fleet, &run)["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "in_flight"))
    })
    .unwrap();
    let interrupt = std::process::Command::new("kill")
        .args(["-INT", &coordinator.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupt.success());
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(7), "{report:#}");
    assert_eq!(report["status"], "cancelled");
    let first = service(&report, "inference");
    assert_eq!(
        first["status"], "succeeded",
        "the one in flight finished: {report:#}"
    );
    assert_eq!(service(&report, "training")["status"], "not_started");

    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    for role in roles {
        assert_eq!(fleet.counter(role), 1, "{role}");
    }
}

#[test]
fn an_agent_that_goes_silent_mid_run_is_reported_timed_out_within_the_deadline() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &["inference", "ingest"]).unwrap();
    let plan = format!(
        "name = \"silent\"\ncommand_timeout = \"4s\"\n{}{}",
        counting_service("inference", 0, false),
        counting_service("ingest", 3, false),
    );
    let plan = fleet.write_plan("silent.toml", &plan);
    let started = std::time::Instant::now();
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    wait_for("ingest in flight", Duration::from_secs(20), || {
        service(&status(&fleet, &run), "ingest")["status"] == "in_flight"
    })
    .unwrap();
    fleet.kill_agent("ingest");
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(6), "{report:#}");
    let ingest = service(&report, "ingest");
    assert_eq!(ingest["status"], "timed_out", "{ingest:#}");
    assert_eq!(ingest["failure"], "timed_out");
    assert_eq!(service(&report, "inference")["status"], "rolled_back");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the coordinator hung: {:?}",
        started.elapsed()
    );
}

#[test]
fn plan_check_dry_run_and_bad_run_ids_change_nothing_and_say_where() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before = snapshots(&fleet, &roles);
    let waves = format!(
        "name = \"two-waves\"\nmax_parallel = 1\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n{}{}",
        counting_service("inference", 0, false),
        counting_service("ingest", 0, false),
    );
    let bad = fleet.write_plan(
        "bad.toml",
        &waves.replace("[\"inference\"]", "[\"infrence\"]"),
    );
    let out = fleet.flotilla(&["plan", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("line 5, key wave[0].services[0]") && err.contains("infrence"),
        "{err}"
    );

    let plan = fleet.write_plan("waves.toml", &waves);
    let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wave 2 \"rest\" (1 at a time): ingest"),
        "{text}"
    );
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "wave 1 \"canary\" (1 at a time):",
        "inference/a: backup, run_command, restart, validate",
        "gates: startup +20%",
        "roll back latest wave first (rest → canary)",
    ] {
        assert!(text.contains(expected), "{expected} not in:\n{text}");
    }
    let runs = json_stdout(&fleet.flotilla(&["runs", "--output", "json"]));
    assert_eq!(runs, serde_json::json!([]), "a dry run recorded a run");

    for args in [
        &["status", "nosuch"][..],
        &["resume", "01234567-89ab-7def-8123-456789abcdef"],
        &["cancel", "nosuch"],
        &["rollback", "nosuch"],
    ] {
        let out = fleet.flotilla(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }

    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap();
    let out = fleet.flotilla(&["rollback", run]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a finalized run has no backups left"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("finalized"));
    assert_ne!(snapshots(&fleet, &roles), before);
    let status = status(&fleet, &run[..8]);
    assert_eq!(
        status["status"], "succeeded",
        "a unique prefix names the run"
    );
}

#[test]
fn a_failure_within_the_budget_does_not_stop_the_run_and_the_rest_is_finalized() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let plan = format!(
        "name = \"budget\"\nfailure_budget = \"34%\"\n[[wave]]\nname = \"w1\"\nsize = 1\n[[wave]]\nname = \"w2\"\nsize = 1\n[[wave]]\nname = \"w3\"\n{}{}{}",
        counting_service("inference", 0, true),
        counting_service("ingest", 0, false),
        counting_service("training", 0, false),
    );
    let (code, report) = fleet.migrate(&plan);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "succeeded_with_failures");
    assert_eq!(
        service(&report, "inference")["failure"],
        "failed_validation"
    );
    for role in ["ingest", "training"] {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        assert_eq!(entry["finalized"], true, "{entry:#}");
        assert_eq!(fleet.counter(role), 1);
    }
    assert_eq!(
        fleet.counter("inference"),
        0,
        "the failed canary was restored"
    );
}

#[test]
fn two_coordinators_never_drive_one_run() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let mut plan = "name = \"contested\"\nmax_parallel = 1\n".to_owned();
    for role in roles {
        plan.push_str(&counting_service(role, 2, false));
    }
    let plan = fleet.write_plan("contested.toml", &plan);
    let original = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = fleet.only_run();
    wait_for("a service in flight", Duration::from_secs(20), || {
        status(&fleet, &run)["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "in_flight"))
    })
    .unwrap();
    let second = fleet.flotilla(&["resume", &run]);
    let first = original.wait_with_output().unwrap();
    // The resume claimed the run; whoever then writes over the other's change stops. At worst
    // both stop and the run stays resumable; never do both drive it.
    let stopped: Vec<&std::process::Output> = [&first, &second]
        .into_iter()
        .filter(|o| o.status.code() != Some(0))
        .collect();
    assert!(!stopped.is_empty(), "both coordinators finished the run");
    for out in &stopped {
        assert_eq!(out.status.code(), Some(4));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("changed by someone else"), "{err}");
    }
    if stopped.len() == 2 {
        let out = fleet.flotilla(&["resume", &run]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for role in roles {
        assert_eq!(fleet.counter(role), 1, "{role}");
    }
    assert_eq!(status(&fleet, &run)["status"], "succeeded");
}
