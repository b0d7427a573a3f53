//! Targeting by label: agents announce the labels of their configuration, plan waves select
//! agents by them (a canary first), `flotilla migrate -l` restricts a run to the agents it
//! matches, and `max_parallel` may be a share of a wave's agents. A selector that matches
//! nothing stops the run before anything changes (exit 3); a malformed one is a usage error
//! naming the column (exit 2).

use std::collections::BTreeMap;
use std::path::Path;

use flotilla_tests::{Fleet, NatsServer, Plan, Service, Snapshot, json_stdout, snapshot};
use serde_json::{Value, json};

/// The environment that makes an agent `service/instance` with `labels`.
fn agent_env(service: &str, instance: &str, labels: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("FLOTILLA_SERVICE__NAME".to_owned(), service.to_owned()),
        ("FLOTILLA_AGENT__INSTANCE".to_owned(), instance.to_owned()),
    ];
    for (key, value) in labels {
        env.push((
            format!("FLOTILLA_AGENT__LABELS__{}", key.to_uppercase()),
            (*value).to_owned(),
        ));
    }
    env
}

fn roots(fleet: &Fleet, roles: &[&str]) -> BTreeMap<String, Snapshot> {
    roles
        .iter()
        .map(|role| ((*role).to_owned(), snapshot(&fleet.root(role))))
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The plan of the two `ingest` agents: a canary wave by label, then the rest. The canary's step
/// waits a second before it logs its instance, so that a wave order that let `b` start at the
/// same time would log `b` first.
fn canary_plan(log: &Path, selector: &str) -> Plan {
    let script = format!(
        "test \"$0\" = a && sleep 1; echo \"$0\" >> {}",
        log.display()
    );
    Plan::new("canary-by-label")
        .raw(&format!(
            "[[wave]]\nname = \"canary\"\nselector = \"{selector}\""
        ))
        .wave("rest", &[])
        .service(Service::new("ingest").run("sh", &["-c", &script, "${service:instance}"]))
}

/// Two instances of `ingest`, one labelled `tier=canary`: `flotilla agents` shows the labels,
/// the plan check and the dry run show which agents the canary's selector matched, selectors
/// that match nothing or do not parse change nothing, and the run migrates the canary alone in
/// the first wave, then the other, as the run record says.
#[test]
fn a_canary_wave_selected_by_label_runs_first_and_the_dry_run_shows_its_agents() {
    let nats = NatsServer::start().unwrap();
    let env = |role: &str| match role {
        "ingest" => agent_env("ingest", "a", &[("tier", "canary"), ("region", "eu")]),
        _ => agent_env("ingest", "b", &[("tier", "stable")]),
    };
    let roles = ["ingest", "inference"];
    let fleet = Fleet::start_with(nats.url(), &roles, &env, Vec::new()).unwrap();

    let agents = json_stdout(&fleet.flotilla(&["agents", "--output", "json"]));
    let labels: BTreeMap<String, Value> = agents
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let name = format!(
                "{}/{}",
                a["service"].as_str().unwrap(),
                a["instance"].as_str().unwrap()
            );
            (name, a["labels"].clone())
        })
        .collect();
    assert_eq!(
        labels["ingest/a"],
        json!({"region": "eu", "tier": "canary"})
    );
    assert_eq!(labels["ingest/b"], json!({"tier": "stable"}));
    let text = String::from_utf8_lossy(&fleet.flotilla(&["agents"]).stdout).into_owned();
    assert!(
        text.contains("LABELS") && text.contains("region=eu,tier=canary"),
        "{text}"
    );
    // `flotilla agents -l` lists what a selector matches, and says when it matches none.
    let canaries =
        json_stdout(&fleet.flotilla(&["agents", "-l", "tier=canary", "--output", "json"]));
    let instances: Vec<&str> = canaries
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["a"], "{canaries:#}");
    let none = fleet.flotilla(&["agents", "-l", "region=mars"]);
    assert_eq!(none.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("none matching \"region=mars\""),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );

    let log = fleet.dir().join("order.log");
    let plan = fleet.write_plan("canary.toml", &canary_plan(&log, "tier=canary").to_string());
    let plan_arg = plan.to_str().unwrap();
    let before = roots(&fleet, &roles);

    let check = fleet.flotilla(&["plan", "check", plan_arg]);
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        shown.contains("wave 1 \"canary\" (all at a time): the agents that match \"tier=canary\""),
        "{shown}"
    );

    let dry = fleet.flotilla(&["migrate", plan_arg, "--dry-run"]);
    let dry_text = String::from_utf8_lossy(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{dry_text}{}", stderr(&dry));
    assert!(
        dry_text.contains("selector \"tier=canary\" matched: ingest/a\n"),
        "{dry_text}"
    );
    let dry = json_stdout(&fleet.flotilla(&["migrate", plan_arg, "--dry-run", "--output", "json"]));
    assert_eq!(dry["waves"][0]["selector"], "tier=canary");
    let instances = |w: &Value| -> Vec<String> {
        w["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["instance"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(instances(&dry["waves"][0]), ["a"]);
    assert_eq!(instances(&dry["waves"][1]), ["b"]);

    // `--limit` is `-l`; `service` and `instance` select as labels.
    let limited = fleet.flotilla(&[
        "migrate",
        plan_arg,
        "--dry-run",
        "--output",
        "json",
        "--limit",
        "service=ingest",
    ]);
    assert_eq!(limited.status.code(), Some(0), "{}", stderr(&limited));
    assert_eq!(json_stdout(&limited)["waves"][1]["limit"], "service=ingest");
    let out = fleet.flotilla(&["migrate", plan_arg, "--dry-run", "--limit", "instance=b"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wave \"canary\": its selector \"tier=canary\" matches none of the 1 agent(s) of this plan's services that \"instance=b\" selects"),
        "{}",
        stderr(&out)
    );

    let nowhere = fleet.write_plan("nowhere.toml", &canary_plan(&log, "tier=nope").to_string());
    let out = fleet.flotilla(&["migrate", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wave \"canary\": its selector \"tier=nope\" matches none of the 2 agent(s) of this plan's services"),
        "{}",
        stderr(&out)
    );
    let out = fleet.flotilla(&["migrate", plan_arg, "-l", "region=mars"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the selector \"region=mars\" matches none of the 2 live agent(s)"),
        "{}",
        stderr(&out)
    );
    let out = fleet.flotilla(&["migrate", plan_arg, "-l", "region in (eu"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("at column 14: expected ',' or ')' in the list of values"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        roots(&fleet, &roles),
        before,
        "a dry run or a refused run changed a file"
    );
    assert!(lines(&log).is_empty());

    let (code, report) = fleet.migrate_file(&plan, &[]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(lines(&log), ["a", "b"], "the canary did not finish first");
    let waves: Vec<(Value, Value, Value)> = report["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["name"].clone(),
                w["services"].clone(),
                w["selector"].clone(),
            )
        })
        .collect();
    assert_eq!(
        waves,
        [
            (json!("canary"), json!(["ingest/a"]), json!("tier=canary")),
            (json!("rest"), json!(["ingest/b"]), Value::Null),
        ]
    );
    let run = report["run_id"].as_str().unwrap();
    let markdown = fleet.flotilla(&["report", run, "--format", "md"]);
    let markdown = String::from_utf8_lossy(&markdown.stdout);
    assert!(
        markdown.contains("| 1 | canary | all | done | ingest/a (selector `tier=canary`) |"),
        "{markdown}"
    );
}

/// `-l region=eu` migrates the agents labelled `region=eu` and no other (the `us` agent's files
/// are untouched), and `max_parallel = "50%"` of those two lets one migrate at a time.
#[test]
fn a_selector_on_the_command_line_restricts_the_run_and_a_share_caps_the_wave() {
    let nats = NatsServer::start().unwrap();
    let env = |role: &str| match role {
        "inference" => agent_env("inference", "a", &[("region", "us")]),
        other => agent_env(other, "a", &[("region", "eu")]),
    };
    let roles = ["ingest", "inference", "preprocess"];
    let fleet = Fleet::start_with(nats.url(), &roles, &env, Vec::new()).unwrap();
    let log = fleet.dir().join("parallel.log");
    let script = format!(
        "echo \"start $0\" >> {log}; sleep 0.5; echo \"end $0\" >> {log}",
        log = log.display()
    );
    let mut plan = Plan::new("eu-only").raw("max_parallel = \"50%\"");
    for role in roles {
        plan = plan.service(
            Service::new(role)
                .run("sh", &["-c", &script, "${service:name}"])
                .write_file("migrated.txt", "yes"),
        );
    }
    let untouched = snapshot(&fleet.root("inference"));

    let (code, report) = fleet.migrate_with(plan, &["-l", "region=eu"]);
    assert_eq!(code, Some(0), "{report:#}");
    let wave = &report["waves"][0];
    assert_eq!(wave["services"], json!(["ingest/a", "preprocess/a"]));
    assert_eq!(wave["limit"], "region=eu");
    assert_eq!(wave["max_parallel"], 1, "50% of 2 agents");
    assert_eq!(
        lines(&log),
        [
            "start ingest",
            "end ingest",
            "start preprocess",
            "end preprocess"
        ],
        "the two migrated at once"
    );
    for role in ["ingest", "preprocess"] {
        assert!(fleet.root(role).join("migrated.txt").exists(), "{role}");
    }
    assert_eq!(snapshot(&fleet.root("inference")), untouched);
}
