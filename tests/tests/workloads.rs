//! Functional performance gates: measured workloads before and after the change (T006's
//! "inference latency, training throughput"), with the figures in the result whether the gate
//! passed or not.

use flotilla_tests::{Fleet, NatsServer, binary, snapshot, standard_config_step};

fn plan(behaviour: &str) -> String {
    format!(
        r#"name = "workloads"
command_timeout = "60s"

# This machine runs the whole suite on two cores: a generous absolute slack keeps a healthy
# service from tripping on scheduling jitter, while a real regression (+200 ms) still trips.
[gates]
latency_slack_ms = 50

[[service]]
name = "inference"
{config}[[service.step]]
action = "delete"
path = "legacy.conf"
[[service.workload]]
type = "http"
name = "predict"
url = "http://127.0.0.1:${{var:port}}/predict"
method = "POST"
body = '{{"features": [1, 2, 3]}}'
requests = 60
concurrency = 4

[[service]]
name = "training"
{training}[[service.step]]
action = "delete"
path = "legacy.conf"
[[service.workload]]
type = "job"
name = "epoch"
program = "{sample}"
args = ["--role", "training", "--root", ".", "--run-job"]
throughput_field = "records_per_second"
"#,
        config = standard_config_step("inference", behaviour),
        training = standard_config_step("training", ""),
        sample = binary("flotilla-sample").display(),
    )
}

#[test]
fn a_healthy_migration_passes_its_workload_gates_with_figures() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "training"]).unwrap();
    let (code, report) = fleet.migrate(plan(""));
    assert_eq!(code, Some(0), "{report:#}");
    let service = |name: &str| {
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == name)
            .unwrap()
            .clone()
    };
    let predict = &service("inference")["workloads"][0];
    assert_eq!(predict["name"], "predict");
    for side in ["before", "after"] {
        assert_eq!(predict[side]["samples"], 60, "{predict:#}");
        assert!(
            predict[side]["p95_ms"].as_f64().unwrap() > 0.0,
            "{predict:#}"
        );
    }
    let epoch = &service("training")["workloads"][0];
    assert!(
        epoch["after"]["throughput"].as_f64().unwrap() > 0.0,
        "{epoch:#}"
    );
    let gates = service("training")["gates"].to_string();
    assert!(
        gates.contains("epoch.throughput") && gates.contains("epoch.duration_ms"),
        "{gates}"
    );
}

#[test]
fn twice_slower_inference_trips_the_latency_gate_and_is_rolled_back_with_figures() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "training"]).unwrap();
    let before = snapshot(&fleet.root("inference"));
    let (code, report) = fleet.migrate(plan("request_delay_ms = 200"));
    assert_eq!(code, Some(1), "{report:#}");
    let inference = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "inference")
        .unwrap();
    assert_eq!(inference["status"], "rolled_back", "{inference:#}");
    let reason = inference["reason"].as_str().unwrap();
    assert!(reason.contains("predict.p95_us regression"), "{reason}");
    assert_eq!(snapshot(&fleet.root("inference")), before);
    let text = inference.to_string();
    assert!(
        text.contains("p95_ms"),
        "the workload's figures are in the result: {text}"
    );
}
