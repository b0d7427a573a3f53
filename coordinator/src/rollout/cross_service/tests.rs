//! The communication verdict: what discovery found, against the migrated members.

use flotilla_schemas::{
    CheckVerdict, ConfigShape, Inspection, InstanceId, Presence, RunResult, ServiceName,
};

use super::{answer_problems, communication_endpoints};
use crate::plan::ServiceInspect;

fn member(service: &str, instance: &str) -> (ServiceName, InstanceId) {
    (
        ServiceName::parse(service).unwrap(),
        InstanceId::parse(instance).unwrap(),
    )
}

fn agent(service: &str, instance: &str, endpoint: Option<&str>) -> Presence {
    serde_json::from_value(serde_json::json!({
        "schema": "flotilla.presence.v1",
        "service": service,
        "instance": instance,
        "version": "test",
        "accepts": [],
        "host": "h",
        "state": "idle",
        "endpoint": endpoint,
        "started_at": "2026-01-01T00:00:00Z",
    }))
    .unwrap()
}

#[test]
fn a_discovery_failure_fails_the_communication_check() {
    let migrated = [member("api", "a1"), member("web", "w1")];
    let mut problems = Vec::new();
    let endpoints = communication_endpoints(
        Err("cannot publish the presence request".into()),
        &migrated,
        &mut problems,
    );
    assert!(endpoints.is_empty());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("discovery") && problems[0].contains("nothing was checked"),
        "{problems:?}"
    );
}

#[test]
fn a_migrated_member_that_did_not_answer_discovery_is_a_problem() {
    let migrated = [member("api", "a1"), member("web", "w1")];
    let mut problems = Vec::new();
    let endpoints = communication_endpoints(
        Ok(vec![agent("api", "a1", Some("http://127.0.0.1:1/health"))]),
        &migrated,
        &mut problems,
    );
    assert_eq!(
        endpoints,
        vec![(
            ServiceName::parse("api").unwrap(),
            "http://127.0.0.1:1/health".to_owned()
        )]
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("web/w1"), "{problems:?}");
}

#[test]
fn every_migrated_endpoint_found_is_no_problem_and_others_are_left_out() {
    let migrated = [member("api", "a1"), member("web", "w1")];
    let mut problems = Vec::new();
    let endpoints = communication_endpoints(
        Ok(vec![
            agent("api", "a1", Some("http://a/health")),
            agent("web", "w1", Some("http://w/health")),
            agent("db", "d1", Some("http://d/health")),
        ]),
        &migrated,
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let services: Vec<&str> = endpoints.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(services, ["api", "web"]);
}

fn answer(outcome: &str, reason: Option<&str>) -> RunResult {
    serde_json::from_value(serde_json::json!({
        "schema": "flotilla.result.v1",
        "run_id": flotilla_schemas::RunId::new(),
        "command_id": flotilla_schemas::CommandId::new(),
        "service": "api",
        "instance": "a1",
        "at": "2026-01-01T00:00:00Z",
        "outcome": outcome,
        "reason": reason,
    }))
    .unwrap()
}

fn shape(path: &str, exists: bool, keys: &[&str], secrets: &[&str]) -> ConfigShape {
    ConfigShape {
        path: path.into(),
        exists,
        format: "toml".into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        fingerprint: String::new(),
        literal_secrets: secrets.iter().map(|k| k.to_string()).collect(),
        secret_outside_keys: false,
    }
}

/// The stage of a service with `files` (the first its standard configuration).
fn spec(files: &[&str], required: &[&str]) -> ServiceInspect {
    ServiceInspect {
        config_files: files.iter().map(|f| f.to_string()).collect(),
        has_standard: !files.is_empty(),
        required_keys: required.iter().map(|k| k.to_string()).collect(),
        ..ServiceInspect::default()
    }
}

#[test]
fn a_clean_answer_has_no_problem() {
    let inspection = Inspection {
        checks: vec![CheckVerdict {
            kind: "http".into(),
            passed: true,
            detail: "200".into(),
        }],
        config: vec![shape("service.toml", true, &["server.port"], &[])],
        settings: Vec::new(),
        gates: Vec::new(),
    };
    let problems = answer_problems(
        "api/a1",
        &answer("succeeded", None),
        &inspection,
        &spec(&["service.toml"], &["server.port"]),
    );
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn every_kind_of_problem_in_an_answer_is_named() {
    let inspection = Inspection {
        checks: vec![CheckVerdict {
            kind: "http".into(),
            passed: false,
            detail: "connection refused".into(),
        }],
        config: vec![
            shape("service.toml", true, &["server.port"], &[]),
            shape("legacy.conf", true, &[], &["api_key"]),
        ],
        settings: Vec::new(),
        gates: Vec::new(),
    };
    let problems = answer_problems(
        "api/a1",
        &answer("refused", Some("busy")),
        &inspection,
        &spec(
            &["service.toml", "legacy.conf"],
            &["server.port", "logging.format"],
        ),
    );
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems[0].contains("http check failed: connection refused"));
    assert!(
        problems[1].contains("lacks required key(s)") && problems[1].contains("logging.format")
    );
    assert!(problems[2].contains("legacy.conf holds a literal secret in api_key"));
    assert_eq!(problems[3], "api/a1: busy");
    let missing = Inspection {
        checks: Vec::new(),
        config: vec![shape("service.toml", false, &[], &[])],
        settings: Vec::new(),
        gates: Vec::new(),
    };
    let problems = answer_problems(
        "api/a1",
        &answer("succeeded", None),
        &missing,
        &spec(&["service.toml"], &[]),
    );
    assert_eq!(problems, ["api/a1: service.toml does not exist"]);
}

#[test]
fn a_job_that_answered_without_an_endpoint_is_not_a_problem() {
    let migrated = [member("api", "a1"), member("batch", "b1")];
    let mut problems = Vec::new();
    let endpoints = communication_endpoints(
        Ok(vec![
            agent("api", "a1", Some("http://a/health")),
            agent("batch", "b1", None),
        ]),
        &migrated,
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let services: Vec<&str> = endpoints.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(services, ["api"]);
}
