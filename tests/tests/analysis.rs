//! Analysis gates (`[[wave.analysis]]`) against a real Prometheus scraping the agents' own
//! `/metrics` (each agent's Prometheus job is its service's name): a gate that holds lets the
//! run finish with its verdict recorded, a crossed threshold fails the wave and rolls the fleet
//! back, and an unreachable Prometheus is inconclusive: a failure by default, a warning when the
//! gate says so.

use std::time::{Duration, Instant};

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, NatsServer, Prometheus, Service, free_port};
use serde_json::Value;

const ROLES: [&str; 2] = ["ingest", "training"];

/// The fleet, each agent's `/metrics` on a port of its own; returns the `(job, target)` pairs.
fn fleet(nats: &NatsServer) -> (Fleet, Vec<(String, String)>) {
    let targets: Vec<(String, String)> = ROLES
        .iter()
        .map(|r| (r.to_string(), format!("127.0.0.1:{}", free_port())))
        .collect();
    let env = |role: &str| {
        let (_, target) = targets.iter().find(|(r, _)| r == role).unwrap();
        vec![("FLOTILLA_HTTP__LISTEN".to_owned(), target.clone())]
    };
    let fleet = Fleet::start_with(nats.url(), &ROLES, &env, Vec::new()).unwrap();
    (fleet, targets)
}

/// Prometheus scraping every agent, once every target was scraped healthy.
fn prometheus(targets: &[(String, String)]) -> Prometheus {
    let pairs: Vec<(&str, &str)> = targets
        .iter()
        .map(|(j, t)| (j.as_str(), t.as_str()))
        .collect();
    let prometheus = Prometheus::start(&pairs).unwrap();
    for (job, _) in targets {
        prometheus
            .wait_for(
                &format!("up{{job=\"{job}\"}} == 1"),
                Duration::from_secs(60),
            )
            .unwrap();
    }
    prometheus
}

/// A canary wave of ingest under `gates` (`[[wave.analysis]]` tables), then the rest;
/// `url` is Prometheus'.
fn plan(url: &str, gates: &str) -> String {
    let services: String = ROLES
        .iter()
        .map(|r| Service::new(r).sh("echo x >> counter.txt").to_string())
        .collect();
    format!(
        "name = \"analysed\"\ncommand_timeout = \"30s\"\n[analysis]\nprometheus = \"{url}\"\n\
         [[wave]]\nname = \"canary\"\nservices = [\"ingest\"]\n{gates}\n[[wave]]\nname = \"rest\"\n{services}"
    )
}

/// The verdicts recorded for wave `w`.
fn verdicts(report: &Value, w: usize) -> Vec<Value> {
    report["waves"][w]["analysis"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// A timestamp of wave `w` in a report (`paused_until`, `pause_ended_at`, …), if recorded.
fn wave_time(report: &Value, w: usize, key: &str) -> Option<time::OffsetDateTime> {
    report["waves"][w][key].as_str().map(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    })
}

fn run_id(report: &Value) -> String {
    report["run_id"]
        .as_str()
        .expect("the report names its run")
        .to_owned()
}

#[test]
fn a_gate_that_holds_lets_the_run_finish_with_its_verdicts_and_values() {
    let nats = NatsServer::start().unwrap();
    let (fleet, targets) = fleet(&nats);
    let prometheus = prometheus(&targets);
    let url = format!("http://127.0.0.1:{}", prometheus.port());
    let gates = r#"[[wave.analysis]]
name = "scraped"
query = 'up{job="${service:name}"}'
max = 1
[[wave.analysis]]
name = "commands"
query = 'sum(flotilla_agent_commands_total{job="${service:name}"}) or vector(0)'
max = 1000
[[wave.analysis]]
name = "still up"
query = 'min(up)'
max_increase = "0%"
"#;
    let (code, preview) = fleet.migrate_with(plan(&url, gates), &["--dry-run"]);
    assert_eq!(code, Some(0), "{preview:#}");
    assert_eq!(
        preview["waves"][0]["analysis"][0]["query"], r#"up{job="ingest"}"#,
        "a dry run shows the queries as sent: {preview:#}"
    );
    let started = Instant::now();
    let (code, report) = fleet.migrate(plan(&url, gates));
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    let canary = verdicts(&report, 0);
    assert_eq!(canary.len(), 3, "{report:#}");
    let scraped = &canary[0];
    assert_eq!(scraped["query"], r#"up{job="ingest"}"#, "{scraped:#}");
    assert_eq!(scraped["service"], "ingest");
    assert_eq!(scraped["value"], 1.0);
    assert_eq!(scraped["passed"], true);
    assert_eq!(scraped["inconclusive"], false);
    assert!(canary[1]["value"].as_f64().is_some(), "{:#}", canary[1]);
    let still_up = &canary[2];
    assert_eq!(still_up["baseline"], 1.0, "{still_up:#}");
    assert_eq!(still_up["value"], 1.0);
    assert_eq!(still_up["limit"], 1.0);
    assert!(canary.iter().all(|v| v["passed"] == true));
    assert!(verdicts(&report, 1).is_empty(), "the rest has no gates");
    let text = fleet.flotilla(&["status", &run_id(&report)]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(r#"analysis: wave "canary" "scraped" passed: up{job="ingest"} is 1"#),
        "{text}"
    );
    let queried = Instant::now();
    for _ in 0..10 {
        prometheus.query(r#"up{job="ingest"}"#).unwrap();
    }
    eprintln!(
        "a run of two services with three analysis gates took {took:?}; one query {:?}",
        queried.elapsed() / 10
    );
}

#[test]
fn a_crossed_threshold_fails_the_wave_and_rolls_the_fleet_back() {
    let nats = NatsServer::start().unwrap();
    let (fleet, targets) = fleet(&nats);
    let prometheus = prometheus(&targets);
    let url = format!("http://127.0.0.1:{}", prometheus.port());
    let gates = r#"[[wave.analysis]]
name = "scraped too well"
query = 'up{job="${service:name}"}'
max = 0.5
"#;
    let (code, report) = fleet.migrate(plan(&url, gates));
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "failed");
    let verdict = &verdicts(&report, 0)[0];
    assert_eq!(verdict["value"], 1.0, "{verdict:#}");
    assert_eq!(verdict["limit"], 0.5);
    assert_eq!(verdict["passed"], false);
    assert_eq!(verdict["inconclusive"], false);
    assert_eq!(
        service(&report, "ingest")["status"],
        "rolled_back",
        "{report:#}"
    );
    assert_eq!(service(&report, "training")["status"], "not_started");
    assert_eq!(report["waves"][1]["status"], "pending");
    let markdown = fleet.flotilla(&["report", &run_id(&report), "--format", "md"]);
    let markdown = String::from_utf8_lossy(&markdown.stdout);
    assert!(
        markdown.contains(
            r#"| canary | scraped too well | `up{job="ingest"}` | – | 1 | <= 0.5 | **failed**"#
        ),
        "{markdown}"
    );
    assert!(
        std::fs::read_to_string(fleet.root("training").join("counter.txt")).is_err(),
        "training was touched"
    );
}

/// The canary bakes 10 minutes after its wave, its health checked every second (an inspect
/// command to its agent each time). The gate holds right after the wave (no inspect yet) and is
/// crossed once Prometheus scrapes the agent's own counter of inspects: read again at each round
/// of the bake, it fails the wave then, long before the bake's end, and the fleet is rolled back
/// before the next wave.
#[test]
fn a_gate_crossed_during_the_bake_fails_the_wave_before_its_end() {
    let nats = NatsServer::start().unwrap();
    let (fleet, targets) = fleet(&nats);
    let prometheus = prometheus(&targets);
    let url = format!("http://127.0.0.1:{}", prometheus.port());
    let gates = r#"pause = "10m"
[[wave.analysis]]
name = "quiet"
query = 'sum(flotilla_agent_commands_total{job="${service:name}",kind="inspect"})'
max = 0
"#;
    let plan = plan(&url, gates).replace(
        "command_timeout = \"30s\"\n",
        "command_timeout = \"30s\"\nbake_health_every = \"1s\"\n",
    );
    let (code, report) = fleet.migrate(plan);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = verdicts(&report, 0);
    assert_eq!(canary.len(), 2, "{canary:#?}");
    assert_eq!(
        canary[0]["passed"], true,
        "right after the wave: {canary:#?}"
    );
    assert_eq!(canary[1]["name"], "quiet (during the bake)");
    assert_eq!(canary[1]["passed"], false, "over the bake: {canary:#?}");
    let ended = wave_time(&report, 0, "pause_ended_at").expect("the bake's end recorded");
    let until = wave_time(&report, 0, "paused_until").expect("the bake's planned end");
    assert!(
        ended + time::Duration::minutes(5) < until,
        "the bake ran until {ended}, planned until {until}: {report:#}"
    );
    assert_eq!(
        service(&report, "ingest")["status"],
        "rolled_back",
        "{report:#}"
    );
    assert_eq!(service(&report, "training")["status"], "not_started");
}

/// A manual pause is read when it is promoted: the gate (how long since the canary's agent last
/// had a command) holds right after the wave and is crossed once the pause has lasted; the
/// promote reads it again, fails the wave and rolls the fleet back instead of starting wave 2.
#[test]
fn a_gate_crossed_during_a_manual_pause_fails_the_promote() {
    let nats = NatsServer::start().unwrap();
    let (fleet, targets) = fleet(&nats);
    let prometheus = prometheus(&targets);
    let url = format!("http://127.0.0.1:{}", prometheus.port());
    // Seconds since the agent's last command; 0 while Prometheus has not scraped one yet (the
    // wave's migrate may have ended since the last scrape).
    let idle = r#"time() - max(flotilla_agent_last_command_timestamp_seconds{job="ingest"} > 0)"#;
    let gates = format!(
        "pause = \"manual\"\n[[wave.analysis]]\nname = \"busy\"\nquery = '({idle}) or vector(0)'\nmax = 8\n"
    );
    let (code, report) = fleet.migrate(plan(&url, &gates));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "paused", "{report:#}");
    assert_eq!(verdicts(&report, 0)[0]["passed"], true, "{report:#}");
    prometheus
        .wait_for(&format!("{idle} > 10"), Duration::from_secs(30))
        .unwrap();
    let out = fleet.flotilla(&["promote", &run_id(&report), "--output", "json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    let canary = verdicts(&report, 0);
    assert_eq!(canary[1]["name"], "busy (at the promote)", "{canary:#?}");
    assert_eq!(canary[1]["passed"], false, "{canary:#?}");
    assert_eq!(service(&report, "ingest")["status"], "rolled_back");
    assert_eq!(service(&report, "training")["status"], "not_started");
}

#[test]
fn an_unreachable_prometheus_is_inconclusive_failing_by_default_and_warning_when_told() {
    let nats = NatsServer::start().unwrap();
    let (fleet, _) = fleet(&nats);
    // Nothing listens there: connection refused.
    let url = format!("http://127.0.0.1:{}", free_port());
    let gate = |policy: &str| {
        format!("[[wave.analysis]]\nname = \"errors\"\nquery = 'up'\nmax = 0\n{policy}\n")
    };
    let (code, report) = fleet.migrate(plan(&url, &gate("")));
    assert_eq!(code, Some(1), "{report:#}");
    let verdict = &verdicts(&report, 0)[0];
    assert_eq!(verdict["inconclusive"], true, "{verdict:#}");
    assert_eq!(verdict["passed"], false);
    assert!(verdict["value"].is_null());
    assert!(
        verdict["detail"]
            .as_str()
            .unwrap()
            .contains("is unreachable"),
        "{verdict:#}"
    );
    assert_eq!(service(&report, "ingest")["status"], "rolled_back");

    let (code, report) = fleet.migrate(plan(&url, &gate("inconclusive = \"warn\"")));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    let verdict = &verdicts(&report, 0)[0];
    assert_eq!(
        (&verdict["inconclusive"], &verdict["passed"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("inconclusive = \\\"warn\\\": the run goes on"),
        "{notes}"
    );
}
