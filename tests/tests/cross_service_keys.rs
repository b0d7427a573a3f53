//! Cross-service checks per service (issue 16, item 6), on two services of another team
//! (`tests/fixtures/relay_service.py`) that keep one setting in different files, formats and
//! names: `ingest` in `config/ingest.toml` as `db.url`, `preprocess` in `settings.env` as
//! `DATABASE_URL`. Each also holds the resolved API key where its standard says
//! (`secrets.api_key`, `API_TOKEN`). The consistency check passes when the two agree and rolls
//! the fleet back when they do not; a secret that leaked into another key fails it, and the
//! secret shows nowhere.

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, NatsServer, free_port, json_stdout, repo_root};
use serde_json::Value;

/// The API key both agents resolve: quotes, so that its written forms differ from its value.
const SECRET: &str = "Zq7\"leak-canary\"91";

const DB: &str = "postgres://db.internal:5432/fleet";

fn start(nats: &NatsServer) -> Fleet {
    let script = repo_root().join("tests/fixtures/relay_service.py");
    let command = ["python3", script.to_str().unwrap()];
    let env = [("FLOTILLA_SECRET_API_KEY", SECRET)];
    let mut fleet = Fleet::empty(nats.url(), Vec::new()).unwrap();
    let out = fleet.flotilla(&["setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["ingest", "preprocess"] {
        let port = free_port();
        let conf = format!("version=1\nport={port}\n");
        fleet
            .add_foreign_with_env(name, &command, port, &[("relay.conf", &conf)], &env)
            .unwrap();
    }
    fleet
}

/// The plan: `ingest` writes its TOML, `preprocess` its `.env` (with `extra_env` lines), each
/// placing the fleet's `database_url` setting and its secret key in its own file.
fn plan(fleet: &Fleet, ingest_db: &str, preprocess_db: &str, extra_env: &str) -> String {
    let text = format!(
        r#"name = "cross-service-keys"
[gates]
startup_max_increase_pct = 1000.0
[[wave]]
name = "all"

[cross_service]
config_files = ["config/service.toml"]
required_keys = ["db.url"]
secret_keys = ["secrets.api_key"]
[cross_service.settings]
database_url = "db.url"

[[service]]
name = "ingest"
[[service.step]]
action = "write_file"
path = "config/ingest.toml"
content = """
[db]
url = "{ingest_db}"
[secrets]
api_key = "${{secret:API_KEY}}"
"""
[service.cross_service]
config_files = ["config/ingest.toml"]

[[service]]
name = "preprocess"
[[service.step]]
action = "write_file"
path = "settings.env"
content = """
DATABASE_URL={preprocess_db}
API_TOKEN=${{secret:API_KEY}}
{extra_env}"""
[service.cross_service]
config_files = ["settings.env"]
required_keys = ["DATABASE_URL"]
secret_keys = ["API_TOKEN"]
settings = {{ database_url = "DATABASE_URL" }}
"#
    );
    let path = fleet.write_plan("keys.toml", &text);
    let out = fleet.flotilla(&["plan", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_str().unwrap().to_owned()
}

fn migrate(fleet: &Fleet, plan: &str) -> (std::process::Output, Value) {
    let out = fleet.flotilla(&["migrate", plan, "--output", "json"]);
    let report = json_stdout(&out);
    (out, report)
}

/// Both services are back where they started: neither file the plan wrote is left.
fn assert_rolled_back(fleet: &Fleet, report: &Value) {
    for (name, file) in [
        ("ingest", "config/ingest.toml"),
        ("preprocess", "settings.env"),
    ] {
        assert_eq!(service(report, name)["status"], "rolled_back", "{report:#}");
        assert!(
            !fleet.root(name).join(file).exists(),
            "{name}: {file} is left"
        );
    }
}

/// Nothing the run printed or recorded shows the secret, in any written form.
fn assert_secret_not_shown(fleet: &Fleet, out: &std::process::Output, run_id: &str) {
    let forms = [
        SECRET.to_owned(),
        SECRET.replace('"', "\\\""),
        "leak-canary".to_owned(),
    ];
    let report = fleet.flotilla(&["report", run_id, "--output", "json"]);
    let status = fleet.flotilla(&["status", run_id]);
    let mut shown = vec![
        (
            "migrate stdout",
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ),
        (
            "migrate stderr",
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        (
            "report",
            String::from_utf8_lossy(&report.stdout).into_owned(),
        ),
        (
            "status",
            String::from_utf8_lossy(&status.stdout).into_owned(),
        ),
    ];
    for name in ["ingest", "preprocess"] {
        let log = std::fs::read_to_string(fleet.agent_log(name)).unwrap_or_default();
        shown.push(("agent log", log));
    }
    for (what, text) in shown {
        for form in &forms {
            assert!(
                !text.contains(form.as_str()),
                "{what} shows the secret: {text}"
            );
        }
    }
}

#[test]
fn one_setting_in_two_formats_and_names_agrees_and_declared_secret_keys_pass() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats);
    let plan = plan(&fleet, DB, DB, "");
    let (out, report) = migrate(&fleet, &plan);
    assert_eq!(report["status"], "succeeded", "{report:#}");
    assert_eq!(out.status.code(), Some(0));
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], true, "{cross:#}");
    // Each agent read its own file and key, and the two digests are one.
    let digests: Vec<(&str, &str, &str)> = cross["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let setting = &s["settings"][0];
            assert_eq!(setting["name"], "database_url", "{s:#}");
            assert_eq!(setting["found"], true, "{s:#}");
            (
                setting["file"].as_str().unwrap(),
                setting["key"].as_str().unwrap(),
                setting["digest"].as_str().unwrap(),
            )
        })
        .collect();
    let mut places: Vec<(&str, &str)> = digests.iter().map(|(f, k, _)| (*f, *k)).collect();
    places.sort();
    assert_eq!(
        places,
        [
            ("config/ingest.toml", "db.url"),
            ("settings.env", "DATABASE_URL")
        ]
    );
    assert_eq!(digests[0].2, digests[1].2, "{cross:#}");
    assert!(!cross.to_string().contains("postgres"), "{cross:#}");
    // The declared secret keys hold the resolved secret: reported as such, and not a problem.
    for s in cross["services"].as_array().unwrap() {
        let declared = if s["service"] == "ingest" {
            "secrets.api_key"
        } else {
            "API_TOKEN"
        };
        assert_eq!(
            s["config"][0]["literal_secrets"],
            serde_json::json!([declared]),
            "{s:#}"
        );
    }
    let written = std::fs::read_to_string(fleet.root("preprocess").join("settings.env")).unwrap();
    assert!(written.contains("API_TOKEN="), "{written}");
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    assert_secret_not_shown(&fleet, &out, &run_id);
    // A service placing a setting the fleet does not declare is refused by `plan check`, at
    // its line.
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("settings = { database_url", "settings = { databse_url");
    let bad = fleet.write_plan("bad.toml", &text);
    let out = fleet.flotilla(&["plan", "check", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 41, key service[1].cross_service.settings.databse_url")
            && err.contains("does not declare"),
        "{err}"
    );
}

#[test]
fn services_that_disagree_on_a_setting_fail_the_check_and_the_fleet_rolls_back() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats);
    let plan = plan(&fleet, DB, "postgres://db-old.internal:5432/fleet", "");
    let (out, report) = migrate(&fleet, &plan);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], false, "{cross:#}");
    let problems = cross["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let problem = problems[0].as_str().unwrap();
    assert!(
        problem.starts_with("setting database_url differs across services (2 values")
            && problem.contains("ingest/a (db.url in config/ingest.toml)")
            && problem.contains("preprocess/a (DATABASE_URL in settings.env)"),
        "{problem}"
    );
    assert!(!report.to_string().contains("db-old"), "{report:#}");
    assert_rolled_back(&fleet, &report);
}

#[test]
fn a_secret_leaked_into_another_key_fails_the_check_without_showing_it() {
    let nats = NatsServer::start().unwrap();
    let fleet = start(&nats);
    let plan = plan(&fleet, DB, DB, "LOG_TAG=\"build-${secret:API_KEY}\"\n");
    let (out, report) = migrate(&fleet, &plan);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], false, "{cross:#}");
    let problems: Vec<&str> = cross["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // The leak, named by its key; the declared API_TOKEN and ingest's secrets.api_key are not.
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("preprocess/a: settings.env holds a literal secret in LOG_TAG")
            && problems[0].contains("the value is not shown"),
        "{problems:#?}"
    );
    assert_rolled_back(&fleet, &report);
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    assert_secret_not_shown(&fleet, &out, &run_id);
}
