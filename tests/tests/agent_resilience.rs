//! The agent's own resilience, end to end with real processes:
//! - restores swap the backup's tree in (no copy), survive a kill -9 at every point of the swap,
//!   and a second rollback of the same migration is answered, not failed;
//! - the journal stays bounded (compaction) and a replay of a forgotten, expired command is
//!   refused, not applied;
//! - an agent that exits (kill -9, an error, SIGTERM) leaves its service running, and the next
//!   agent adopts it (same PID) instead of restarting it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_tests::faults::{command_json, new_id, publish_command, results_of};
use flotilla_tests::invariants::{read_journal, wait_for_run};
use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, json_stdout, snapshot, wait_for};
use serde_json::{Value, json};
use time::OffsetDateTime;

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const ANSWER: Duration = Duration::from_secs(30);

/// Asserts that `answer` has `outcome` and a reason that mentions `because`.
fn answered(answer: &Value, outcome: &str, because: &str) {
    assert_eq!(answer["outcome"], outcome, "{answer:#}");
    assert!(
        answer["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(because),
        "{answer:#}"
    );
}

fn state_dir(fleet: &Fleet, role: &str) -> PathBuf {
    fleet.dir().join("state").join(role)
}

/// Whatever restores swapped out and left in the backups directory (removed after the answer,
/// in the background).
fn swapped_out_trees(fleet: &Fleet, role: &str) -> Vec<PathBuf> {
    let backups = state_dir(fleet, role).join("backups");
    std::fs::read_dir(backups)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("discard"))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits for the agent to reach crash point `point` (its marker file).
fn wait_crash_point(fleet: &Fleet, role: &str, point: &str) {
    let marker = state_dir(fleet, role).join(format!("crashpoint-{point}"));
    wait_for(
        &format!("the agent to reach {point}"),
        Duration::from_secs(30),
        || marker.exists(),
    )
    .unwrap();
    let _ = std::fs::remove_file(marker);
}

/// A migration that fails validation (its new configuration makes the service unhealthy), so
/// the agent restores the backup by itself; kill -9 at `point` of that restore, restart. The
/// restarted agent finishes the restore (never swaps twice), the root equals the backup, and the
/// coordinator — still waiting — records the migration rolled back; I1–I6 hold.
fn crash_during_the_automatic_restore(point: &str) {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &["inference"],
        &[(flotilla_agent::crashpoint::ENV, point)],
    )
    .unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], COMMAND_TIMEOUT);
    let tag = format!("restore-{point}");
    let plan = format!(
        "name = \"{tag}\"\ncommand_timeout = \"{}s\"\n{}",
        COMMAND_TIMEOUT.as_secs(),
        scenario.failing_service(&fleet, "inference", &tag)
    );
    let plan = fleet.write_plan("plan.toml", &plan);
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    wait_crash_point(&fleet, "inference", point);
    let run = wait_for_run(&fleet, Duration::from_secs(10)).unwrap();
    fleet.kill_agent("inference");
    fleet.clear_agent_env("inference");
    fleet.start_agent("inference").unwrap();
    let healed = Instant::now();

    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    let service = &report["services"][0];
    assert_eq!(
        service["status"], "rolled_back",
        "crash at {point}: {report:#}"
    );
    assert!(
        service["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{report:#}"
    );
    assert_eq!(scenario.count("inference", &tag), 1, "crash at {point}");
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario
        .check(&evidence, Some(took))
        .assert_ok(&format!("kill -9 at {point}"));
    assert_eq!(evidence.trees["inference"], scenario.before["inference"]);
    wait_for("the swapped-out tree to be removed", ANSWER, || {
        swapped_out_trees(&fleet, "inference").is_empty()
    })
    .unwrap();
}

#[test]
fn kill_9_after_the_restore_checked_the_backup_restores_it() {
    crash_during_the_automatic_restore("restore_verified");
}

#[test]
fn kill_9_right_after_the_restore_swap_finishes_it_without_swapping_back() {
    crash_during_the_automatic_restore("restore_swapped");
}

#[test]
fn kill_9_after_the_restore_before_the_restart_keeps_the_restored_tree() {
    crash_during_the_automatic_restore("restored");
}

/// Sends a signed command for `role` and returns the agent's first answer to it.
fn send(fleet: &Fleet, run: &str, role: &str, action: Value) -> (String, Value) {
    let id = new_id();
    let now = OffsetDateTime::now_utc();
    let command = command_json(
        role,
        run,
        &id,
        now,
        now + time::Duration::minutes(5),
        action,
    );
    publish(fleet, role, &command);
    let answer = answer_to(fleet, run, &id);
    (id, answer)
}

fn publish(fleet: &Fleet, role: &str, command: &Value) {
    publish_command(
        fleet.nats_url(),
        role,
        serde_json::to_vec(command).unwrap(),
        Some(&fleet.signing_key()),
        &new_id(),
    )
    .unwrap();
}

fn answer_to(fleet: &Fleet, run: &str, id: &str) -> Value {
    results_of(fleet.nats_url(), run, id, 1, ANSWER)
        .unwrap()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no answer to {id}"))
}

fn migrate_writing(path: &str, content: &str) -> Value {
    json!({
        "kind": "migrate",
        "steps": [{"action": "write_file", "path": path, "content": content}],
    })
}

/// The journal's `finished` outcome of each command, by command ID.
fn journalled_outcomes(fleet: &Fleet, role: &str) -> std::collections::BTreeMap<String, String> {
    read_journal(&state_dir(fleet, role).join("journal.jsonl"))
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "finished")
        .map(|r| {
            (
                r["result"]["command_id"].as_str().unwrap().to_owned(),
                r["result"]["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A coordinator-requested rollback cut by kill -9 right after its swap is finished by the
/// restarted agent; the backup is consumed by it, so a second rollback of the same migration is
/// answered "already rolled back" (and changes nothing), and once a later migration changed the
/// tree, a rollback of the first one is refused rather than undoing the later one.
#[test]
fn a_rollback_cut_after_its_swap_completes_and_a_second_rollback_is_answered() {
    let nats = NatsServer::start().unwrap();
    let role = "training";
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &[role],
        &[(flotilla_agent::crashpoint::ENV, "restore_swapped")],
    )
    .unwrap();
    let root = fleet.root(role);
    let before = snapshot(&root);
    let run = new_id();

    let (migration, migrated) = send(
        &fleet,
        &run,
        role,
        migrate_writing("migrated.txt", "the new layout\n"),
    );
    assert_eq!(migrated["outcome"], "succeeded", "{migrated:#}");
    let after = snapshot(&root);
    assert_ne!(after, before);

    // The rollback stops dead right after RENAME_EXCHANGE; kill -9 there.
    let rollback = new_id();
    let now = OffsetDateTime::now_utc();
    publish(
        &fleet,
        role,
        &command_json(
            role,
            &run,
            &rollback,
            now,
            now + time::Duration::minutes(5),
            json!({"kind": "rollback", "migration": migration}),
        ),
    );
    wait_crash_point(&fleet, role, "restore_swapped");
    fleet.kill_agent(role);
    // The swap had happened: the root already is the backup's tree.
    assert_eq!(snapshot(&root), before);
    fleet.clear_agent_env(role);
    fleet.start_agent(role).unwrap();
    let answer = answer_to(&fleet, &run, &rollback);
    answered(&answer, "rolled_back", "interrupted during a rollback");
    assert_eq!(snapshot(&root), before);
    fleet.wait_ready(ANSWER).unwrap();
    assert_eq!(fleet.health(role).map(|(s, _)| s), Some(200));

    // A second rollback of the same migration: nothing left to restore, and it says so.
    let (_, again) = send(
        &fleet,
        &run,
        role,
        json!({"kind": "rollback", "migration": migration}),
    );
    answered(&again, "rolled_back", "already rolled back");
    assert_eq!(snapshot(&root), before);

    // A later migration changes the tree: a rollback of the first one must not undo it.
    let (_, later) = send(
        &fleet,
        &run,
        role,
        migrate_writing("later.txt", "a later change\n"),
    );
    assert_eq!(later["outcome"], "succeeded", "{later:#}");
    let later_tree = snapshot(&root);
    let (late_rollback, late) = send(
        &fleet,
        &run,
        role,
        json!({"kind": "rollback", "migration": migration}),
    );
    answered(&late, "refused", "already rolled back");
    assert_eq!(snapshot(&root), later_tree);

    // Finalizing the first migration drops what is left of its backup.
    let (_, finalized) = send(
        &fleet,
        &run,
        role,
        json!({"kind": "finalize", "migration": migration}),
    );
    assert_eq!(finalized["outcome"], "finalized", "{finalized:#}");
    assert!(
        !state_dir(&fleet, role)
            .join("backups")
            .join(&migration)
            .exists()
    );
    let outcomes = journalled_outcomes(&fleet, role);
    assert_eq!(outcomes[&migration], "succeeded");
    assert_eq!(outcomes[&rollback], "rolled_back");
    assert_eq!(outcomes[&late_rollback], "refused");
    wait_for("the swapped-out tree to be removed", ANSWER, || {
        swapped_out_trees(&fleet, role).is_empty()
    })
    .unwrap();
    // Nothing beside the root either: the restore staged nothing there.
    let beside: Vec<_> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != role)
        .collect();
    assert!(beside.is_empty(), "{beside:?}");
}

/// The journal forgets a command once it can no longer be accepted (compaction, here at the
/// agent's start); a replay of it after that is refused as expired — answered, not applied.
#[test]
fn a_replay_of_a_command_the_journal_forgot_is_refused_as_expired_not_applied() {
    let nats = NatsServer::start().unwrap();
    let role = "ingest";
    // No clock skew allowed, so that commands expire within the test.
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &[role],
        &[("FLOTILLA_SECURITY__CLOCK_SKEW", "0s")],
    )
    .unwrap();
    let counter = fleet.dir().join("counter.txt");
    let run = new_id();
    let now = OffsetDateTime::now_utc();
    let expires = now + time::Duration::seconds(3);
    let migration = new_id();
    let migrate = command_json(
        role,
        &run,
        &migration,
        now,
        expires,
        flotilla_tests::faults::counting_action(&counter, "applied"),
    );
    publish(&fleet, role, &migrate);
    assert_eq!(answer_to(&fleet, &run, &migration)["outcome"], "succeeded");
    let finalize = new_id();
    publish(
        &fleet,
        role,
        &command_json(
            role,
            &run,
            &finalize,
            now,
            expires,
            json!({"kind": "finalize", "migration": migration}),
        ),
    );
    assert_eq!(answer_to(&fleet, &run, &finalize)["outcome"], "finalized");
    let journal = state_dir(&fleet, role).join("journal.jsonl");
    let mentions = |id: &str| {
        read_journal(&journal)
            .unwrap()
            .iter()
            .any(|r| r.to_string().contains(id))
    };
    assert!(mentions(&migration) && mentions(&finalize));

    // Past their expiry, a restart compacts the journal: both are forgotten.
    wait_for("the commands to expire", Duration::from_secs(10), || {
        OffsetDateTime::now_utc() > expires + time::Duration::milliseconds(100)
    })
    .unwrap();
    fleet.stop_agent(role);
    fleet.start_agent(role).unwrap();
    fleet.wait_ready(ANSWER).unwrap();
    assert!(!mentions(&migration) && !mentions(&finalize));

    // The same signed migrate command again: refused as expired, its step not run again.
    publish(&fleet, role, &migrate);
    let copies = results_of(fleet.nats_url(), &run, &migration, 2, ANSWER).unwrap();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    let replay = &copies[1];
    assert_eq!(replay["outcome"], "refused", "{replay:#}");
    assert_eq!(replay["replayed"], false, "{replay:#}");
    assert!(
        replay["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{replay:#}"
    );
    let ran = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(ran.lines().filter(|l| *l == "applied").count(), 1, "{ran}");
    assert!(
        read_journal(&journal)
            .unwrap()
            .iter()
            .all(|r| r["record"] != "applying" || r["command_id"] != migration.as_str()),
        "the replay got to apply"
    );
}

/// The service PID an agent reports in its presence answer.
fn reported_service_pid(fleet: &Fleet, role: &str) -> Option<u64> {
    fleet
        .agents()
        .ok()?
        .iter()
        .find(|a| a["service"] == role)
        .and_then(|a| a["service_pid"].as_u64())
}

fn serving(fleet: &Fleet, role: &str) -> bool {
    fleet.health(role).is_some_and(|(status, _)| status == 200)
}

/// Starts `role`'s agent again and waits until it answers presence.
fn restart_agent(fleet: &mut Fleet, role: &str) {
    fleet.start_agent(role).unwrap();
    fleet.wait_ready(ANSWER).unwrap();
}

fn log_mentions(fleet: &Fleet, role: &str, text: &str) -> usize {
    std::fs::read_to_string(fleet.agent_log(role))
        .unwrap_or_default()
        .matches(text)
        .count()
}

/// G3: kill -9 of the agent, then SIGTERM of the next one: each time the service keeps serving
/// (same process), the next agent adopts it instead of restarting it, and migrations go on.
#[test]
fn an_agent_that_dies_or_stops_leaves_its_service_serving_and_the_next_adopts_it() {
    let nats = NatsServer::start().unwrap();
    let role = "inference";
    let mut fleet = Fleet::start(nats.url(), &[role]).unwrap();
    let first = fleet
        .service_pid(role)
        .expect("the agent started its service");
    assert_eq!(reported_service_pid(&fleet, role), Some(u64::from(first)));

    fleet.kill_agent(role);
    assert!(
        serving(&fleet, role),
        "the service went down with the agent"
    );
    assert_eq!(fleet.service_pid(role), Some(first));
    restart_agent(&mut fleet, role);
    assert_eq!(
        reported_service_pid(&fleet, role),
        Some(u64::from(first)),
        "the new agent did not adopt the running service"
    );
    assert_eq!(log_mentions(&fleet, role, "adopted the service"), 1);
    assert!(serving(&fleet, role));

    // And it is a working agent: a migration through it succeeds, restarting the service.
    let scenario = Scenario::new(&fleet, &[role], COMMAND_TIMEOUT);
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "adopted", "", ""));
    let started = Instant::now();
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, run).unwrap();
    scenario
        .check(&evidence, Some(started.elapsed()))
        .assert_ok("migration after an adoption");
    assert_eq!(evidence.trees[role], scenario.after[role]);
    let migrated = fleet.service_pid(role).unwrap();
    assert_ne!(migrated, first, "the migration restarts the service");
    let measurements = &report["services"][0]["measurements"];
    assert!(
        measurements["startup_ms_before"].is_u64(),
        "the adopted service's startup baseline was lost: {measurements:#}"
    );

    // A clean stop of the agent (SIGTERM) leaves the service running too.
    fleet.stop_agent(role);
    assert!(
        serving(&fleet, role),
        "SIGTERM to the agent stopped the service"
    );
    assert_eq!(fleet.service_pid(role), Some(migrated));
    restart_agent(&mut fleet, role);
    assert_eq!(
        reported_service_pid(&fleet, role),
        Some(u64::from(migrated))
    );
    assert_eq!(log_mentions(&fleet, role, "adopted the service"), 2);
}

/// Makes a file immutable (even root cannot write it) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: PathBuf) -> Self {
        let done = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .unwrap();
        assert!(done.success(), "chattr +i needs root and ext4");
        Self(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// G3: an agent that stops on an error (its journal cannot be written) leaves the service
/// serving; the restarted agent adopts it, then runs the command the first could not journal.
#[test]
fn an_agent_that_fails_leaves_its_service_serving() {
    let nats = NatsServer::start().unwrap();
    let role = "ingest";
    let mut fleet = Fleet::start(nats.url(), &[role]).unwrap();
    let pid = fleet.service_pid(role).unwrap();
    let journal = Immutable::set(state_dir(&fleet, role).join("journal.jsonl"));
    let counter = fleet.dir().join("counter.txt");
    let now = OffsetDateTime::now_utc();
    let (run, id) = (new_id(), new_id());
    publish(
        &fleet,
        role,
        &command_json(
            role,
            &run,
            &id,
            now,
            now + time::Duration::minutes(5),
            flotilla_tests::faults::counting_action(&counter, "journalled"),
        ),
    );
    let mut exit = None;
    wait_for("the agent to stop on the journal error", ANSWER, || {
        exit = fleet.agent_exit(role);
        exit.is_some()
    })
    .unwrap();
    assert!(!exit.unwrap().success(), "exited 0 on a journal error");
    assert_eq!(log_mentions(&fleet, role, "journal write failed"), 1);
    assert!(!counter.exists(), "a step ran without a journal");
    assert!(
        serving(&fleet, role),
        "the agent's error took the service down"
    );
    assert_eq!(fleet.service_pid(role), Some(pid));

    drop(journal);
    restart_agent(&mut fleet, role);
    assert_eq!(log_mentions(&fleet, role, "adopted the service"), 1);
    // The command the failed agent could not journal comes again at once (the new agent takes
    // its consumer over, G6) and runs once, journalled.
    let answer = answer_to(&fleet, &run, &id);
    assert_eq!(answer["outcome"], "succeeded", "{answer:#}");
    let ran = std::fs::read_to_string(&counter).unwrap_or_default();
    assert_eq!(ran.lines().collect::<Vec<_>>(), ["journalled"]);
    assert!(serving(&fleet, role));
}

/// G3: the next agent adopts only a live, healthy service that is the one started: one left
/// frozen (not answering) or dead is started again.
#[test]
fn a_service_left_frozen_or_dead_is_started_again_not_adopted() {
    let nats = NatsServer::start().unwrap();
    let role = "execution";
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &[role],
        &[("FLOTILLA_SERVICE__STOP_TIMEOUT", "1s")],
    )
    .unwrap();
    let frozen = fleet.service_pid(role).unwrap();
    fleet.kill_agent(role);
    let signal = |signal: &str, pid: u32| {
        std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
    };
    assert!(signal("STOP", frozen).success());
    restart_agent(&mut fleet, role);
    let restarted = fleet.service_pid(role).unwrap();
    assert_ne!(restarted, frozen, "a frozen service was adopted");
    assert!(
        !std::path::Path::new(&format!("/proc/{frozen}")).exists()
            || std::fs::read_to_string(format!("/proc/{frozen}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "the frozen service was left running"
    );
    assert_eq!(
        reported_service_pid(&fleet, role),
        Some(u64::from(restarted))
    );
    assert!(serving(&fleet, role));

    fleet.kill_agent(role);
    assert!(signal("KILL", restarted).success());
    wait_for("the service to die", ANSWER, || {
        fleet.service_pid(role) != Some(restarted)
    })
    .unwrap();
    restart_agent(&mut fleet, role);
    let again = fleet.service_pid(role).unwrap();
    assert_ne!(again, restarted);
    assert!(serving(&fleet, role));
    assert_eq!(log_mentions(&fleet, role, "adopted the service"), 0);
}

/// kill -9 in the middle of a finalize: the restarted agent carries it out (the backup is
/// dropped) and answers `finalized`; the same command sent again is answered from the journal.
#[test]
fn a_finalize_cut_by_kill_9_is_carried_out_by_the_next_start() {
    let nats = NatsServer::start().unwrap();
    let role = "preprocess";
    let mut fleet = Fleet::start_with_env(
        nats.url(),
        &[role],
        &[(flotilla_agent::crashpoint::ENV, "finalizing")],
    )
    .unwrap();
    let run = new_id();
    let (migration, migrated) = send(
        &fleet,
        &run,
        role,
        migrate_writing("migrated.txt", "the new layout\n"),
    );
    assert_eq!(migrated["outcome"], "succeeded", "{migrated:#}");
    let after = snapshot(&fleet.root(role));
    let backup = state_dir(&fleet, role).join("backups").join(&migration);
    assert!(backup.exists());

    let finalize = new_id();
    let now = OffsetDateTime::now_utc();
    let command = command_json(
        role,
        &run,
        &finalize,
        now,
        now + time::Duration::minutes(5),
        json!({"kind": "finalize", "migration": migration}),
    );
    publish(&fleet, role, &command);
    wait_crash_point(&fleet, role, "finalizing");
    fleet.kill_agent(role);
    fleet.clear_agent_env(role);
    fleet.start_agent(role).unwrap();
    let answer = answer_to(&fleet, &run, &finalize);
    answered(&answer, "finalized", "interrupted while finalizing");
    assert!(!backup.exists(), "the backup was not dropped");
    assert_eq!(snapshot(&fleet.root(role)), after);
    // Sent again (a resumed coordinator re-sends the same command ID): answered from the journal.
    publish(&fleet, role, &command);
    let copies = results_of(fleet.nats_url(), &run, &finalize, 2, ANSWER).unwrap();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    assert_eq!(copies[1]["replayed"], true);
    assert_eq!(copies[1]["outcome"], "finalized");
    assert_eq!(journalled_outcomes(&fleet, role)[&finalize], "finalized");
}
