//! Bad input gets a clear one-line error and a meaningful exit code, and touches no service.

use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_tests::{Fleet, NatsServer, binary, free_port, repo_root, snapshot};

fn flotilla(args: &[&str], nats_url: &str) -> std::process::Output {
    Command::new(binary("flotilla"))
        .args(args)
        .env("FLOTILLA_NATS__URL", nats_url)
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_or_malformed_plan_is_a_usage_error() {
    let out = flotilla(&["migrate", "/nonexistent/plan.toml"], "nats://127.0.0.1:1");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: cannot read plan /nonexistent/plan.toml"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"x\"\n[[service]]\nname = \"a\"\n[[service.step]]\naction = \"format_disk\"\n",
    )
    .unwrap();
    let out = flotilla(
        &["plan", "check", plan.to_str().unwrap()],
        "nats://127.0.0.1:1",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("line 5") && err.contains("format_disk"),
        "{err}"
    );
}

#[test]
fn the_demo_plan_checks_clean() {
    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = flotilla(
        &["plan", "check", plan.to_str().unwrap()],
        "nats://127.0.0.1:1",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn an_unreachable_nats_fails_fast() {
    let port = free_port();
    let started = Instant::now();
    let out = flotilla(
        &["agents", "--connect-timeout", "2s"],
        &format!("nats://127.0.0.1:{port}"),
    );
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains(&format!(
            "cannot connect to NATS at nats://127.0.0.1:{port}"
        )),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_service_without_an_agent_fails_preflight_and_changes_nothing() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["ingest"]).unwrap();
    let before = snapshot(&fleet.root("ingest"));
    let plan = fleet.write_plan(
        "missing.toml",
        "name = \"m\"\n[[step]]\naction = \"delete\"\npath = \"legacy.conf\"\n[[service]]\nname = \"ingest\"\n[[service]]\nname = \"ghost\"\n",
    );
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ghost: no live agent"),
        "{}",
        stderr(&out)
    );
    assert_eq!(snapshot(&fleet.root("ingest")), before);
}

#[test]
fn a_bad_agent_configuration_is_refused_with_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        "[agent]\ninstance = \"a\"\nstate_dir = \"/tmp/x\"\n[service]\nname = \"a\"\nroot = \"/srv/a\"\ncommand = [\"true\"]\nhelth_url = \"http://x\"\n",
    )
    .unwrap();
    let out = Command::new(binary("flotilla-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("helth_url"), "{}", stderr(&out));
    let out = Command::new(binary("flotilla-agent"))
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/agent.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn completions_are_generated_for_each_shell_and_an_unknown_shell_is_a_usage_error() {
    for shell in ["bash", "zsh", "fish"] {
        let out = flotilla(&["completions", shell], "nats://127.0.0.1:1");
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", stderr(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        for command in ["migrate", "rollback", "verify", "watch"] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
    }
    let out = flotilla(&["completions", "tcsh"], "nats://127.0.0.1:1");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_configuration_file_sets_defaults_beneath_variables_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flotilla.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!("nats_url = \"nats://127.0.0.1:{port}\"\nconnect_timeout = \"1s\"\n"),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // The file's URL is used...
    let out = Command::new(binary("flotilla"))
        .args(["--config", config, "agents"])
        .env_remove("FLOTILLA_NATS__URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    // ...unless a variable or a flag says otherwise.
    let other = free_port();
    let out = flotilla(
        &["--config", config, "agents"],
        &format!("nats://127.0.0.1:{other}"),
    );
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{other}")),
        "{}",
        stderr(&out)
    );
    // A typo is named.
    std::fs::write(dir.path().join("bad.toml"), "nats_ur = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = flotilla(
        &["--config", bad.to_str().unwrap(), "agents"],
        "nats://127.0.0.1:1",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown key \"nats_ur\""),
        "{}",
        stderr(&out)
    );
}
