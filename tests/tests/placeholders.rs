//! `${var:…}` and the run variables work in every field the plan reference says they do,
//! through one expansion at the agent: a step's path, a precondition's path and the
//! cross-service stage's `config_files` are expanded with each agent's own vars, and the
//! consistency check reads the expanded files. A placeholder in a field that takes none is
//! refused by `plan check` and by the agent; a var that expands to a path outside the service
//! root is refused at precheck with nothing changed.

use flotilla_tests::faults::{command_json, new_id, publish_command, results_of};
use flotilla_tests::{Fleet, NatsServer, json_stdout, snapshot};
use serde_json::{Value, json};

/// Each role's own vars: a flavour that differs per service, the name of its legacy file, and
/// a "directory" that leaves the service root.
fn agent_vars(role: &str) -> Vec<(String, String)> {
    let flavour = if role == "ingest" { "blue" } else { "green" };
    [
        ("FLOTILLA_VARS__FLAVOUR", flavour),
        ("FLOTILLA_VARS__LEGACY", "legacy.conf"),
        ("FLOTILLA_VARS__UP", "../outside"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn start(roles: &[&str]) -> (NatsServer, Fleet) {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start_with(nats.url(), roles, &agent_vars, Vec::new()).unwrap();
    (nats, fleet)
}

/// A plan for ingest and training whose precondition, step path and `config_files` name each
/// service's own file through placeholders; `content` is what the step writes there.
fn per_service_plan(content: &str) -> String {
    format!(
        r#"name = "placeholders"
[[precondition]]
type = "file_exists"
path = "${{var:legacy}}"
[[step]]
action = "write_file"
path = "config/${{service:name}}-${{var:flavour}}.toml"
content = """
{content}"""
[[service]]
name = "ingest"
[[service]]
name = "training"
[cross_service]
config_files = ["config/${{service:name}}-${{var:flavour}}.toml"]
required_keys = ["service.name", "server.port"]
"#
    )
}

fn migrate(fleet: &Fleet, name: &str, plan: &str) -> (Option<i32>, Value) {
    let plan = fleet.write_plan(name, plan);
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    (out.status.code(), json_stdout(&out))
}

fn target<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} not in {report:#}"))
}

/// Each agent writes, checks and inspects the file its own vars name: ingest's
/// `config/ingest-blue.toml`, training's `config/training-green.toml`.
#[test]
fn step_and_precondition_paths_and_config_files_are_expanded_with_each_agents_vars() {
    let (_nats, fleet) = start(&["ingest", "training"]);
    let content = "[service]\nname = \"${service:name}\"\n[server]\nport = ${var:port}\n";
    let (code, report) = migrate(&fleet, "good.toml", &per_service_plan(content));
    assert_eq!(code, Some(0), "{report:#}");
    for (role, file) in [
        ("ingest", "config/ingest-blue.toml"),
        ("training", "config/training-green.toml"),
    ] {
        let written = std::fs::read_to_string(fleet.root(role).join(file)).unwrap();
        assert!(written.contains(&format!("name = \"{role}\"")), "{written}");
        let inspected = report["cross_service"]["services"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["service"] == role)
            .unwrap_or_else(|| panic!("{role} not inspected: {report:#}"));
        let shape = &inspected["config"][0];
        assert_eq!(shape["path"], file, "{inspected:#}");
        assert_eq!(shape["exists"], true, "{inspected:#}");
        let keys = shape["keys"].to_string();
        assert!(keys.contains("server.port"), "{inspected:#}");
    }
}

/// The consistency check reads the expanded file: when that file lacks a required key, the
/// stage fails on it by its expanded name, and the fleet is rolled back.
#[test]
fn the_consistency_check_fails_on_the_expanded_file_when_it_is_wrong() {
    let (_nats, fleet) = start(&["ingest", "training"]);
    let before = [
        snapshot(&fleet.root("ingest")),
        snapshot(&fleet.root("training")),
    ];
    let (code, report) = migrate(
        &fleet,
        "wrong.toml",
        &per_service_plan("[service]\nname = \"${service:name}\"\n"),
    );
    assert_eq!(code, Some(1), "{report:#}");
    let problems = report["cross_service"]["problems"].to_string();
    for expected in [
        "ingest/a: config/ingest-blue.toml lacks required key(s) [\\\"server.port\\\"]",
        "training/a: config/training-green.toml lacks required key(s)",
    ] {
        assert!(problems.contains(expected), "{expected}\n{problems}");
    }
    assert_eq!(snapshot(&fleet.root("ingest")), before[0]);
    assert_eq!(snapshot(&fleet.root("training")), before[1]);
}

/// `plan check` refuses a placeholder in a field that takes none at its line and key; the
/// agent refuses the same command sent past the check, at precheck, with nothing changed.
#[test]
fn a_placeholder_in_a_field_that_takes_none_is_refused_by_plan_check_and_by_the_agent() {
    let (_nats, fleet) = start(&["training"]);
    let plan = fleet.write_plan(
        "program.toml",
        "name = \"program\"\n[[service]]\nname = \"training\"\n[[service.step]]\n\
         action = \"run_command\"\nprogram = \"${var:tool}\"\n",
    );
    let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "line 6, key service[0].step[0].program: ${var:tool} is not allowed in program: \
             program takes no placeholder"
        ),
        "{stderr}"
    );

    let before = snapshot(&fleet.root("training"));
    let action = json!({
        "kind": "migrate",
        "steps": [
            {"action": "write_file", "path": "marker.txt", "content": "changed"},
            {"action": "run_command", "program": "${var:tool}", "args": ["-c", "true"]},
        ],
    });
    let reason = send(&fleet, "training", action);
    assert_eq!(
        reason,
        "precheck: step 2 (run_command): ${var:tool} is not allowed in program: program takes \
         no placeholder, it is used as written"
    );
    assert_eq!(snapshot(&fleet.root("training")), before);
}

/// A var that expands to `../outside` passes `plan check` (it is fine as written) and is refused
/// at precheck by the agent, naming the field, with nothing changed inside the root or outside.
#[test]
fn a_var_expanding_to_an_escaping_path_is_refused_at_precheck_with_nothing_changed() {
    let (_nats, fleet) = start(&["training"]);
    let before = snapshot(&fleet.root("training"));
    let text = "name = \"escape\"\n[[service]]\nname = \"training\"\n[[service.step]]\n\
                action = \"write_file\"\npath = \"marker.txt\"\ncontent = \"changed\"\n\
                [[service.step]]\naction = \"write_file\"\npath = \"${var:up}.toml\"\n\
                content = \"escaped\"\n";
    let plan = fleet.write_plan("escape.toml", text);
    let check = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let (code, report) = migrate(&fleet, "escape.toml", text);
    assert_eq!(code, Some(1), "{report:#}");
    let training = target(&report, "training");
    assert_eq!(training["status"], "refused", "{training:#}");
    assert_eq!(
        training["reason"],
        "precheck: step 2 (write_file): path: once expanded, path \"../outside.toml\" leaves \
         the service root ('..')"
    );
    assert_eq!(snapshot(&fleet.root("training")), before);
    let outside = fleet
        .root("training")
        .parent()
        .unwrap()
        .join("outside.toml");
    assert!(!outside.exists(), "{} was written", outside.display());
}

/// Publishes `action` to `service`'s agent as a signed command and returns the reason of its
/// result, which must be a refusal.
fn send(fleet: &Fleet, service: &str, action: Value) -> String {
    let (run_id, command_id) = (new_id(), new_id());
    let now = time::OffsetDateTime::now_utc();
    let command = command_json(
        service,
        &run_id,
        &command_id,
        now,
        now + time::Duration::minutes(1),
        action,
    );
    let payload = serde_json::to_vec(&command).unwrap();
    let key = fleet.signing_key();
    publish_command(fleet.nats_url(), service, payload, Some(&key), &command_id).unwrap();
    let results = results_of(
        fleet.nats_url(),
        &run_id,
        &command_id,
        1,
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(results.len(), 1, "no answer");
    assert_eq!(results[0]["outcome"], "refused", "{:#}", results[0]);
    results[0]["reason"].as_str().unwrap().to_owned()
}
