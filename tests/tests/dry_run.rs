//! Dry runs tell the truth: `flotilla migrate --dry-run` asks every agent for a read-only
//! preview (the migration's own precheck, then each step played in memory) and refuses what the
//! real run would refuse, with the same reason and exit code; `flotilla plan check` catches
//! offline what it can. Nothing changes: no file, no backup, no journal entry.

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_tests::faults::{command_json, new_id, publish_command, results_of};
use flotilla_tests::{Fleet, NatsServer, ROLES, Snapshot, json_stdout, repo_root, snapshot};
use serde_json::Value;

/// Every service root and agent state directory (journal, backups) of the fleet. The service's
/// own output, kept there too, is left out: it logs the health probe the precheck makes.
fn everything(fleet: &Fleet, roles: &[&str]) -> BTreeMap<String, Snapshot> {
    roles
        .iter()
        .flat_map(|role| {
            let mut state = snapshot(&fleet.dir().join("state").join(role));
            state.remove("service-output.log");
            [
                (format!("{role} root"), snapshot(&fleet.root(role))),
                (format!("{role} state"), state),
            ]
        })
        .collect()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The demo's secret of `role` (the fleet writes it into the agent's secrets directory).
fn secret_of(role: &str) -> String {
    format!("demo-{role}-key-123")
}

/// Each service's reason in a run or dry-run JSON report, by `service/instance`.
fn reasons(report: &Value) -> BTreeMap<String, String> {
    let targets: Vec<&Value> = match report.get("services") {
        Some(services) => services.as_array().unwrap().iter().collect(),
        None => report["waves"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|w| w["targets"].as_array().unwrap())
            .collect(),
    };
    targets
        .into_iter()
        .map(|t| {
            (
                format!(
                    "{}/{}",
                    t["service"].as_str().unwrap(),
                    t["instance"].as_str().unwrap()
                ),
                t["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn dry_run_json(fleet: &Fleet, plan: &Path) -> (Option<i32>, Value) {
    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--dry-run",
        "--output",
        "json",
    ]);
    (out.status.code(), json_stdout(&out))
}

fn real_run_json(fleet: &Fleet, plan: &Path) -> (Option<i32>, Value) {
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    (out.status.code(), json_stdout(&out))
}

/// On the demo fleet, a dry run of the demo plan shows each step's unified diff with secret
/// values masked, changes nothing at all (every root and state directory byte-identical, no run
/// recorded), and once the fleet is migrated, refuses a second run of the plan exactly as the
/// real run then fails.
#[test]
fn a_dry_run_of_the_demo_plan_shows_diffs_changes_nothing_and_refuses_a_rerun() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let plan = repo_root().join("deploy/demo/plan.toml");
    let before = everything(&fleet, &ROLES);

    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--dry-run"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    let port = fleet.port("inference");
    for expected in [
        "dry run of plan \"t006-standard-config\": nothing will change",
        "  inference/a: backup, write_file, write_file, delete, restart, validate (1 check(s), 1 functional)",
        "    step 1 write_file: create config/service.toml (mode 0644)",
        "      --- /dev/null",
        "      +++ b/config/service.toml",
        &format!("      +port = {port}"),
        "      +api_key = \"${secret:API_KEY}\"",
        "    step 2 write_file: create secrets/API_KEY (mode 0600)",
        "      +********",
        "    step 3 delete: delete legacy.conf (file)",
        "    would migrate (backup of ",
        "5 of 5 agent(s) would migrate; nothing was changed",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    let (code, report) = dry_run_json(&fleet, &plan);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["exit_code"], 0);
    let targets = report["waves"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{report:#}");
    for target in targets {
        assert_eq!(target["status"], "would_migrate", "{target:#}");
        let steps = target["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 3, "{target:#}");
        assert!(
            steps[0]["diff"]
                .as_str()
                .unwrap()
                .starts_with("--- /dev/null\n+++ b/config/service.toml\n")
        );
        assert_eq!(steps[2]["summary"], "delete legacy.conf (file)");
    }
    let json_text = report.to_string();
    for role in ROLES {
        let secret = secret_of(role);
        assert!(
            !shown.contains(&secret),
            "{role}'s secret in the text output"
        );
        assert!(
            !json_text.contains(&secret),
            "{role}'s secret in the JSON output"
        );
    }
    assert_eq!(
        everything(&fleet, &ROLES),
        before,
        "a dry run changed something"
    );
    let runs = json_stdout(&fleet.flotilla(&["runs", "--output", "json"]));
    assert_eq!(runs, serde_json::json!([]), "a dry run recorded a run");

    // Migrated, the fleet no longer has legacy.conf: the plan's delete step cannot apply.
    let (code, report) = real_run_json(&fleet, &plan);
    assert_eq!(code, Some(0), "{report:#}");
    let migrated = everything(&fleet, &ROLES);
    let (dry_code, dry) = dry_run_json(&fleet, &plan);
    assert_eq!(
        everything(&fleet, &ROLES),
        migrated,
        "a dry run changed something"
    );
    let (real_code, real) = real_run_json(&fleet, &plan);
    assert_eq!(dry_code, Some(1), "{dry:#}");
    assert_eq!(dry_code, real_code, "dry {dry:#}\nreal {real:#}");
    let expected = "apply: step 3 (delete): delete: legacy.conf does not exist";
    let dry_reasons = reasons(&dry);
    assert!(dry_reasons.values().all(|r| r == expected), "{dry:#}");
    assert_eq!(dry_reasons, reasons(&real), "dry {dry:#}\nreal {real:#}");
}

/// A plan with one step for the inference service.
fn one_step_plan(fleet: &Fleet, name: &str, step: &str) -> std::path::PathBuf {
    fleet.write_plan(
        &format!("{name}.toml"),
        &format!("name = \"{name}\"\ncommand_timeout = \"30s\"\n\n[[service]]\nname = \"inference\"\n\n[[service.step]]\n{step}\n"),
    )
}

/// Each reproduction of issue 14 — a path outside the root, a malformed placeholder, an
/// undefined variable, an unknown secret, a program off the allow-list — is refused by
/// `plan check` (offline) or by the dry run, with the real run's reason and exit code; the
/// service root is untouched throughout.
#[test]
fn what_the_real_run_refuses_the_dry_run_or_plan_check_refuses_alike() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before = snapshot(&fleet.root("inference"));

    let offline = [
        (
            "etc-passwd",
            "action = \"write_file\"\npath = \"/etc/passwd\"\ncontent = \"x\"",
            "line 9, key service[0].step[0].path: path \"/etc/passwd\" is absolute; step paths are relative to the service root",
        ),
        (
            "escape",
            "action = \"delete\"\npath = \"../x\"",
            "line 9, key service[0].step[0].path: path \"../x\" leaves the service root ('..')",
        ),
        (
            "malformed",
            "action = \"write_file\"\npath = \"a.toml\"\ncontent = \"port = ${var:port\"",
            "line 10, key service[0].step[0].content: unterminated placeholder starting at byte 7",
        ),
    ];
    for (name, step, reason) in offline {
        let plan = one_step_plan(&fleet, name, step);
        for args in [
            &["plan", "check", plan.to_str().unwrap()][..],
            &["migrate", plan.to_str().unwrap(), "--dry-run"],
            &["migrate", plan.to_str().unwrap()],
        ] {
            let out = fleet.flotilla(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name} {args:?}: {}",
                text(&out)
            );
            assert!(
                err.contains(reason),
                "{name} {args:?}: {reason:?} not in {err}"
            );
        }
        let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap(), "--output", "json"]);
        assert_eq!(out.status.code(), Some(2));
        let report = json_stdout(&out);
        assert_eq!(report["valid"], false, "{report:#}");
        assert!(
            report["error"].as_str().unwrap().contains(reason),
            "{report:#}"
        );
    }

    let at_the_agent = [
        (
            "undefined-var",
            "action = \"write_file\"\npath = \"a.toml\"\ncontent = \"x = ${var:nope}\"",
            "precheck: step 1 (write_file): variable \"nope\" is not defined in the agent's [vars]",
        ),
        (
            "unknown-secret",
            "action = \"write_file\"\npath = \"a.toml\"\ncontent = \"x = ${secret:NOPE}\"",
            "precheck: step 1 (write_file): secret \"NOPE\" is not available from the agent's secret sources",
        ),
        (
            "precondition",
            "action = \"restart\"\n\n[[service.precondition]]\ntype = \"file_exists\"\npath = \"nope.conf\"",
            "precheck: precondition: nope.conf does not exist",
        ),
        (
            "not-allowed",
            "action = \"run_command\"\nprogram = \"rm\"\nargs = [\"-rf\", \".\"]",
            "precheck: step 1 (run_command): run_command: rm is not on the agent's allow-list",
        ),
    ];
    for (name, step, reason) in at_the_agent {
        let plan = one_step_plan(&fleet, name, step);
        let out = fleet.flotilla(&["plan", "check", plan.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out));
        let (dry_code, dry) = dry_run_json(&fleet, &plan);
        assert_eq!(reasons(&dry)["inference/a"], reason, "{name}: {dry:#}");
        assert_eq!(
            dry["waves"][0]["targets"][0]["status"], "refused",
            "{dry:#}"
        );
        let shown = text(&fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--dry-run"]));
        assert!(
            shown.contains(&format!("    refused: {reason}")),
            "{name}: {shown}"
        );
        let (real_code, real) = real_run_json(&fleet, &plan);
        assert_eq!(reasons(&real)["inference/a"], reason, "{name}: {real:#}");
        assert_eq!(dry_code, Some(1), "{name}: {dry:#}");
        assert_eq!(dry_code, real_code, "{name}: {real:#}");
    }
    assert_eq!(snapshot(&fleet.root("inference")), before);
}

/// An agent refuses a command kind it does not know with a reason that names it: this is what
/// an agent older than dry runs answers to `preview`, and what the coordinator reports as
/// "predates dry runs".
#[test]
fn an_unknown_command_kind_is_refused_with_a_reason_that_names_it() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let (run_id, command_id) = (new_id(), new_id());
    let now = time::OffsetDateTime::now_utc();
    let command = command_json(
        "inference",
        &run_id,
        &command_id,
        now,
        now + time::Duration::minutes(1),
        serde_json::json!({"kind": "preview_v2", "steps": []}),
    );
    let key = fleet.signing_key();
    let payload = serde_json::to_vec(&command).unwrap();
    publish_command(
        fleet.nats_url(),
        "inference",
        payload,
        Some(&key),
        &command_id,
    )
    .unwrap();
    let results = results_of(
        fleet.nats_url(),
        &run_id,
        &command_id,
        1,
        std::time::Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(results.len(), 1, "no answer");
    assert_eq!(results[0]["outcome"], "refused");
    let reason = results[0]["reason"].as_str().unwrap();
    assert!(reason.contains("unknown variant `preview_v2`"), "{reason}");
}
