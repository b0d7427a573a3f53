//! Checks that speak a foreign service's conventions (issue 16, item 5): two instances of a relay
//! service that logs its own `X-Request-Id` header (`tests/fixtures/relay_service.py`), one
//! forwarding to the other. The plan's checks send `X-Request-Id: ${run:id}` and
//! `traceparent: ${run:traceparent}`, its log checks require the run's ID and trace ID in the
//! service's own log, and its cross-service check sends a request to the first and finds the
//! run's ID in the second's log.

use flotilla_tests::report::service as service_status;
use flotilla_tests::{Fleet, NatsServer, free_port, json_stdout, repo_root};

/// `ingest` forwards to `preprocess`; `preprocess` logs request IDs only when `logs_ids`.
fn start(nats: &NatsServer, logs_ids: bool) -> (Fleet, u16, u16) {
    let (ingest, preprocess) = (free_port(), free_port());
    let script = repo_root().join("tests/fixtures/relay_service.py");
    let command = ["python3", script.to_str().unwrap()];
    let ingest_conf = format!("version=1\nport={ingest}\ndownstream={preprocess}\n");
    let preprocess_conf = format!("version=1\nport={preprocess}\nlog_request_id={logs_ids}\n");
    let mut fleet = Fleet::start_foreign(
        nats.url(),
        "ingest",
        &command,
        ingest,
        &[("relay.conf", &ingest_conf)],
    )
    .unwrap();
    fleet
        .add_foreign(
            "preprocess",
            &command,
            preprocess,
            &[("relay.conf", &preprocess_conf)],
        )
        .unwrap();
    (fleet, ingest, preprocess)
}

/// One service's part of the plan: a config change, a health check and a functional check in the
/// service's own header, and, with `log_check`, the proof in its own log.
fn service(name: &str, port: u16, log_check: bool) -> String {
    let headers =
        r#"headers = { "X-Request-Id" = "${run:id}", "traceparent" = "${run:traceparent}" }"#;
    let mut text = format!(
        "[[service]]\nname = \"{name}\"\n\
         [[service.step]]\naction = \"replace_text\"\npath = \"relay.conf\"\nfind = \"version=1\"\nreplace = \"version=2\"\n\
         [[service.health]]\nurl = \"http://127.0.0.1:{port}/health\"\n{headers}\n\
         [[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ping\"\n{headers}\n"
    );
    if log_check {
        text.push_str(
            "[[service.check]]\ntype = \"log\"\npath = \"relay.log\"\n\
             contains = \"path=/ping request_id=${run:id} trace=${run:trace_id}\"\n",
        );
    }
    text
}

fn plan(fleet: &Fleet, ingest: u16, preprocess: u16, preprocess_log_check: bool) -> String {
    let text = format!(
        "name = \"correlation\"\n\
         [gates]\nstartup_max_increase_pct = 1000.0\n\
         [[wave]]\nname = \"all\"\n\
         {}{}\
         [cross_service]\n\
         [[cross_service.log_correlation]]\n\
         request = {{ service = \"ingest\", url = \"http://127.0.0.1:{ingest}/forward\", headers = {{ \"X-Request-Id\" = \"${{run:id}}\" }} }}\n\
         expect_in_logs = [\"preprocess\"]\n\
         log = \"relay.log\"\n\
         contains = \"path=/work request_id=${{run:id}}\"\n\
         timeout_ms = 5000\n",
        service("ingest", ingest, true),
        service("preprocess", preprocess, preprocess_log_check),
    );
    let path = fleet.write_plan("correlation.toml", &text);
    let out = fleet.flotilla(&["plan", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_str().unwrap().to_owned()
}

fn log(fleet: &Fleet, service: &str) -> String {
    std::fs::read_to_string(fleet.root(service).join("relay.log")).unwrap_or_default()
}

#[test]
fn the_run_id_travels_in_the_services_own_header_into_both_logs() {
    let nats = NatsServer::start().unwrap();
    let (fleet, ingest, preprocess) = start(&nats, true);
    let plan = plan(&fleet, ingest, preprocess, true);
    let out = fleet.flotilla(&["migrate", &plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(report["status"], "succeeded", "{report:#}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], true, "{cross:#}");
    let searched = cross["log_correlation"].to_string();
    assert!(searched.contains("preprocess"), "{cross:#}");
    // The service's own log, in its own format: the run's ID, and one trace ID (the run's, as
    // the log checks proved) on every line of the run, in both services.
    let mut traces = std::collections::BTreeSet::new();
    for service in ["ingest", "preprocess"] {
        let log = log(&fleet, service);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("request_id={run_id}")))
            .collect();
        assert!(!lines.is_empty(), "{service}: {log}");
        traces.extend(
            lines
                .iter()
                .map(|l| l.rsplit("trace=").next().unwrap().to_owned()),
        );
    }
    assert_eq!(traces.len(), 1, "{traces:?}");
    let trace = traces.first().unwrap();
    assert!(
        trace.len() == 32 && trace.chars().all(|c| c.is_ascii_hexdigit()),
        "{trace}"
    );
    // The forwarded call reached preprocess with the ID ingest was sent.
    assert!(
        log(&fleet, "preprocess").contains(&format!("path=/work request_id={run_id}")),
        "{}",
        log(&fleet, "preprocess")
    );
}

#[test]
fn a_service_that_drops_the_id_fails_the_cross_service_check_and_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let (fleet, ingest, preprocess) = start(&nats, false);
    let plan = plan(&fleet, ingest, preprocess, false);
    let out = fleet.flotilla(&["migrate", &plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], false, "{cross:#}");
    let problems = cross["problems"].to_string();
    assert!(
        problems.contains("preprocess/a: log correlation failed"),
        "{problems}"
    );
    for service in ["ingest", "preprocess"] {
        assert_eq!(
            service_status(&report, service)["status"],
            "rolled_back",
            "{report:#}"
        );
        let conf = std::fs::read_to_string(fleet.root(service).join("relay.conf")).unwrap();
        assert!(conf.contains("version=1"), "{service}: {conf}");
    }
}
