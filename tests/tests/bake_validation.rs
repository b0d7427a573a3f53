//! Validation over a pause between waves, on services we did not shape for Flotilla (Python's
//! standard-library HTTP server, `tests/fixtures/memory_service.py`): during a bake the agents
//! sample the memory gate and the functional checks again, not only health, and when a manual
//! pause is promoted the finished waves are validated before the next wave may start. A
//! regression found then fails the wave: over the budget, the fleet rolls back, every file of the
//! regressed service restored.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, NatsServer, free_port, http_get, json_stdout, repo_root, wait_for};
use serde_json::Value;

/// The canary; every other service is in the wave after it.
const CANARY: &str = "quotes";
/// Created in a service's root, it makes the service allocate [`LEAK_MB`] more.
const LEAK_TRIGGER: &str = "leak.trigger";
const LEAK_MB: u32 = 48;
/// Created in a service's root, it makes the service's /ready answer 503.
const FAIL_TRIGGER: &str = "fail.trigger";

/// A fleet of the Python service under `names` (the first is the canary); their ports.
fn start(nats: &NatsServer, names: &[&str]) -> (Fleet, BTreeMap<String, u16>) {
    let script = repo_root().join("tests/fixtures/memory_service.py");
    let command = ["python3", script.to_str().unwrap()];
    let conf = |port: u16| {
        format!(
            "version=1\nport={port}\nthreads=0\nballast_mb=0\n\
             grow_file={LEAK_TRIGGER}\ngrow_mb={LEAK_MB}\nfail_file={FAIL_TRIGGER}\n"
        )
    };
    let mut ports = BTreeMap::new();
    let first = free_port();
    ports.insert(names[0].to_owned(), first);
    let mut fleet = Fleet::start_foreign(
        nats.url(),
        names[0],
        &command,
        first,
        &[("service.conf", &conf(first))],
    )
    .unwrap();
    for name in &names[1..] {
        let port = free_port();
        ports.insert((*name).to_owned(), port);
        fleet
            .add_foreign(name, &command, port, &[("service.conf", &conf(port))])
            .unwrap();
    }
    (fleet, ports)
}

/// Two waves, `canary` (the canary alone) with `pause` after it and `rest`: each service's
/// configuration goes from version 1 to 2, and its /ready is a functional check.
fn plan(fleet: &Fleet, ports: &BTreeMap<String, u16>, pause: &str) -> String {
    let mut text = format!(
        "name = \"bake-validation\"\ncommand_timeout = \"30s\"\nbake_health_every = \"1s\"\n\
         [gates]\nstartup_max_increase_pct = 1000.0\n\
         [[wave]]\nname = \"canary\"\nservices = [\"{CANARY}\"]\npause = \"{pause}\"\n\
         [[wave]]\nname = \"rest\"\n"
    );
    for (name, port) in ports {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\n\
             [[service.step]]\naction = \"replace_text\"\npath = \"service.conf\"\n\
             find = \"version=1\"\nreplace = \"version=2\"\n\
             [[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ready\"\n"
        ));
    }
    let path = fleet.write_plan("bake-validation.toml", &text);
    path.to_str().unwrap().to_owned()
}

/// Each service's files, by service name.
fn every_tree(
    fleet: &Fleet,
    ports: &BTreeMap<String, u16>,
) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    ports
        .keys()
        .map(|n| (n.clone(), files(&fleet.root(n))))
        .collect()
}

/// Every file under `root` with its content.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let name = path.strip_prefix(root).unwrap().display().to_string();
                found.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// What the service says about itself on /health.
fn health(port: u16) -> Value {
    let (status, body) = http_get(port, "/health").expect("the service answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn status(fleet: &Fleet, run: &str) -> Value {
    json_stdout(&fleet.flotilla(&["status", run, "--output", "json"]))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The run failed and rolled the canary back (the wave's failure named with `why`); the wave
/// after it never started; every file of the fleet is as it was before the run.
fn assert_rolled_back(
    fleet: &Fleet,
    report: &Value,
    ports: &BTreeMap<String, u16>,
    before: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    why: &[&str],
) {
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = service(report, CANARY);
    assert_eq!(canary["status"], "rolled_back", "{canary:#}");
    assert_eq!(canary["failure"], "failed_validation", "{canary:#}");
    let reason = canary["reason"].as_str().unwrap_or_default();
    for part in why {
        assert!(reason.contains(part), "{part:?} not in {reason:?}");
    }
    for name in ports.keys().filter(|n| *n != CANARY) {
        assert_eq!(service(report, name)["status"], "not_started", "{report:#}");
    }
    assert!(
        report["waves"][1]["started_at"].is_null(),
        "wave 2 started: {report:#}"
    );
    for (name, port) in ports {
        assert_eq!(files(&fleet.root(name)), before[name], "{name}'s files");
        let now = health(*port);
        assert_eq!(now["leaked_mb"], 0, "{name}: {now}");
        assert_eq!(http_get(*port, "/ready").unwrap().0, 200, "{name}");
    }
}

/// The canary passes its validation (memory included), then leaks 48 MiB during the bake: a bake
/// round samples its memory against the migration's baseline, the gate trips, the wave fails,
/// and the budget of 0 rolls the fleet back.
#[test]
fn a_canary_whose_memory_grows_past_the_gate_during_the_bake_fails_the_wave_and_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let (fleet, ports) = start(&nats, &[CANARY, "ledger"]);
    let before = every_tree(&fleet, &ports);
    let plan = plan(&fleet, &ports, "10m");
    let coordinator = fleet.spawn_flotilla(&["migrate", &plan, "--output", "json"]);
    let run = fleet.only_run();
    wait_for("the bake after the canary", Duration::from_secs(60), || {
        !status(&fleet, &run)["waves"][0]["paused_at"].is_null()
    })
    .unwrap();
    let migrated = status(&fleet, &run);
    let gate = service(&migrated, CANARY)["gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["gate"] == "memory_bytes").cloned())
        .unwrap_or_else(|| panic!("no memory gate at validate: {migrated:#}"));
    assert_eq!(gate["passed"], true, "{migrated:#}");

    let canary_port = ports[CANARY];
    std::fs::write(fleet.root(CANARY).join(LEAK_TRIGGER), "").unwrap();
    wait_for("the canary's leak", Duration::from_secs(10), || {
        health(canary_port)["leaked_mb"] == LEAK_MB
    })
    .unwrap();
    // With a deadline: a bake that missed the leak would hold the run its full 10 minutes.
    wait_for("the run's end", Duration::from_secs(90), || {
        status(&fleet, &run)["status"] != "running"
    })
    .unwrap();
    let out = coordinator.wait_with_output().unwrap();
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}\n{}", stderr(&out));
    assert_rolled_back(
        &fleet,
        &report,
        &ports,
        &before,
        &[
            "during the bake after wave \"canary\"",
            "memory_bytes regression",
        ],
    );
}

/// A manual pause: the run stops `paused` with a healthy canary; its /ready then fails. The
/// promote validates the canary again before the next wave: the functional check fails, the
/// wave fails, and the promote rolls the fleet back instead of starting wave 2.
#[test]
fn a_canary_that_starts_failing_during_a_manual_pause_is_not_promoted_and_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let (fleet, ports) = start(&nats, &[CANARY, "ledger"]);
    let before = every_tree(&fleet, &ports);
    let plan = plan(&fleet, &ports, "manual");
    let out = fleet.flotilla(&["migrate", &plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "paused", "{report:#}");
    assert_eq!(service(&report, CANARY)["status"], "succeeded");
    let run = report["run_id"].as_str().unwrap().to_owned();

    std::fs::write(fleet.root(CANARY).join(FAIL_TRIGGER), "").unwrap();
    assert_eq!(http_get(ports[CANARY], "/ready").unwrap().0, 503);
    let out = fleet.flotilla(&["promote", &run, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}\n{}", stderr(&out));
    assert_rolled_back(
        &fleet,
        &report,
        &ports,
        &before,
        &[
            "during the manual pause after wave \"canary\"",
            "functional check (http) failed",
        ],
    );
    let notes = report["notes"].to_string();
    assert!(notes.contains("promote refused"), "{report:#}");
}

/// A healthy bake of a canary wave of four services passes: every round (one a second, and one
/// at the bake's end) finds them within their gates, and the rest is migrated. Each round's
/// duration, logged by the coordinator, is the cost of a bake per `bake_health_every`.
#[test]
fn a_healthy_bake_of_four_canaries_passes_and_times_its_rounds() {
    let nats = NatsServer::start().unwrap();
    let names = [CANARY, "ledger", "quotes2", "quotes3", "quotes4"];
    let (fleet, ports) = start(&nats, &names);
    // Four canaries, the fifth in the wave after them.
    let plan = std::fs::read_to_string(plan(&fleet, &ports, "3s"))
        .unwrap()
        .replace(
            &format!("services = [\"{CANARY}\"]"),
            "services = [\"quotes\", \"quotes2\", \"quotes3\", \"quotes4\"]",
        );
    let plan = fleet.write_plan("healthy-bake.toml", &plan);
    let out = fleet.flotilla(&["-v", "migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded", "{report:#}");
    for name in names {
        assert_eq!(service(&report, name)["status"], "succeeded", "{report:#}");
    }
    let figure = |line: &str, key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let (rounds, agents): (Vec<u64>, Vec<u64>) = stderr(&out)
        .lines()
        .filter(|l| l.contains("pause round") && l.contains("services=4"))
        .filter_map(|l| Some((figure(l, "took_ms=")?, figure(l, "agent_ms=")?)))
        .unzip();
    eprintln!(
        "inspect rounds of 4 services during the bake, ms: {rounds:?}; slowest agent's inspect, ms: {agents:?}"
    );
    assert!(rounds.len() >= 3, "{rounds:?}\n{}", stderr(&out));
    assert!(rounds.iter().all(|&ms| ms < 5_000), "{rounds:?}");
}
