//! The agent's hygiene, end to end with real processes:
//! - the service, a `run_command` step and a `command` check never see the agent's secrets
//!   (its `FLOTILLA_…` variables, the variables its secret source reads), read from
//!   `/proc/<pid>/environ` of the real processes;
//! - a step's child lives in its own process group: after kill -9 of the agent mid-step the next
//!   agent kills it before recovery, and the restored tree stays restored;
//! - one agent per state directory;
//! - a configuration error the agent cannot cure by waiting exits non-zero with its cause.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{Fleet, NatsServer, binary, free_port, snapshot, wait_for};

const EXIT: Duration = Duration::from_secs(20);

/// The variables of `/proc/<pid>/environ` (or a copy of it), by name.
fn environ(path: &Path) -> Vec<(String, String)> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .filter_map(|v| {
            let (name, value) = std::str::from_utf8(v).ok()?.split_once('=')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Asserts that `env` (of `what`) holds the ordinary environment and none of the agent's secrets:
/// its only `FLOTILLA_…` variables are those in `allowed`.
fn assert_clean(what: &str, env: &[(String, String)], allowed: &[&str]) {
    let names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"PATH"), "{what}: {names:?}");
    assert!(
        env.contains(&("HYGIENE_ORDINARY".into(), "kept".into())),
        "{what} lost the ordinary environment: {names:?}"
    );
    for name in &names {
        assert!(
            !name.starts_with("APP_SECRET_"),
            "{what} inherited the secret {name}"
        );
        assert!(
            !name.starts_with("FLOTILLA_") || allowed.contains(name),
            "{what} inherited the agent's {name}"
        );
    }
    assert!(
        !env.iter().any(|(_, v)| v.contains("leak-me-not")),
        "{what} holds a secret value: {names:?}"
    );
}

#[test]
fn the_service_a_step_and_a_check_never_inherit_the_agents_secrets() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start_with_env(
        nats.url(),
        &["inference"],
        &[
            ("FLOTILLA_SECRETS__ENV_PREFIX", "APP_SECRET_"),
            ("APP_SECRET_TOKEN", "leak-me-not"),
            ("FLOTILLA_SECRET_API_KEY", "leak-me-not"),
            ("FLOTILLA_NATS__CONNECT_TIMEOUT", "5s"),
            ("HYGIENE_ORDINARY", "kept"),
        ],
    )
    .unwrap();
    let pid = fleet.service_pid("inference").expect("the service runs");
    assert_clean(
        "the service",
        &environ(&PathBuf::from(format!("/proc/{pid}/environ"))),
        // `[service.env]` of the fleet's configuration: the config says so.
        &["FLOTILLA_SAMPLE_NATS_URL"],
    );

    let (step, check) = (
        fleet.dir().join("step.environ"),
        fleet.dir().join("check.environ"),
    );
    let copy = |to: &Path| format!("cp /proc/$$/environ {}", to.display());
    let plan = fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"hygiene-env\"\n\
             [[service]]\nname = \"inference\"\n\
             [[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", {step:?}]\nenv = {{ STEP_OWN = \"yes\" }}\n\
             [[service.check]]\ntype = \"command\"\nprogram = \"sh\"\nargs = [\"-c\", {check:?}]\n",
            step = copy(&step),
            check = copy(&check),
        ),
    );
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let step_env = environ(&step);
    assert_clean("the step's child", &step_env, &[]);
    assert!(step_env.contains(&("STEP_OWN".into(), "yes".into())));
    assert_clean("the check's child", &environ(&check), &[]);
}

/// The fields of `/proc/<pid>/stat` after the command name (the state first), unless `pid` is
/// gone or a zombie.
fn live_stat(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<String> = rest.split_whitespace().map(str::to_owned).collect();
    (fields.first().map(String::as_str) != Some("Z")).then_some(fields)
}

/// The process group of `pid` (`/proc/<pid>/stat` field 5).
fn process_group(pid: u32) -> Option<u32> {
    live_stat(pid)?.get(2)?.parse().ok()
}

/// The live (not zombie) processes for which `keep` holds.
fn live_processes(keep: impl Fn(u32, &[String]) -> bool) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| live_stat(*pid).is_some_and(|fields| keep(*pid, &fields)))
        .collect()
}

/// Live processes whose command line contains `needle`.
fn processes_matching(needle: &str) -> Vec<u32> {
    live_processes(|pid, _| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(needle)
    })
}

/// Live processes of process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    live_processes(|_, fields| fields.get(2) == Some(&pgid.to_string()))
}

#[test]
fn a_steps_child_dies_with_its_agent_before_recovery_restores_the_tree() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let root = fleet.root("inference");
    let before = snapshot(&root);
    // Writes into the service root by absolute path, forever: into whatever tree is there.
    let log = root.join("writer.log");
    let writer = format!("while true; do echo x >> {}; done", log.display());
    let plan = fleet.write_plan(
        "plan.toml",
        &format!(
            "name = \"hygiene-orphan\"\ncommand_timeout = \"60s\"\n\
             [[service]]\nname = \"inference\"\n\
             [[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", {writer:?}]\ntimeout_ms = 120000\n"
        ),
    );
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    wait_for("the step's writer to write", EXIT, || {
        std::fs::metadata(&log).is_ok_and(|m| m.len() > 0)
    })
    .unwrap();
    let writers = processes_matching(&log.display().to_string());
    let pgid = writers
        .first()
        .and_then(|pid| process_group(*pid))
        .expect("the writer runs");
    let agent = fleet.agent_pid("inference").expect("the agent runs");
    assert_ne!(process_group(agent), Some(pgid), "own process group");

    fleet.kill_agent("inference");
    assert!(
        !group_members(pgid).is_empty(),
        "the writer outlives kill -9 of its agent (until the next agent starts)"
    );
    fleet.start_agent("inference").unwrap();
    wait_for("the writer's process group to die", EXIT, || {
        group_members(pgid).is_empty()
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while coordinator.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the migration did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(snapshot(&root), before, "recovery restored the tree");
    wait_for("the service to answer on the legacy layout", EXIT, || {
        fleet
            .health("inference")
            .is_some_and(|(status, body)| status == 200 && body.contains("\"layout\":\"legacy\""))
    })
    .unwrap();
    assert_eq!(snapshot(&root), before, "nothing writes into it since");
}

/// Waits for `child` to exit within [`EXIT`]; returns its exit code and its stderr (`stderr`).
fn exit_of(mut child: Child, stderr: &Path) -> (Option<i32>, String) {
    let mut status = None;
    let waited = wait_for("the agent to exit", EXIT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if waited.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    waited.unwrap_or_else(|e| panic!("{e}; stderr:\n{text}"));
    (status.and_then(|s| s.code()), text)
}

/// Starts `flotilla-agent --config config`, its stderr into `stderr`.
fn spawn_agent(config: &Path, stderr: &Path) -> Child {
    Command::new(binary("flotilla-agent"))
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

#[test]
fn a_second_agent_on_the_same_state_directory_refuses_to_start() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let config = fleet.dir().join("agent-inference.toml");
    let state = fleet.dir().join("state").join("inference");
    let first = fleet.agent_pid("inference").expect("the agent runs");
    let stderr = fleet.dir().join("second.err");
    let (code, text) = exit_of(spawn_agent(&config, &stderr), &stderr);
    assert_ne!(code, Some(0), "{text}");
    assert!(
        text.contains(&state.display().to_string()) && text.contains(&format!("PID {first}")),
        "{text}"
    );

    fleet.kill_agent("inference");
    let mut next = spawn_agent(&config, &stderr);
    wait_for("the next agent to hold the lock", EXIT, || {
        std::fs::read_to_string(state.join("agent.lock"))
            .is_ok_and(|pid| pid.trim() == next.id().to_string())
    })
    .unwrap();
    assert!(next.try_wait().unwrap().is_none(), "the next agent runs");
    let _ = next.kill();
    let _ = next.wait();
}

/// An agent alone in `dir` (no service process) with `extra` TOML appended to its
/// configuration, connecting to `url`.
fn lone_agent_config(dir: &Path, url: &str, extra: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::create_dir_all(dir.join("root")).unwrap();
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{url}\"\nconnect_timeout = \"2s\"\n\
             [agent]\ninstance = \"a\"\nstate_dir = \"{state}\"\n\
             [service]\nname = \"inference\"\nroot = \"{root}\"\nsupervisor = \"none\"\n\
             health_url = \"http://127.0.0.1:{port}/health\"\nstartup_timeout = \"1s\"\n{extra}",
            state = dir.join("state").display(),
            root = dir.join("root").display(),
            port = free_port(),
        ),
    )
    .unwrap();
    config
}

/// Asserts that an agent configured with `extra` exits non-zero within [`EXIT`] with every
/// part of `causes` in its stderr.
fn exits_fatally(url: &str, extra: &str, causes: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = lone_agent_config(dir.path(), url, extra);
    let stderr = dir.path().join("agent.err");
    let (code, text) = exit_of(spawn_agent(&config, &stderr), &stderr);
    assert_ne!(code, Some(0), "{text}");
    for cause in causes {
        assert!(text.contains(cause), "{cause:?} missing from:\n{text}");
    }
    assert!(!text.contains("NATS not reachable yet"), "{text}");
}

#[test]
fn a_missing_credentials_file_is_fatal() {
    let nats = NatsServer::start().unwrap();
    exits_fatally(
        nats.url(),
        "[nats.auth]\ncredentials_file = \"/nonexistent/agent.creds\"\n",
        &["/nonexistent/agent.creds", "No such file"],
    );
}

#[test]
fn an_unreadable_key_is_fatal() {
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A directory: unreadable as a file even by root.
    let key = dir.path().join("agent.nk");
    std::fs::create_dir(&key).unwrap();
    exits_fatally(
        nats.url(),
        &format!("[nats.auth]\nnkey_seed_file = \"{}\"\n", key.display()),
        &[&key.display().to_string(), "Is a directory"],
    );
}

#[test]
fn missing_tls_files_are_fatal() {
    let nats = NatsServer::start().unwrap();
    exits_fatally(
        nats.url(),
        "[nats.auth]\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
        &["cannot read the TLS file /nonexistent/ca.pem"],
    );
}

#[test]
fn a_malformed_trusted_key_is_fatal() {
    let nats = NatsServer::start().unwrap();
    exits_fatally(
        nats.url(),
        "[security]\ntrusted_keys = [\"not-a-key\"]\n",
        &["security.trusted_keys"],
    );
}

#[test]
fn credentials_the_server_rejects_are_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let server_config = dir.path().join("nats.conf");
    std::fs::write(
        &server_config,
        "jetstream {}\nauthorization {\n  user: agent\n  password: right\n}\n",
    )
    .unwrap();
    let nats = NatsServer::start_with_config(&server_config, &[]).unwrap();
    exits_fatally(
        nats.url(),
        "[nats.auth]\nuser = \"agent\"\npassword = \"wrong\"\n",
        &["authorization violation", "[nats.auth]"],
    );
}

#[test]
fn an_unreachable_server_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("nats://127.0.0.1:{}", free_port());
    let config = lone_agent_config(dir.path(), &url, "");
    let stderr = dir.path().join("agent.err");
    let mut agent = spawn_agent(&config, &stderr);
    wait_for("two connection attempts", EXIT, || {
        std::fs::read_to_string(&stderr)
            .is_ok_and(|t| t.matches("NATS not reachable yet").count() >= 2)
    })
    .unwrap();
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent keeps trying"
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
