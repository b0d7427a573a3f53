//! Issue 16's acceptance test: a fleet of another team's services, migrated from an empty
//! server on the shipped *secured* NATS configuration, by the documented order (`flotilla setup`,
//! then the agents, then `migrate`), with no workaround:
//!
//! - `ingest` and `preprocess`, Python standard-library services (`relay_service.py`) with their
//!   own `key=value` configuration and their own correlation header (`X-Request-Id`); `ingest`
//!   forwards to `preprocess`;
//! - `training`, a run-once job (`batch_job.py`, `kind = "job"`);
//! - a secret full of special characters, landing in a TOML file rendered from a template
//!   shipped with the plan and in a `.env` file, each under the key the plan declares for it;
//! - one setting held under a different file and key by each service, checked to agree, and
//!   every service reaching every other (the job, with no endpoint, reaching them);
//! - proved by Flotilla's own checks: the run's ID travels in the services' own header from
//!   `ingest` into `preprocess`'s log.

use std::path::Path;

use flotilla_tests::report::service;
use flotilla_tests::{Fleet, free_port, json_stdout, repo_root, secure};

/// Quotes, backslashes, a tab, `\u0041` as text, `$`, `#`, `=`, unicode, a line break, spaces.
const SECRET: &str = " pa\"ss'wo\\rd\t\\u0041 $HOME #=: é🚀\nline2 ";

const DB_HOST: &str = "db.internal:5432";

/// The job's part of its agent's configuration: its own dry run and the output it must write.
const JOB_SECTION: &str = "timeout = \"60s\"\n\
     check_command = [\"python3\", \"batch_job.py\", \"--check\"]\n\
     [[service.job.outputs]]\npath = \"out/result.json\"\ncontains = \"\\\"status\\\": \\\"done\\\"\"\n";

/// `ingest`'s configuration, shipped with the plan rather than inlined in it.
const TEMPLATE: &str = "# ${service:name}, migrated by run ${run:id}\n\
     [database]\nhost = \"db.internal:5432\"\npassword = \"${secret:DB_PASSWORD}\"\n";

struct Foreign {
    fleet: Fleet,
    plan: std::path::PathBuf,
}

/// An empty server on the shipped configuration, `flotilla setup` as the coordinator, then each
/// agent under its own user.
fn start() -> (flotilla_tests::NatsServer, Foreign) {
    let nats = secure::start_server();
    let mut fleet = Fleet::empty(nats.url(), secure::coordinator_env()).unwrap();
    let out = fleet.flotilla(&["setup"]);
    assert!(
        out.status.success(),
        "setup on an empty secured server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let relay = repo_root().join("tests/fixtures/relay_service.py");
    let relay = ["python3", relay.to_str().unwrap()];
    let (ingest, preprocess) = (free_port(), free_port());
    for (name, port, conf) in [
        (
            "preprocess",
            preprocess,
            format!("version=1\nport={preprocess}\n"),
        ),
        (
            "ingest",
            ingest,
            format!("version=1\nport={ingest}\ndownstream={preprocess}\n"),
        ),
    ] {
        let env = agent_env(name);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fleet
            .add_foreign_with_env(name, &relay, port, &[("relay.conf", &conf)], &env)
            .unwrap();
    }
    let job = std::fs::read_to_string(repo_root().join("tests/fixtures/batch_job.py")).unwrap();
    let env = agent_env("training");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    fleet
        .add_job_with_env(
            "training",
            &["python3", "batch_job.py"],
            JOB_SECTION,
            &[("batch_job.py", &job), ("job.conf", "rows=10\n")],
            &env,
        )
        .unwrap();
    let plan = write_plan(&fleet, ingest, preprocess);
    (nats, Foreign { fleet, plan })
}

/// The agent's NATS identity on the shipped configuration, and the secret it resolves.
fn agent_env(role: &str) -> Vec<(String, String)> {
    let mut env = secure::agent_identity(role);
    env.push(("FLOTILLA_SECRET_DB_PASSWORD".into(), SECRET.into()));
    env
}

/// Each service's part: its own file and key for the database host and the secret; the relay
/// services' checks in their own header, with the proof in their own log.
fn write_plan(fleet: &Fleet, ingest: u16, preprocess: u16) -> std::path::PathBuf {
    let templates = fleet.dir().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("ingest.toml.tmpl"), TEMPLATE).unwrap();
    let headers =
        r#"headers = { "X-Request-Id" = "${run:id}", "traceparent" = "${run:traceparent}" }"#;
    let relay_checks = |port: u16| {
        format!(
            "[[service.step]]\naction = \"replace_text\"\npath = \"relay.conf\"\nfind = \"version=1\"\nreplace = \"version=2\"\n\
             [[service.health]]\nurl = \"http://127.0.0.1:{port}/health\"\n{headers}\n\
             [[service.check]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{port}/ping\"\n{headers}\n\
             [[service.check]]\ntype = \"log\"\npath = \"relay.log\"\n\
             contains = \"path=/ping request_id=${{run:id}} trace=${{run:trace_id}}\"\n"
        )
    };
    let text = format!(
        r#"name = "foreign-fleet"
[gates]
startup_max_increase_pct = 1000.0
latency_slack_ms = 1500

[[wave]]
name = "all"

[cross_service]
communication = true
[cross_service.settings]
db_host = {{ file = "config/ingest.toml", key = "database.host" }}
[[cross_service.log_correlation]]
request = {{ service = "ingest", url = "http://127.0.0.1:{ingest}/forward", headers = {{ "X-Request-Id" = "${{run:id}}" }} }}
expect_in_logs = ["preprocess"]
log = "relay.log"
contains = "path=/work request_id=${{run:id}}"
timeout_ms = 5000

[[service]]
name = "ingest"
[[service.step]]
action = "write_file"
path = "config/ingest.toml"
source = "templates/ingest.toml.tmpl"
{ingest_checks}
[service.cross_service]
config_files = ["config/ingest.toml"]
secret_keys = ["database.password"]

[[service]]
name = "preprocess"
[[service.step]]
action = "write_file"
path = "settings.env"
content = """
DB_HOST={DB_HOST}
DB_PASSWORD=${{secret:DB_PASSWORD}}
"""
{preprocess_checks}
[service.cross_service]
config_files = ["settings.env"]
secret_keys = ["DB_PASSWORD"]
settings = {{ db_host = {{ file = "settings.env", key = "DB_HOST" }} }}

[[service]]
name = "training"
[[service.step]]
action = "replace_text"
path = "job.conf"
find = "rows=10"
replace = "rows=20"
[service.cross_service]
config_files = []
settings = {{ db_host = false }}
"#,
        ingest_checks = relay_checks(ingest),
        preprocess_checks = relay_checks(preprocess),
    );
    let path = fleet.write_plan("foreign.toml", &text);
    let out = fleet.flotilla(&["plan", "check", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "plan check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn another_teams_fleet_migrates_through_the_secured_setup_with_flotillas_own_proof() {
    let (_nats, foreign) = start();
    let fleet = &foreign.fleet;
    let plan = foreign.plan.to_str().unwrap();

    // The dry run first, as the docs advise: it previews every service, the job included,
    // and changes nothing.
    let out = fleet.flotilla(&["migrate", plan, "--dry-run", "--output", "json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "dry run: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!fleet.root("ingest").join("config/ingest.toml").exists());

    let out = fleet.flotilla(&["migrate", plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(
        report["status"],
        "succeeded",
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run_id = report["run_id"].as_str().unwrap().to_owned();
    for name in ["ingest", "preprocess", "training"] {
        assert_eq!(service(&report, name)["status"], "succeeded", "{report:#}");
    }

    // The secret reached the TOML file exactly, as a service parsing it reads it.
    let ingest = fleet.root("ingest");
    let config: toml::Table = toml::from_str(&read(&ingest, "config/ingest.toml")).unwrap();
    assert_eq!(config["database"]["password"].as_str(), Some(SECRET));
    assert!(read(&ingest, "config/ingest.toml").contains(&format!("run {run_id}")));
    assert!(read(&fleet.root("preprocess"), "settings.env").contains("DB_HOST=db.internal"));

    // The job ran on its new configuration and wrote its output; its figures are a job's.
    assert!(read(&fleet.root("training"), "out/result.json").contains("\"rows\": 20"));
    let training = service(&report, "training");
    assert!(
        !training["measurements"]["job_after"].is_null(),
        "{training:#}"
    );

    // Flotilla's own proof: the declared secret keys hold the secret and nothing else does, the
    // setting agrees across two files and names, and the run's ID went from ingest into
    // preprocess's own log in the services' own header.
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], true, "{cross:#}");
    assert!(
        cross["log_correlation"].to_string().contains("preprocess"),
        "{cross:#}"
    );
    let preprocess_log = read(&fleet.root("preprocess"), "relay.log");
    assert!(
        preprocess_log.contains(&format!("path=/work request_id={run_id}")),
        "{preprocess_log}"
    );

    // The secret shows nowhere but in its two files: not in what migrate printed, not in the
    // report, not in the agents' logs.
    let shown = [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(
            &fleet
                .flotilla(&["report", &run_id, "--output", "json"])
                .stdout,
        )
        .into_owned(),
    ];
    for name in ["ingest", "preprocess", "training"] {
        let log = std::fs::read_to_string(fleet.agent_log(name)).unwrap_or_default();
        assert!(
            !log.contains("wo\\rd\t"),
            "{name}'s agent log shows the secret"
        );
    }
    for text in shown {
        assert!(!text.contains("leak") && !text.contains("wo\\rd"), "{text}");
        assert!(!text.contains(SECRET.trim()), "{text}");
    }
}
