//! End to end: the real `flotilla` and `flotilla-agent` binaries, real sample services, a real
//! nats-server.

use std::os::unix::fs::PermissionsExt;

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, NatsServer, ROLES, repo_root, snapshot, standard_config_step};

#[test]
fn the_demo_plan_moves_all_five_services_to_the_standard_layout() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let (code, report) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["status"], "succeeded");
    assert_eq!(report["finalized"], true);
    let run_id = report["run_id"].as_str().unwrap();
    // T006 phase 3: every service reached the four others; the unified keys are everywhere and
    // no file holds a secret in clear.
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], true, "{cross:#}");
    for service in cross["services"].as_array().unwrap() {
        let checks = service["checks"].as_array().unwrap();
        assert_eq!(checks.len(), 4, "{service:#}");
        assert!(checks.iter().all(|c| c["passed"] == true), "{service:#}");
        assert_eq!(service["config"][0]["format"], "standard", "{service:#}");
        assert_eq!(
            service["config"][1]["exists"], false,
            "legacy.conf is gone: {service:#}"
        );
    }
    for role in ROLES {
        let entry = service(&report, role);
        assert_eq!(entry["status"], "succeeded", "{entry:#}");
        assert_eq!(entry["instance"], "a");
        let root = fleet.root(role);
        assert!(
            !root.join("legacy.conf").exists(),
            "{role}: legacy.conf left behind"
        );
        let config = std::fs::read_to_string(root.join("config/service.toml")).unwrap();
        assert!(config.contains(&format!("name = \"{role}\"")), "{config}");
        assert!(
            config.contains("api_key = \"${secret:API_KEY}\""),
            "the config must hold the placeholder, not the secret:\n{config}"
        );
        let secret = root.join("secrets/API_KEY");
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            format!("demo-{role}-key-123")
        );
        assert_eq!(
            std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (status, body) = fleet.health(role).expect("service answers");
        assert_eq!(status, 200);
        assert!(body.contains("\"layout\":\"standard\""), "{role}: {body}");
        // The agent's checks carried the run's correlation ID into the service's own log.
        let log = std::fs::read_to_string(fleet.service_log(role)).unwrap();
        assert!(
            log.contains(run_id),
            "{role}'s log does not mention run {run_id}"
        );
        // Finalized: the backup is gone.
        let backups = fleet.dir().join("state").join(role).join("backups");
        assert_eq!(
            std::fs::read_dir(&backups).unwrap().count(),
            0,
            "{role}: backup kept after finalize"
        );
    }
}

fn break_inference_plan() -> String {
    format!(
        "name = \"breaks-inference\"\ncommand_timeout = \"30s\"\n\n[[service]]\nname = \"inference\"\n{}{}",
        standard_config_step("inference", "fail_health = true"),
        r#"[[service.step]]
action = "delete"
path = "legacy.conf"
[[service.health]]
timeout_ms = 1500

[[service]]
name = "ingest"
[[service.step]]
action = "replace_text"
path = "legacy.conf"
find = "batch_size"
replace = "batch_size_renamed"
"#
    )
}

#[test]
fn a_service_that_fails_validation_is_restored_byte_identical_and_the_run_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "ingest"]).unwrap();
    let before_inference = snapshot(&fleet.root("inference"));
    let before_ingest = snapshot(&fleet.root("ingest"));
    let (code, report) = fleet.migrate(break_inference_plan());
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["status"], "failed");
    assert_eq!(report["finalized"], false);

    let inference = service(&report, "inference");
    assert_eq!(inference["status"], "rolled_back", "{inference:#}");
    let reason = inference["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("validate:") && reason.contains("answered 503, expected 200"),
        "{reason}"
    );
    let phases: Vec<&str> = inference["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(
        phases,
        [
            "precheck", "backup", "apply", "restart", "validate", "rollback"
        ]
    );

    // The other service had succeeded; the default on_failure rolled it back as well.
    let ingest = service(&report, "ingest");
    assert_eq!(ingest["status"], "rolled_back", "{ingest:#}");

    assert_eq!(snapshot(&fleet.root("inference")), before_inference);
    assert_eq!(snapshot(&fleet.root("ingest")), before_ingest);
    for role in ["inference", "ingest"] {
        let (status, body) = fleet.health(role).expect("service answers after rollback");
        assert_eq!(status, 200, "{role}: {body}");
        assert!(body.contains("\"layout\":\"legacy\""), "{role}: {body}");
    }
}

#[test]
fn a_refused_step_changes_nothing_and_says_why() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["training"]).unwrap();
    let before = snapshot(&fleet.root("training"));
    // A path that leaves the root is refused before anything is sent (exit 2, bad input), at
    // its line and key; the agent would refuse it too.
    let escape = fleet.write_plan(
        "escape.toml",
        "name = \"refused\"\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"write_file\"\npath = \"../escape\"\ncontent = \"x\"\n",
    );
    let out = fleet.flotilla(&["migrate", escape.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "line 6, key service[0].step[0].path: path \"../escape\" leaves the service root"
        ),
        "{err}"
    );
    let cases = [
        (
            "run_command",
            "program = \"rm\"\nargs = [\"-rf\", \"/\"]",
            "not on the agent's allow-list",
        ),
        (
            "write_file",
            "path = \"x\"\ncontent = \"${secret:NO_SUCH_SECRET}\"",
            "secret \\\"NO_SUCH_SECRET\\\" is not available",
        ),
    ];
    for (action, fields, expected) in cases {
        let (code, report) = fleet.migrate(format!("name = \"refused\"\n[[service]]\nname = \"training\"\n[[service.step]]\naction = \"{action}\"\n{fields}\n"));
        assert_eq!(code, Some(1), "{report:#}");
        let training = service(&report, "training");
        assert_eq!(training["status"], "refused");
        let reason = training["reason"].to_string();
        assert!(
            reason.contains(expected),
            "{reason} should contain {expected}"
        );
        assert_eq!(
            snapshot(&fleet.root("training")),
            before,
            "{action} changed the tree"
        );
    }
}

#[test]
fn an_agent_that_does_not_answer_in_time_is_reported_timed_out() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["execution"]).unwrap();
    let plan = fleet.write_plan(
        "slow.toml",
        "name = \"slow\"\ncommand_timeout = \"2s\"\n[[service]]\nname = \"execution\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 4\"]\n",
    );
    let started = std::time::Instant::now();
    let (code, report) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(6), "{report:#}");
    assert_eq!(service(&report, "execution")["status"], "timed_out");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the coordinator hung"
    );
}

#[test]
fn agents_lists_every_live_agent_with_its_fields() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "preprocess"]).unwrap();
    let agents = fleet.agents().unwrap();
    let names: Vec<&str> = agents
        .iter()
        .map(|a| a["service"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["inference", "preprocess"]);
    for agent in &agents {
        for field in ["service", "instance", "version", "host", "state"] {
            assert!(agent.get(field).is_some(), "{field} missing in {agent}");
        }
        assert_eq!(agent["state"], "idle");
        assert!(agent["service_pid"].as_u64().is_some());
    }
}

#[test]
fn a_literal_secret_left_in_a_config_file_fails_the_cross_service_check_and_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference", "training"]).unwrap();
    let before = [
        snapshot(&fleet.root("inference")),
        snapshot(&fleet.root("training")),
    ];
    // The demo plan, but legacy.conf (with its api_key in clear) is left behind.
    let demo = std::fs::read_to_string(repo_root().join("deploy/demo/plan.toml")).unwrap();
    let keep_legacy = demo
        .replace(
            "[[step]]\naction = \"delete\"\npath = \"legacy.conf\"\n",
            "",
        )
        .replace("[[service]]\nname = \"ingest\"\n", "")
        .replace("[[service]]\nname = \"execution\"\n", "")
        .replace("[[service]]\nname = \"preprocess\"\n", "");
    assert_ne!(keep_legacy, demo);
    let (code, report) = fleet.migrate(&keep_legacy);
    assert_eq!(code, Some(1), "{report:#}");
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], false, "{cross:#}");
    let problems = cross["problems"].to_string();
    assert!(
        problems.contains("legacy.conf holds a literal secret") && problems.contains("api_key"),
        "{problems}"
    );
    assert!(
        !problems.contains("demo-inference-key"),
        "the secret's value must not be reported: {problems}"
    );
    assert_eq!(snapshot(&fleet.root("inference")), before[0]);
    assert_eq!(snapshot(&fleet.root("training")), before[1]);
}
