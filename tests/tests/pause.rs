//! Pause, bake, promote: a wave's `pause` holds the next waves back once it succeeded, either
//! for a bake (`pause = "2s"`, waited out, also across a kill -9 and `resume`) or until
//! `flotilla promote RUN` from any process (`pause = "manual"`, status `paused`). A cancel
//! during a bake stops the run before the next wave, as it does between commands.

use std::time::Duration;

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, NatsServer, Plan, Service, json_stdout, wait_for};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The canary wave takes `inference`; the wave after it, `ingest`.
const ROLES: [&str; 2] = ["inference", "ingest"];

/// A plan of two waves whose first has `pause`; every migration counts itself in `counter.txt`.
fn paused_plan(pause: &str) -> String {
    let mut plan = Plan::new("paused")
        .set("command_timeout", "30s")
        .wave("canary", &["inference"])
        .pause(pause)
        .wave("rest", &["ingest"]);
    for role in ROLES {
        plan = plan.service(Service::new(role).sh("echo x >> counter.txt"));
    }
    plan.to_string()
}

fn status(fleet: &Fleet, run: &str) -> Value {
    json_stdout(&fleet.flotilla(&["status", run, "--output", "json"]))
}

/// A timestamp of wave `w` in a report (`paused_at`, `paused_until`, …), if recorded.
fn wave_time(report: &Value, w: usize, key: &str) -> Option<OffsetDateTime> {
    report["waves"][w][key]
        .as_str()
        .map(|t| OffsetDateTime::parse(t, &Rfc3339).unwrap())
}

/// Waits until the run's canary wave has begun its pause; returns the run's report then.
fn wait_for_pause(fleet: &Fleet, run: &str) -> Value {
    let mut report = Value::Null;
    wait_for(
        "the pause after the canary",
        Duration::from_secs(30),
        || {
            report = status(fleet, run);
            wave_time(&report, 0, "paused_at").is_some()
        },
    )
    .unwrap();
    report
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A manual pause stops the run `paused` (exit 0, the next step named), the second wave untouched;
/// resume and cancel refuse it; `flotilla promote` from another process then migrates the rest.
#[test]
fn a_manual_pause_holds_the_next_wave_until_promote_from_another_process() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = fleet.write_plan("manual.toml", &paused_plan("manual"));
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "paused", "{report:#}");
    assert_eq!(service(&report, "inference")["status"], "succeeded");
    assert_eq!(service(&report, "ingest")["status"], "not_started");
    assert_eq!(report["waves"][0]["pause"], "manual");
    assert!(
        wave_time(&report, 0, "paused_until").is_none(),
        "{report:#}"
    );
    assert_eq!(
        (fleet.counter("inference"), fleet.counter("ingest")),
        (1, 0)
    );
    let (_, body) = fleet.health("ingest").expect("ingest answers");
    assert!(
        body.contains("\"layout\":\"legacy\""),
        "ingest was touched: {body}"
    );
    let run = report["run_id"].as_str().unwrap().to_owned();

    let text = fleet.flotilla(&["status", &run]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("`flotilla promote {run}`")),
        "{text}"
    );
    for refused in ["resume", "cancel"] {
        let out = fleet.flotilla(&[refused, &run]);
        assert_eq!(out.status.code(), Some(2), "{refused}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("flotilla promote"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(
        fleet.counter("ingest"),
        0,
        "a refused command moved the run on"
    );

    let out = fleet.flotilla(&["promote", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(
        (fleet.counter("inference"), fleet.counter("ingest")),
        (1, 1)
    );
    let ended = wave_time(&report, 0, "pause_ended_at").expect("the pause's end");
    let started = wave_time(&report, 1, "started_at").expect("wave 2's start");
    assert!(
        started >= ended,
        "wave 2 started {started} before the promote {ended}"
    );
    let again = fleet.flotilla(&["promote", &run]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
}

/// A bake of 2s is waited out: wave 2 starts at the bake's recorded end, not before.
#[test]
fn a_timed_pause_is_waited_out_before_the_next_wave() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = fleet.write_plan("bake.toml", &paused_plan("2s"));
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    let paused_at = wave_time(&report, 0, "paused_at").unwrap();
    let until = wave_time(&report, 0, "paused_until").unwrap();
    let ended = wave_time(&report, 0, "pause_ended_at").unwrap();
    let started = wave_time(&report, 1, "started_at").unwrap();
    assert_eq!(until - paused_at, time::Duration::seconds(2), "{report:#}");
    assert!(ended >= until, "the bake ended at {ended}, before {until}");
    assert!(
        started >= until,
        "wave 2 started at {started}, before {until}"
    );
    assert!(wave_time(&report, 0, "started_at").unwrap() < paused_at);
    assert_eq!(
        (fleet.counter("inference"), fleet.counter("ingest")),
        (1, 1)
    );
}

/// A coordinator killed -9 during a bake leaves the bake's end recorded; `resume` after that end
/// starts wave 2 at once instead of baking again from zero.
#[test]
fn resume_after_a_kill_9_during_a_bake_continues_the_bake_not_a_new_one() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = fleet.write_plan("bake.toml", &paused_plan("4s"));
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    let run = fleet.only_run();
    let baking = wait_for_pause(&fleet, &run);
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    let until = wave_time(&baking, 0, "paused_until").unwrap();
    let interrupted = status(&fleet, &run);
    assert_eq!(interrupted["status"], "running", "{interrupted:#}");
    assert_eq!(fleet.counter("ingest"), 0, "{interrupted:#}");
    // Resume once the recorded bake is over: a fresh bake would hold wave 2 another 4s.
    wait_for("the recorded bake's end", Duration::from_secs(10), || {
        OffsetDateTime::now_utc() > until
    })
    .unwrap();

    let resumed_at = OffsetDateTime::now_utc();
    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(
        wave_time(&report, 0, "paused_until"),
        Some(until),
        "{report:#}"
    );
    let started = wave_time(&report, 1, "started_at").unwrap();
    assert!(
        started - resumed_at < time::Duration::seconds(3),
        "wave 2 started {} after the resume: the bake began again",
        started - resumed_at
    );
    assert_eq!(
        (fleet.counter("inference"), fleet.counter("ingest")),
        (1, 1)
    );
}

/// A cancel during a bake stops the run before wave 2 (exit 7, resumable); `resume` bakes on to
/// the recorded end, and `promote` from another process ends that bake early.
#[test]
fn cancel_during_a_bake_stops_before_the_next_wave_and_promote_ends_the_resumed_bake() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = fleet.write_plan("long-bake.toml", &paused_plan("10m"));
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    let baking = wait_for_pause(&fleet, &run);
    let until = wave_time(&baking, 0, "paused_until").unwrap();
    let cancel = fleet.flotilla(&["cancel", &run]);
    assert_eq!(cancel.status.code(), Some(0), "{}", stderr(&cancel));
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(7), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert_eq!(service(&report, "ingest")["status"], "not_started");
    assert_eq!(fleet.counter("ingest"), 0);

    let resumed = fleet.spawn_flotilla(&["resume", &run, "--output", "json"]);
    wait_for("the resumed bake", Duration::from_secs(30), || {
        status(&fleet, &run)["status"] == "running"
    })
    .unwrap();
    let promote = fleet.flotilla(&["promote", &run, "--output", "json"]);
    let answer = json_stdout(&promote);
    assert_eq!(
        promote.status.code(),
        Some(0),
        "{answer:#}\n{}",
        stderr(&promote)
    );
    assert_eq!(answer["promote_requested"], true, "{answer:#}");
    let out = resumed.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(
        wave_time(&report, 0, "paused_until"),
        Some(until),
        "{report:#}"
    );
    let ended = wave_time(&report, 0, "pause_ended_at").unwrap();
    assert!(
        ended < until,
        "the promoted bake ended at {ended}, not before {until}"
    );
    assert_eq!(
        (fleet.counter("inference"), fleet.counter("ingest")),
        (1, 1)
    );
}

/// During a bake the migrated services' health is checked every `bake_health_every`: a canary
/// that goes down mid-bake fails, which breaks the budget: the bake stops, wave 2 never starts,
/// and the canary is rolled back.
#[test]
fn a_canary_that_fails_its_health_during_the_bake_fails_the_wave_and_is_rolled_back() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = paused_plan("10m").replace(
        "name = \"paused\"\n",
        "name = \"paused\"\nbake_health_every = \"1s\"\n",
    );
    let plan = fleet.write_plan("bake-health.toml", &plan);
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    let baking = wait_for_pause(&fleet, &run);
    let until = wave_time(&baking, 0, "paused_until").unwrap();
    fleet.stop_service("inference");
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = service(&report, "inference");
    assert_eq!(canary["status"], "rolled_back", "{canary:#}");
    assert_eq!(canary["failure"], "failed_validation", "{canary:#}");
    assert!(
        canary["reason"]
            .as_str()
            .unwrap()
            .contains("during the bake after wave \"canary\""),
        "{report:#}"
    );
    assert_eq!(service(&report, "ingest")["status"], "not_started");
    assert!(wave_time(&report, 0, "pause_ended_at").unwrap() < until);
    assert!(wave_time(&report, 1, "started_at").is_none(), "{report:#}");
    assert_eq!(fleet.counter("ingest"), 0);
    let (status, body) = fleet
        .health("inference")
        .expect("the restored canary answers");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"layout\":\"legacy\""), "{body}");
}

/// Within the failure budget, a canary that fails its health during the bake does not stop the
/// run: the bake goes on to its end, wave 2 is migrated, and the failed canary keeps its backup
/// (it is not finalized) while the others are finalized.
#[test]
fn a_bake_health_failure_within_the_budget_goes_on_and_keeps_the_failed_backup() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = paused_plan("4s").replace(
        "name = \"paused\"\n",
        "name = \"paused\"\nbake_health_every = \"1s\"\nfailure_budget = 1\n",
    );
    let plan = fleet.write_plan("bake-budget.toml", &plan);
    let coordinator =
        fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = fleet.only_run();
    let baking = wait_for_pause(&fleet, &run);
    let until = wave_time(&baking, 0, "paused_until").unwrap();
    fleet.stop_service("inference");
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded_with_failures", "{report:#}");
    let canary = service(&report, "inference");
    assert_eq!(canary["failure"], "failed_validation", "{report:#}");
    assert_eq!(canary["finalized"], false, "{report:#}");
    let rest = service(&report, "ingest");
    assert_eq!(
        (&rest["status"], &rest["finalized"]),
        (&"succeeded".into(), &true.into())
    );
    assert!(
        wave_time(&report, 1, "started_at").unwrap() >= until,
        "{report:#}"
    );
    assert_eq!(fleet.counter("ingest"), 1);
}
