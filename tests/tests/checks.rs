//! Preconditions, functional checks (HTTP, TCP, a batch job run) and an external supervisor,
//! end to end with the real binaries.

use flotilla_tests::{Fleet, NatsServer, binary, snapshot, standard_config_step};

fn plan(role: &str, behaviour: &str, tail: &str) -> String {
    format!(
        "name = \"checks\"\ncommand_timeout = \"60s\"\n[[service]]\nname = \"{role}\"\n{}[[service.step]]\naction = \"delete\"\npath = \"legacy.conf\"\n{tail}",
        standard_config_step(role, behaviour)
    )
}

fn job_check(role: &str) -> String {
    format!(
        "[[service.check]]\ntype = \"command\"\nprogram = \"{}\"\nargs = [\"--role\", \"{role}\", \"--root\", \".\", \"--run-job\"]\nmax_duration_ms = 20000\nstdout_contains = '\"layout\":\"standard\"'\n",
        binary("flotilla-sample").display()
    )
}

#[test]
fn a_batch_service_is_validated_by_running_its_job_and_a_failing_job_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["training", "preprocess"]).unwrap();

    let tcp = "[[service.check]]\ntype = \"tcp\"\naddress = \"127.0.0.1:${var:port}\"\ntimeout_ms = 2000\n";
    let (code, report) = fleet.migrate(plan(
        "training",
        "",
        &format!("{}{tcp}", job_check("training")),
    ));
    assert_eq!(code, Some(0), "{report:#}");

    // The job run as the wrong role refuses its configuration and exits 2: validation fails and
    // the service, healthy as it is, is restored anyway.
    let before = snapshot(&fleet.root("preprocess"));
    let (code, report) = fleet.migrate(plan("preprocess", "", &job_check("training")));
    assert_eq!(code, Some(1), "{report:#}");
    let service = &report["services"][0];
    assert_eq!(service["status"], "rolled_back", "{report:#}");
    let reason = service["reason"].as_str().unwrap();
    assert!(
        reason.contains("command check") && reason.contains("exit status: 2"),
        "{reason}"
    );
    assert_eq!(snapshot(&fleet.root("preprocess")), before);
}

#[test]
fn an_unmet_precondition_or_a_disallowed_check_is_refused_before_any_change() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["ingest"]).unwrap();
    let before = snapshot(&fleet.root("ingest"));
    let cases = [
        (
            "[[service.precondition]]\ntype = \"file_contains\"\npath = \"legacy.conf\"\ntext = \"listen_port=1\\n\"\n",
            "legacy.conf does not contain",
        ),
        (
            "[[service.precondition]]\ntype = \"file_absent\"\npath = \"legacy.conf\"\n",
            "precondition: legacy.conf exists",
        ),
        (
            "[[service.check]]\ntype = \"command\"\nprogram = \"rm\"\n",
            "not on the agent's allow-list",
        ),
        (
            "[[service.check]]\ntype = \"tcp\"\naddress = \"127.0.0.1:${var:nope}\"\n",
            "variable \\\"nope\\\" is not defined",
        ),
    ];
    for (tail, expected) in cases {
        let (_, report) = fleet.migrate(plan("ingest", "", tail));
        let service = &report["services"][0];
        assert_eq!(service["status"], "refused", "{report:#}");
        let reason = service["reason"].to_string();
        assert!(
            reason.contains(expected),
            "{reason} should contain {expected}"
        );
        assert_eq!(snapshot(&fleet.root("ingest")), before);
    }
    // A precondition that holds lets the migration through.
    let (code, report) = fleet.migrate(plan(
        "ingest",
        "",
        "[[service.precondition]]\ntype = \"file_exists\"\npath = \"legacy.conf\"\n",
    ));
    assert_eq!(code, Some(0), "{report:#}");
}

#[test]
fn an_externally_supervised_service_is_migrated_and_rolled_back_through_its_commands() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start_external(nats.url(), "execution").unwrap();
    let pid_file = fleet.dir().join("execution.pid");
    let first_pid = std::fs::read_to_string(&pid_file).unwrap();
    let before = snapshot(&fleet.root("execution"));

    // A failing migration: restored, restarted by the external supervisor, healthy on legacy.
    let (_, report) = fleet.migrate(plan(
        "execution",
        "fail_health = true",
        "[[service.health]]\ntimeout_ms = 1000\n",
    ));
    assert_eq!(report["services"][0]["status"], "rolled_back", "{report:#}");
    assert_eq!(snapshot(&fleet.root("execution")), before);
    let (status, body) = fleet.health("execution").unwrap();
    assert!(
        status == 200 && body.contains("\"layout\":\"legacy\""),
        "{status} {body}"
    );

    let (code, report) = fleet.migrate(plan("execution", "", ""));
    assert_eq!(code, Some(0), "{report:#}");
    let measurements = &report["services"][0]["measurements"];
    assert!(
        measurements["rss_bytes_before"].as_u64().unwrap() > 0,
        "memory measured through pid_file: {report:#}"
    );
    assert!(
        measurements["startup_ms_after"].as_u64().is_some(),
        "{report:#}"
    );
    let new_pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_ne!(
        first_pid, new_pid,
        "the external supervisor restarted the service"
    );
    let (status, body) = fleet.health("execution").unwrap();
    assert!(
        status == 200 && body.contains("\"layout\":\"standard\""),
        "{status} {body}"
    );
}
