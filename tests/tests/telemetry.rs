//! One trace per run, proven from the default store: the coordinator's root and producer spans,
//! every agent's consumer and phase spans and logs, all under the run's trace and correlation
//! ID; and `verify` naming a service that sent nothing.

use flotilla_tests::{Fleet, NatsServer, ROLES, json_stdout, repo_root};

#[test]
fn a_run_is_one_trace_with_every_service_correlated_and_no_orphans() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{run:#}");
    let run_id = run["run_id"].as_str().unwrap();

    let out = fleet.flotilla(&["verify", run_id, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["run_id"], run_id);
    assert_eq!(report["roots"].as_array().unwrap().len(), 1, "{report:#}");
    assert!(
        report["orphans"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 5);
    for service in services {
        assert_eq!(service["correlated"], true, "{service:#}");
        // One consumer span and one span per phase at least; logs from every phase.
        assert!(service["spans"].as_u64().unwrap() >= 6, "{service:#}");
        assert!(service["logs"].as_u64().unwrap() >= 5, "{service:#}");
    }
    // The coordinator's spans are there too, down to the last one of this short CLI run (the
    // finalize dispatches): a root plus one producer span per command, 5 migrate + 5 finalize.
    let coordinator = report["others"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["service"] == "flotilla")
        .unwrap();
    assert_eq!(coordinator["spans"], 11, "{coordinator:#}");
}

#[test]
fn verify_names_a_service_whose_agent_exports_nothing() {
    let nats = NatsServer::start().unwrap();
    let silent = |role: &str| {
        if role == "ingest" {
            vec![("OTEL_SDK_DISABLED".to_owned(), "true".to_owned())]
        } else {
            Vec::new()
        }
    };
    let fleet =
        Fleet::start_with(nats.url(), &["inference", "ingest"], &silent, Vec::new()).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let mut plan_text = std::fs::read_to_string(&plan).unwrap();
    for role in ["training", "execution", "preprocess"] {
        plan_text = plan_text.replace(&format!("[[service]]\nname = \"{role}\"\n"), "");
    }
    let plan = fleet.write_plan("two.toml", &plan_text);
    // The migration itself refuses to finalize an uncorrelated run, and rolls it back.
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "3s",
    ]);
    let run = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{run:#}");
    assert_eq!(run["finalized"], false, "{run:#}");

    let out = fleet.flotilla(&[
        "verify",
        run["run_id"].as_str().unwrap(),
        "--output",
        "json",
        "--verify-wait",
        "1s",
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["ok"], false);
    let service = |name: &str| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(service("inference")["correlated"], true, "{report:#}");
    let ingest = service("ingest");
    assert_eq!(ingest["correlated"], false, "{report:#}");
    assert_eq!(ingest["spans"], 0, "{report:#}");
    assert!(
        !ingest["problems"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
}
