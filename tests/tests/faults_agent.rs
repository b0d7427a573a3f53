//! F1: kill -9 of the agent at every crash point of a migration (after it journals the command,
//! after the backup, in the middle of apply, after the restart, after validation), then a
//! restart. Each run ends with the invariant check I1–I6: the tree is byte-identical to before
//! and healthy, the step ran at most once, and the coordinator — still waiting — records the
//! same outcome as the agent's journal. (Moved here from `agent.rs` and generalised.)

use std::time::{Duration, Instant};

use flotilla_tests::invariants::wait_for_run;
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, json_stdout, wait_for};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// kill -9 at `point`, restart; the run must end `expected` for the service, with I1–I6 held
/// and the counting step run `ran` times.
fn crash_at(point: &str, expected: &str, ran: usize) {
    crash_at_then(point, expected, ran, |_| {});
}

/// [`crash_at`], with `between` done to the dead agent's files before it starts again.
fn crash_at_then(point: &str, expected: &str, ran: usize, between: impl Fn(&Fleet)) {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &["inference"],
        &[(flotilla_agent::crashpoint::ENV, point)],
    )
    .unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], COMMAND_TIMEOUT);
    let tag = format!("crash-{point}");
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, &tag, "", ""));
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let marker = fleet
        .dir()
        .join("state/inference")
        .join(format!("crashpoint-{point}"));
    wait_for(
        &format!("the agent to reach {point}"),
        Duration::from_secs(30),
        || marker.exists(),
    )
    .unwrap();
    let run = wait_for_run(&fleet, Duration::from_secs(10)).unwrap();
    fleet.kill_agent("inference");
    between(&fleet);
    fleet.clear_agent_env("inference");
    fleet.start_agent("inference").unwrap();
    let healed = Instant::now();

    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(
        report["services"][0]["status"], expected,
        "crash at {point}: {report:#}"
    );
    assert!(
        report["services"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{report:#}"
    );
    assert_eq!(scenario.count("inference", &tag), ran, "crash at {point}");
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok(&format!("kill -9 at {point}"));
    assert_eq!(evidence.trees["inference"], scenario.before["inference"]);
}

#[test]
fn kill_9_after_accepting_changes_nothing() {
    crash_at("accepted", "refused", 0);
}

#[test]
fn kill_9_after_the_backup_restores() {
    crash_at("backed_up", "rolled_back", 0);
}

/// What a power loss before the one barrier that makes the backup and the `applying` record
/// durable together may leave: the record, and a backup without its manifest (the rename or
/// the manifest's data lost). Apply waits for that barrier, so the root is untouched: the
/// restarted agent answers `rolled_back`, "nothing had changed", never a failed restore.
#[test]
fn applying_without_a_whole_backup_is_answered_as_nothing_changed() {
    crash_at_then("backed_up", "rolled_back", 0, |fleet| {
        let backups = fleet.dir().join("state/inference/backups");
        let mut removed = 0;
        for entry in std::fs::read_dir(&backups).unwrap().flatten() {
            let manifest = entry.path().join("manifest.json");
            if manifest.exists() {
                std::fs::remove_file(manifest).unwrap();
                removed += 1;
            }
        }
        assert_eq!(removed, 1, "one backup in {}", backups.display());
    });
}

#[test]
fn kill_9_in_the_middle_of_apply_restores() {
    crash_at("applying", "rolled_back", 1);
}

#[test]
fn kill_9_after_the_restart_restores_and_stops_the_orphaned_service() {
    crash_at("restarted", "rolled_back", 1);
}

#[test]
fn kill_9_after_validation_restores() {
    crash_at("validated", "rolled_back", 1);
}

/// The baseline without faults: the checker accepts a clean run, with the tree exactly the
/// predicted post-migration tree (so I4's "post" state is exact, not assumed).
#[test]
fn a_clean_run_holds_every_invariant_and_ends_on_the_predicted_tree() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "ingest"]).unwrap();
    let scenario = Scenario::new(&fleet, &["inference", "ingest"], COMMAND_TIMEOUT);
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "clean", "", ""));
    let started = Instant::now();
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, run).unwrap();
    scenario
        .check(&evidence, Some(started.elapsed()))
        .assert_ok("clean run");
    for role in ["inference", "ingest"] {
        assert_eq!(evidence.trees[role], scenario.after[role], "{role}");
        assert_eq!(scenario.count(role, "clean"), 1);
    }
}
