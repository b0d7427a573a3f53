//! One configuration convention for both binaries, run for real: a list of NATS URLs whose first
//! node is dead still reaches the live one (coordinator and agents), and the coordinator's old
//! spellings still work, with a warning naming the new one.

use std::process::{Command, Output};

use flotilla_tests::{Fleet, NatsServer, ROLES, binary, free_port, json_stdout, repo_root};

/// A NATS URL on which nothing listens: a port that was free a moment ago.
fn dead_url() -> String {
    format!("nats://127.0.0.1:{}", free_port())
}

/// `flotilla ARGS` with exactly the `FLOTILLA_…` variables of `env` (none inherited).
fn flotilla(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary("flotilla"));
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("FLOTILLA_")) {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env("OTEL_SDK_DISABLED", "true")
        .output()
        .expect("flotilla runs")
}

/// The agents `flotilla agents --output json` lists, by service name.
fn agent_names(out: &Output) -> Vec<String> {
    let listed = json_stdout(out);
    let mut names: Vec<String> = listed
        .as_array()
        .or_else(|| listed["agents"].as_array())
        .unwrap_or_else(|| panic!("a list of agents: {listed:#}"))
        .iter()
        .map(|a| a["service"].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Agents and coordinator given `dead,live` as their NATS URL (`FLOTILLA_NATS__URL`, one
/// spelling for both) connect to the live node: setup, discovery and a whole migration work.
#[test]
fn a_dead_first_server_in_the_list_does_not_stop_the_fleet() {
    let nats = NatsServer::start().unwrap();
    let servers = format!("{},{}", dead_url(), nats.url());
    let env = vec![("FLOTILLA_NATS__URL".to_owned(), servers.clone())];
    let fleet = Fleet::start_with(nats.url(), &ROLES, &|_| env.clone(), env.clone()).unwrap();

    let out = fleet.flotilla(&["agents", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut expected: Vec<String> = ROLES.iter().map(|r| (*r).to_owned()).collect();
    expected.sort();
    assert_eq!(agent_names(&out), expected);

    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["status"], "succeeded");
    for role in ROLES {
        assert!(
            fleet.root(role).join("config/service.toml").exists(),
            "{role} was not migrated"
        );
    }
}

/// With every node of the list dead, the coordinator exits 4 (NATS unreachable), naming them.
#[test]
fn a_list_of_dead_servers_exits_4_naming_them() {
    let (first, second) = (dead_url(), dead_url());
    let out = flotilla(
        &["agents", "--connect-timeout", "2s"],
        &[("FLOTILLA_NATS__URL", &format!("{first}, {second}"))],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains(&format!("{first},{second}")), "{said}");
}

/// The new spellings (variable and file) work without a warning; the old ones (the variables
/// `FLOTILLA_NATS_URL`, `FLOTILLA_PREFIX`, the file key `nats_url`) still work and warn, naming
/// the spelling to use; a flag beats both.
#[test]
fn old_spellings_still_work_and_warn_and_new_ones_work_quietly() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let agents = ["agents", "--output", "json"];
    let inference = vec!["inference".to_owned()];

    let new_env = flotilla(
        &agents,
        &[
            ("FLOTILLA_NATS__URL", nats.url()),
            ("FLOTILLA_NATS__PREFIX", "flotilla"),
        ],
    );
    assert_eq!(new_env.status.code(), Some(0), "{}", stderr(&new_env));
    assert_eq!(agent_names(&new_env), inference);
    assert!(
        !stderr(&new_env).contains("deprecated"),
        "{}",
        stderr(&new_env)
    );

    let old_env = flotilla(
        &agents,
        &[
            ("FLOTILLA_NATS_URL", nats.url()),
            ("FLOTILLA_PREFIX", "flotilla"),
        ],
    );
    assert_eq!(old_env.status.code(), Some(0), "{}", stderr(&old_env));
    assert_eq!(agent_names(&old_env), inference);
    let warned = stderr(&old_env);
    assert!(
        warned.contains("FLOTILLA_NATS_URL is deprecated; set FLOTILLA_NATS__URL"),
        "{warned}"
    );
    assert!(
        warned.contains("FLOTILLA_PREFIX is deprecated; set FLOTILLA_NATS__PREFIX"),
        "{warned}"
    );

    let dir = tempfile::tempdir().unwrap();
    let old_file = dir.path().join("old.toml");
    std::fs::write(&old_file, format!("nats_url = \"{}\"\n", nats.url())).unwrap();
    let out = flotilla(
        &[
            "--config",
            old_file.to_str().unwrap(),
            "agents",
            "-o",
            "json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(agent_names(&out), inference);
    assert!(
        stderr(&out).contains("key \"nats_url\" is deprecated; write [nats] url = …"),
        "{}",
        stderr(&out)
    );

    // The file's array form, with a dead node first; the flag's dead URL beats the file.
    let new_file = dir.path().join("new.toml");
    std::fs::write(
        &new_file,
        format!("[nats]\nurl = [\"{}\", \"{}\"]\n", dead_url(), nats.url()),
    )
    .unwrap();
    let config = new_file.to_str().unwrap();
    let out = flotilla(&["--config", config, "agents", "-o", "json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(agent_names(&out), inference);
    assert!(!stderr(&out).contains("deprecated"), "{}", stderr(&out));
    let dead = dead_url();
    let out = flotilla(
        &[
            "--config",
            config,
            "--nats-url",
            &dead,
            "--connect-timeout",
            "2s",
            "agents",
        ],
        &[("FLOTILLA_NATS__URL", nats.url())],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "the flag wins: {}",
        stderr(&out)
    );
    drop(fleet);
}
