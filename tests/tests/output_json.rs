//! `--output json` on every command that prints a result, against a real fleet: stdout is one
//! JSON document (for `watch`, one JSON object per line), and an error leaves stdout empty and
//! says why on stderr. `plan check` and `migrate --dry-run` have tests of their own.

use std::time::Duration;

use flotilla_tests::{Fleet, NatsServer, json_stdout, wait_for};
use serde_json::Value;

const ROLES: [&str; 2] = ["inference", "ingest"];

/// A service whose migration counts its applications in `counter.txt`, then waits `sleep`
/// seconds; with `fail`, its health check fails after the restart and the agent rolls it back.
fn service(name: &str, sleep: u32, fail: bool) -> String {
    let mut text = format!(
        "[[service]]\nname = \"{name}\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"echo x >> counter.txt; sleep {sleep}\"]\n"
    );
    if fail {
        text.push_str("[[service.step]]\naction = \"replace_text\"\npath = \"legacy.conf\"\nfind = \"fail_health=false\"\nreplace = \"fail_health=true\"\n[[service.health]]\ntimeout_ms = 1500\n");
    }
    text
}

fn entry<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["service"] == name))
        .unwrap_or_else(|| panic!("{name} not in {report:#}"))
}

/// Runs `flotilla ARGS --output json`; returns its exit code and its stdout as one document.
fn json(fleet: &Fleet, args: &[&str]) -> (Option<i32>, Value) {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = fleet.flotilla(&args);
    (out.status.code(), json_stdout(&out))
}

/// The newest run recorded, once there are `count` runs.
fn run_number(fleet: &Fleet, count: usize) -> String {
    let mut id = String::new();
    wait_for("the run to be recorded", Duration::from_secs(20), || {
        if let (_, Value::Array(runs)) = json(fleet, &["runs"])
            && runs.len() >= count
        {
            // Newest first: the count-th run is count from the end.
            id = runs[runs.len() - count]["run_id"]
                .as_str()
                .unwrap_or_default()
                .into();
        }
        !id.is_empty()
    })
    .unwrap();
    id
}

#[test]
fn every_command_that_prints_a_result_prints_one_json_document() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();

    let (code, agents) = json(&fleet, &["agents", "--discovery-window", "500ms"]);
    assert_eq!(code, Some(0));
    let mut services: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["service"].as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ROLES, "{agents:#}");

    let key = fleet.dir().join("keys").join("new.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let (code, keys) = json(
        &fleet,
        &["keys", "generate", "--out", key.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{keys:#}");
    assert_eq!(keys["private_key_file"], key.to_str().unwrap());
    let public = std::fs::read_to_string(keys["public_key_file"].as_str().unwrap()).unwrap();
    assert!(!keys["public_key"].as_str().unwrap().is_empty(), "{keys:#}");
    assert!(
        public.contains(keys["public_key"].as_str().unwrap()),
        "{public}"
    );

    // A run cancelled from elsewhere, then resumed: one service at a time, each a while.
    let serial = fleet.write_plan(
        "serial.toml",
        &format!(
            "name = \"serial\"\nmax_parallel = 1\n{}{}",
            service("inference", 2, false),
            service("ingest", 2, false)
        ),
    );
    let coordinator =
        fleet.spawn_flotilla(&["migrate", serial.to_str().unwrap(), "--output", "json"]);
    let first = run_number(&fleet, 1);
    let (code, cancel) = json(&fleet, &["cancel", &first]);
    assert_eq!(code, Some(0), "{cancel:#}");
    assert_eq!(cancel["run_id"], first.as_str());
    assert_eq!(cancel["cancel_requested"], true);
    let out = coordinator.wait_with_output().unwrap();
    let cancelled = json_stdout(&out);
    assert_eq!(out.status.code(), Some(7), "{cancelled:#}");
    assert_eq!(cancelled["status"], "cancelled");
    // No progress on stderr either (warnings may be there).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr
            .lines()
            .any(|l| l.starts_with('[') || l.starts_with("run ")),
        "{stderr}"
    );
    let (code, resumed) = json(&fleet, &["resume", &first]);
    assert_eq!(code, Some(0), "{resumed:#}");
    assert_eq!(resumed["run_id"], first.as_str());
    assert_eq!(resumed["status"], "succeeded");

    // A run that waits for its operator's decision, then finalized.
    let (code, waiting) = json(
        &fleet,
        &["migrate", serial.to_str().unwrap(), "--no-finalize"],
    );
    assert_eq!(code, Some(0), "{waiting:#}");
    assert_eq!(waiting["status"], "awaiting_finalize");
    let second = waiting["run_id"].as_str().unwrap().to_owned();
    let (code, finalized) = json(&fleet, &["finalize", &second]);
    assert_eq!(code, Some(0), "{finalized:#}");
    assert_eq!(finalized["run_id"], second.as_str());
    assert_eq!(finalized["status"], "succeeded");
    assert_eq!(finalized["finalized"], true);

    // A run left half-done: inference migrated, ingest rolled back by its agent.
    let leave = fleet.write_plan(
        "leave.toml",
        &format!(
            "name = \"leave\"\non_failure = \"leave\"\n{}{}",
            service("inference", 0, false),
            service("ingest", 0, true)
        ),
    );
    let (code, migrated) = json(&fleet, &["migrate", leave.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{migrated:#}");
    assert_eq!(entry(&migrated, "inference")["status"], "succeeded");
    assert_eq!(entry(&migrated, "ingest")["status"], "rolled_back");
    let run = migrated["run_id"].as_str().unwrap().to_owned();

    let (code, status) = json(&fleet, &["status", &run]);
    assert_eq!(code, Some(1), "{status:#}");
    assert_eq!(status["run_id"], run.as_str());
    assert_eq!(entry(&status, "ingest")["failure"], "failed_validation");

    let (code, runs) = json(&fleet, &["runs"]);
    assert_eq!(code, Some(0));
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(ids, [&run, &second, &first], "{runs:#}");

    // `report -o json` is the JSON report; an explicit `--format` wins.
    let (code, report) = json(&fleet, &["report", &run]);
    assert_eq!(code, Some(0));
    assert_eq!(report["run_id"], run.as_str());
    assert_eq!(report["plan"], "leave");
    let md = fleet.flotilla(&["report", &run, "--format", "md", "--output", "json"]);
    let md = String::from_utf8(md.stdout).unwrap();
    assert!(md.starts_with("# Migration report: leave"), "{md}");

    // `watch` streams: one JSON object per line, the last one the run's end and its report.
    let out = fleet.flotilla(&["watch", &run, "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines[0]["type"], "run", "{lines:#?}");
    let end = lines.last().unwrap();
    assert_eq!(end["type"], "end", "{end:#}");
    assert_eq!(end["exit_code"], 1);
    assert_eq!(end["report"]["run_id"], run.as_str());

    let (code, verify) = json(&fleet, &["verify", &run, "--verify-wait", "3s"]);
    assert!(matches!(code, Some(0 | 1)), "{verify:#}");
    assert_eq!(verify["run_id"], run.as_str());
    assert_eq!(verify["ok"], code == Some(0), "{verify:#}");
    assert_eq!(
        verify["services"].as_array().unwrap().len(),
        2,
        "{verify:#}"
    );

    let (code, rolled) = json(&fleet, &["rollback", &run, "--service", "inference"]);
    assert_eq!(code, Some(1), "{rolled:#}");
    assert_eq!(rolled["status"], "rolled_back");
    assert_eq!(entry(&rolled, "inference")["status"], "rolled_back");

    // An error: nothing on stdout, the reason on stderr, the exit code says which.
    let out = fleet.flotilla(&["status", "nosuch", "--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
}

/// The subjects every client of `nats` subscribes to, from its monitoring endpoint.
fn subscriptions(nats: &NatsServer) -> Vec<String> {
    let port = nats
        .monitoring_port()
        .expect("the test server serves monitoring");
    let connz = flotilla_testkit::monitoring::get_json(port, "/connz?subs=1&limit=1000")
        .expect("nats-server answers /connz");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// A migration that prints JSON shows no progress, so it does not subscribe to it: checking the
/// signature of every live progress message was most of the coordinator's CPU at 10,000 agents.
/// One that prints lines does, and shows them.
#[test]
fn a_migration_printing_json_does_not_listen_to_live_progress() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["ingest"]).unwrap();
    let held = fleet.root("ingest").join("held");
    let release = fleet.dir().join("release");
    let plan = fleet.write_plan(
        "held.toml",
        &format!(
            "name = \"held\"\n[[service]]\nname = \"ingest\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"touch held; while [ ! -e {} ]; do sleep 0.05; done; rm held\"]\n",
            release.display()
        ),
    );
    for (json_output, listens) in [(false, true), (true, false)] {
        let mut args = vec!["migrate", plan.to_str().unwrap()];
        if json_output {
            args.extend(["--output", "json"]);
        }
        let coordinator = fleet.spawn_flotilla(&args);
        wait_for(
            "the migration to hold in its step",
            Duration::from_secs(30),
            || held.exists(),
        )
        .unwrap();
        // The coordinator subscribes before it sends the command, on the connection it sends it
        // on: a subscription it made is listed by now.
        let subjects = subscriptions(&nats);
        let live = subjects.iter().any(|s| s.starts_with("flotilla.live."));
        std::fs::write(&release, "").unwrap();
        let out = coordinator.wait_with_output().unwrap();
        std::fs::remove_file(&release).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert_eq!(
            live, listens,
            "json output {json_output}: subscriptions {subjects:?}"
        );
        assert_eq!(
            stderr.contains("ingest/") && stderr.contains(" apply ok"),
            listens,
            "json output {json_output}: {stderr}"
        );
    }
}
