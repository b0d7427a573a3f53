//! Finalizing by hand: `migrate --no-finalize` (or the plan's `finalize = "manual"`) migrates and
//! proves the fleet, then keeps every backup, and the run waits `awaiting_finalize` until
//! `flotilla finalize RUN` drops the backups or `flotilla rollback RUN` restores the fleet, from
//! any process, also after the coordinator was killed.

use std::path::PathBuf;
use std::time::Duration;

use flotilla_tests::invariants::{journal_path, read_journal};
use flotilla_tests::report::service;
use flotilla_tests::{
    Fleet, NatsServer, assert_restored, demo_plan_text, json_stdout, snapshot, wait_for,
};
use serde_json::Value;

/// The backups an agent keeps, by name (the migrate command's ID).
fn backups(fleet: &Fleet, role: &str) -> Vec<String> {
    let dir: PathBuf = fleet.dir().join("state").join(role).join("backups");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn command_id(report: &Value, role: &str) -> String {
    service(report, role)["command_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `report` is a run awaiting finalize with every service of `roles` migrated and
/// its backup kept.
fn assert_awaiting(fleet: &Fleet, report: &Value, roles: &[&str]) {
    assert_eq!(report["status"], "awaiting_finalize", "{report:#}");
    assert_eq!(report["finalized"], false, "{report:#}");
    for role in roles {
        assert_eq!(
            backups(fleet, role),
            [command_id(report, role)],
            "{role}: the migration's backup is not kept"
        );
        let (status, body) = fleet.health(role).expect("service answers");
        assert_eq!(status, 200, "{role}: {body}");
        assert!(body.contains("\"layout\":\"standard\""), "{role}: {body}");
    }
}

/// The kinds of the commands of `run` that the agent of `role` accepted, in order (its journal).
fn accepted(fleet: &Fleet, role: &str, run: &str) -> Vec<String> {
    read_journal(&journal_path(fleet, role))
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "accepted" && r["command"]["run_id"] == run)
        .map(|r| r["command"]["action"]["kind"].as_str().unwrap().to_owned())
        .collect()
}

/// `flotilla finalize RUN` from a new process: the backups go, the run succeeds, and each agent
/// received one finalize and nothing else (the run was proven before it paused).
fn finalize_and_check(fleet: &Fleet, run: &str, roles: &[&str]) {
    let before: Vec<Vec<String>> = roles.iter().map(|r| accepted(fleet, r, run)).collect();
    let out = fleet.flotilla(&["finalize", run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(report["finalized"], true, "{report:#}");
    for (role, before) in roles.iter().zip(before) {
        assert!(backups(fleet, role).is_empty(), "{role}: backup kept");
        assert!(before.contains(&"inspect".to_owned()), "{role}: {before:?}");
        let mut expected = before;
        expected.push("finalize".to_owned());
        assert_eq!(accepted(fleet, role, run), expected, "{role}");
    }
    let status = json_stdout(&fleet.flotilla(&["status", run, "--output", "json"]));
    assert_eq!(status["status"], "succeeded", "{status:#}");
    // Decided once: a second finalize, or a rollback, is refused and changes nothing.
    assert_eq!(fleet.flotilla(&["finalize", run]).status.code(), Some(2));
    assert_eq!(fleet.flotilla(&["rollback", run]).status.code(), Some(2));
}

#[test]
fn no_finalize_keeps_every_backup_until_finalize_from_another_process() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "training", "ingest"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let (code, report) = fleet.migrate_with(demo_plan_text(&roles), &["--no-finalize"]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_awaiting(&fleet, &report, &roles);
    // Proven before the pause: both checks ran over the migrated fleet.
    assert_eq!(report["cross_service"]["ok"], true, "{report:#}");
    assert_eq!(report["correlation"]["ok"], true, "{report:#}");
    let run = report["run_id"].as_str().unwrap().to_owned();

    // `status` and `runs` show the run waiting, and name both decisions.
    let status = fleet.flotilla(&["status", &run]);
    assert_eq!(status.status.code(), Some(0));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("awaiting finalize"), "{text}");
    assert!(
        text.contains(&format!(
            "next: `flotilla finalize {run}` drops the backups"
        )) && text.contains(&format!("`flotilla rollback {run}` restores the fleet")),
        "{text}"
    );
    let runs = fleet.flotilla(&["runs"]);
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("awaiting_finalize"),
        "{}",
        String::from_utf8_lossy(&runs.stdout)
    );
    assert!(
        stderr(&runs).contains(&format!("awaiting finalize: `flotilla finalize {run}`")),
        "{}",
        stderr(&runs)
    );
    // `resume` does not finalize it behind the operator's back.
    let resume = fleet.flotilla(&["resume", &run]);
    assert_eq!(resume.status.code(), Some(2), "{}", stderr(&resume));
    assert!(
        stderr(&resume).contains("awaits a decision"),
        "{}",
        stderr(&resume)
    );
    let cancel = fleet.flotilla(&["cancel", &run]);
    assert_eq!(cancel.status.code(), Some(2), "{}", stderr(&cancel));
    let still = json_stdout(&fleet.flotilla(&["status", &run, "--output", "json"]));
    assert_awaiting(&fleet, &still, &roles);

    finalize_and_check(&fleet, &run, &roles);
}

#[test]
fn a_run_awaiting_finalize_rolled_back_later_is_byte_identical_to_the_legacy_tree() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "execution"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before: Vec<_> = roles.iter().map(|r| snapshot(&fleet.root(r))).collect();
    // The plan's own key this time, instead of the flag.
    let text = format!("finalize = \"manual\"\n{}", demo_plan_text(&roles));
    let (code, report) = fleet.migrate(&text);
    assert_eq!(code, Some(0), "{report:#}");
    assert_awaiting(&fleet, &report, &roles);
    let run = report["run_id"].as_str().unwrap();

    let out = fleet.flotilla(&["rollback", run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(report["status"], "rolled_back", "{report:#}");
    assert_restored(&fleet, &roles, &before);
    // Decided: it no longer waits for a finalize.
    assert_eq!(fleet.flotilla(&["finalize", run]).status.code(), Some(2));
}

#[test]
fn no_finalize_survives_a_kill_9_of_the_coordinator_and_finalize_works_after_it() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "training", "ingest"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    // A slow canary, so that the coordinator can be killed mid-run.
    let slow =
        "[[step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n";
    let text = demo_plan_text(&roles).replacen("[[step]]\n", &format!("{slow}[[step]]\n"), 1);
    let plan = fleet.write_plan("slow.toml", &text);
    let mut coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--no-finalize"]);
    let mut run = String::new();
    wait_for("a service in flight", Duration::from_secs(30), || {
        let out = fleet.flotilla(&["status", "--output", "json"]);
        let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) else {
            return false;
        };
        run = report["run_id"].as_str().unwrap_or_default().to_owned();
        report["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["status"] == "in_flight"))
    })
    .unwrap();
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();

    // A new coordinator finishes the run from its record, and the flag given to the dead one
    // holds: it stops awaiting finalize, backups kept.
    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_awaiting(&fleet, &report, &roles);

    finalize_and_check(&fleet, &run, &roles);
}

/// The run store's header of `run`, as stored.
fn stored_header(nats_url: &str, run: &str) -> Value {
    let (url, run) = (nats_url.to_owned(), run.to_owned());
    flotilla_tests::faults::block_on(async move {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
        let kv = js
            .get_key_value(flotilla_schemas::subjects::Subjects::default().runs_bucket())
            .await?;
        let bytes = kv.get(&run).await?.expect("the run's header");
        Ok(serde_json::from_slice(&bytes)?)
    })
    .unwrap()
}

/// Rewrites the header of `run` as a coordinator from before `target_count` wrote it: every
/// target listed without its commands, each wave's target indices, the chunks as they are.
fn rewrite_header_listing_targets(nats_url: &str, run: &str) {
    let (url, run) = (nats_url.to_owned(), run.to_owned());
    flotilla_tests::faults::block_on(async move {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
        let kv = js
            .get_key_value(flotilla_schemas::subjects::Subjects::default().runs_bucket())
            .await?;
        let mut header: Value = serde_json::from_slice(&kv.get(&run).await?.unwrap())?;
        let mut targets = flotilla_tests::run_store::target_records(&kv, &run).await?;
        anyhow::ensure!(header["target_count"] == targets.len(), "{header}");
        for target in &mut targets {
            for kind in ["migrate", "rollback", "finalize"] {
                target.as_object_mut().unwrap().remove(kind);
            }
        }
        for (w, wave) in header["waves"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            let members: Vec<usize> = (0..targets.len())
                .filter(|&t| targets[t]["wave"] == w)
                .collect();
            wave["targets"] = serde_json::json!(members);
        }
        let object = header.as_object_mut().unwrap();
        object.remove("target_count");
        object.insert("targets".into(), Value::Array(targets));
        kv.put(&run, serde_json::to_vec(&header)?.into()).await?;
        Ok(())
    })
    .unwrap();
}

/// A run recorded before headers counted their targets (its header lists them, beside the
/// chunks) is listed, finalized by this coordinator, and written on in its own format, so a
/// coordinator of its own version can still read it.
#[test]
fn a_run_whose_header_lists_its_targets_is_finalized_and_kept_in_its_format() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let (code, report) = fleet.migrate_with(demo_plan_text(&roles), &["--no-finalize"]);
    assert_eq!(code, Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap().to_owned();
    let header = stored_header(nats.url(), &run);
    assert_eq!(header["target_count"], 2, "{header:#}");
    assert!(header.get("targets").is_none(), "{header:#}");

    rewrite_header_listing_targets(nats.url(), &run);
    let runs = json_stdout(&fleet.flotilla(&["runs", "--output", "json"]));
    let row = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run.as_str())
        .cloned();
    assert_eq!(
        row.map(|r| r["services"].clone()),
        Some(2.into()),
        "{runs:#}"
    );
    let status = json_stdout(&fleet.flotilla(&["status", &run, "--output", "json"]));
    assert_awaiting(&fleet, &status, &roles);

    finalize_and_check(&fleet, &run, &roles);
    let header = stored_header(nats.url(), &run);
    assert!(header.get("target_count").is_none(), "{header:#}");
    assert_eq!(
        header["targets"].as_array().map(Vec::len),
        Some(2),
        "{header:#}"
    );
    assert_eq!(header["status"], "succeeded", "{header:#}");
}
