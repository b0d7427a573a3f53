//! Listings for big fleets and what a run record says about its origin, against a real fleet:
//! `agents --service`, `runs` newest first with `--limit` and `--status`, and the run's
//! `started_by` (user, host, signing key) and plan digest in every report, with the HTML
//! report's link to the trace in a configured tracing UI.

use std::process::Command;

use flotilla_tests::{Fleet, NatsServer, demo_plan_text, json_stdout};
use serde_json::Value;

const ROLES: [&str; 2] = ["inference", "ingest"];

fn json(fleet: &Fleet, args: &[&str]) -> (Option<i32>, Value) {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = fleet.flotilla(&args);
    (out.status.code(), json_stdout(&out))
}

fn run_ids(runs: &Value) -> Vec<&str> {
    runs.as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect()
}

/// `sha256sum` of a file, as `sha256:<hex>`.
fn sha256_of(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    format!("sha256:{}", text.split_whitespace().next().unwrap())
}

#[test]
fn agents_filter_by_service() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let window = ["--discovery-window", "1s"];
    let (code, agents) = json(
        &fleet,
        &[&["agents", "--service", "ingest"][..], &window].concat(),
    );
    assert_eq!(code, Some(0));
    let services: Vec<&str> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["ingest"], "{agents:#}");
    let (_, both) = json(
        &fleet,
        &[&["agents", "--service", "ingest,inference"][..], &window].concat(),
    );
    assert_eq!(both.as_array().unwrap().len(), 2, "{both:#}");
    let none = fleet.flotilla(&[&["agents", "--service", "nosuch"][..], &window].concat());
    assert_eq!(none.status.code(), Some(3));
    assert!(none.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&none.stderr)
            .contains("2 agent(s) answered, none of service nosuch"),
        "{none:?}"
    );
}

#[test]
fn runs_are_newest_first_filtered_and_name_who_started_them() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = fleet.write_plan("plan.toml", &demo_plan_text(&ROLES));
    let (code, first) = fleet.migrate_file(&plan, &["--rehearse"]);
    assert_eq!(code, Some(0), "{first:#}");
    let (code, second) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(0), "{second:#}");
    let (first, second) = (
        first["run_id"].as_str().unwrap(),
        second["run_id"].as_str().unwrap(),
    );

    let (_, all) = json(&fleet, &["runs"]);
    assert_eq!(run_ids(&all), [second, first], "newest first: {all:#}");
    let (_, newest) = json(&fleet, &["runs", "--limit", "1"]);
    assert_eq!(run_ids(&newest), [second]);
    let (_, rehearsed) = json(&fleet, &["runs", "--status", "rehearsed"]);
    assert_eq!(run_ids(&rehearsed), [first]);
    let (_, either) = json(
        &fleet,
        &[
            "runs",
            "--status",
            "failed,rehearsed",
            "--status",
            "succeeded",
        ],
    );
    assert_eq!(run_ids(&either), [second, first]);
    let (_, failed) = json(&fleet, &["runs", "--status", "rolled_back"]);
    assert_eq!(run_ids(&failed), Vec::<&str>::new());
    let bad = fleet.flotilla(&["runs", "--status", "rolledback"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown status \"rolledback\""));

    // `watch --service` of a finished run (replayed): only that service's events.
    let out = fleet.flotilla(&["watch", second, "--service", "ingest", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let services: std::collections::BTreeSet<&str> = lines
        .iter()
        .filter(|l| l["type"] == "progress" || l["type"] == "result")
        .map(|l| l["service"].as_str().unwrap())
        .collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), ["ingest"]);
    assert_eq!(lines.last().unwrap()["type"], "end");

    // Who started it, from where, with which key, and the plan's digest.
    let (code, report) = json(&fleet, &["report", second]);
    assert_eq!(code, Some(0));
    let by = &report["started_by"];
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(by["host"], host.trim(), "{report:#}");
    let user = std::env::var("USER").ok().filter(|u| !u.is_empty());
    if let Some(user) = &user {
        assert_eq!(by["user"], user.as_str());
    }
    assert!(!by["user"].as_str().unwrap().is_empty());
    assert_eq!(by["signing_key"], fleet.signing_key().id());
    assert_eq!(report["plan_digest"], sha256_of(&plan));
    let trace_id = report["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32, "{report:#}");

    let text = String::from_utf8(fleet.flotilla(&["status", second]).stdout).unwrap();
    let line = format!(
        "  by: {}@{} (signing key {}), plan {}",
        by["user"].as_str().unwrap(),
        host.trim(),
        fleet.signing_key().id(),
        sha256_of(&plan)
    );
    assert!(text.contains(&line), "{line}\nnot in:\n{text}");
    let md =
        String::from_utf8(fleet.flotilla(&["report", second, "--format", "md"]).stdout).unwrap();
    assert!(
        md.contains(&format!("| plan digest | `{}` |", sha256_of(&plan))),
        "{md}"
    );

    // The HTML report links the trace: from the config file, or the flag over it.
    let config = fleet.write_plan(
        "flotilla.toml",
        "[report]\ntrace_url = \"http://jaeger:16686/trace/{trace_id}\"\n",
    );
    let html = |args: &[&str]| {
        let mut all = vec!["report", second, "--format", "html"];
        all.extend_from_slice(args);
        String::from_utf8(fleet.flotilla(&all).stdout).unwrap()
    };
    let page = html(&["--config", config.to_str().unwrap()]);
    let link = format!("href=\"http://jaeger:16686/trace/{trace_id}\"");
    assert!(page.contains(&link), "{link} not in the page");
    let page = html(&[
        "--config",
        config.to_str().unwrap(),
        "--trace-url",
        "https://tempo.example/explore?trace={trace_id}",
    ]);
    assert!(page.contains(&format!(
        "href=\"https://tempo.example/explore?trace={trace_id}\""
    )));
    let bad = fleet.flotilla(&[
        "report",
        second,
        "--trace-url",
        "javascript:alert(1)//{trace_id}",
    ]);
    assert_eq!(bad.status.code(), Some(2));
}
