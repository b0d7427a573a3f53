//! The deployment files cannot rot: the compose file is valid and every file it mounts exists,
//! every example agent configuration under `deploy/` loads with the agent's own loader, every
//! plan under `deploy/` passes `flotilla plan check`, and the Dockerfile, systemd unit and
//! Kubernetes example agree with the workspace (and .dockerignore keeps target/ out of the build
//! context). No Docker engine is needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_tests::{ROLES, binary, repo_root};

/// The `.toml` files under `deploy/`, sorted.
fn deploy_toml_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(repo_root().join("deploy"))
        .into_iter()
        .map(|entry| entry.expect("deploy/ is readable").into_path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A plan has `[[service]]` tables; an agent configuration has an `[agent]` table.
fn is_plan(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[[service]]")
}

fn is_agent_config(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "[agent]")
}

/// The host paths the compose file refers to: bind mounts (`- ./x:/y`), secret files
/// (`file: ./x`), env files (`env_file: x`) and the Dockerfile (`dockerfile: x`, relative to the
/// context `.`).
fn compose_host_paths(compose: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for line in compose.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let value = line.trim_start_matches("- ").trim_matches('"');
        if let Some(rest) = value.strip_prefix("./") {
            let path = rest.split(':').next().unwrap_or(rest);
            paths.insert(path.to_owned());
        } else if let Some(file) = value
            .strip_prefix("file: ")
            .or_else(|| value.strip_prefix("env_file: "))
        {
            paths.insert(file.trim_start_matches("./").to_owned());
        } else if let Some(file) = value.strip_prefix("dockerfile: ") {
            paths.insert(file.to_owned());
        }
    }
    paths
}

/// `docker-compose config -q` accepts the compose file (Debian's docker-compose needs no engine
/// for this; scripts/prerequisites.sh installs it).
#[test]
fn compose_file_is_valid() {
    let output = Command::new("docker-compose")
        .args(["--file", "docker-compose.yml", "config", "--quiet"])
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}): install it (apt-get install -y docker-compose) \
                 or run scripts/test.sh, which does"
            )
        });
    assert!(
        output.status.success(),
        "docker-compose config rejects docker-compose.yml:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let services = Command::new("docker-compose")
        .args(["--profile", "migrate", "config", "--services"])
        .current_dir(repo_root())
        .output()
        .expect("docker-compose runs");
    let services = String::from_utf8_lossy(&services.stdout);
    let services: BTreeSet<&str> = services.lines().collect();
    for expected in ["nats", "jaeger", "otel-collector", "coordinator"] {
        assert!(services.contains(expected), "no service {expected}");
    }
    for role in ROLES {
        assert!(services.contains(role), "no service {role}");
        let agent = format!("{role}-agent");
        assert!(services.contains(agent.as_str()), "no sidecar {agent}");
    }
}

/// Every file and directory the compose file mounts or builds from exists, and every role's
/// agent configuration is mounted.
#[test]
fn every_file_the_compose_file_mounts_exists() {
    let root = repo_root();
    let compose = read(&root.join("docker-compose.yml"));
    let paths = compose_host_paths(&compose);
    for role in ROLES {
        let config = format!("deploy/config/agents/{role}.toml");
        assert!(paths.contains(&config), "compose does not mount {config}");
    }
    for expected in [
        "deploy/nats/nats-server.conf",
        "deploy/otel/collector.yaml",
        "deploy/docker/Dockerfile",
        "deploy/demo/secrets/nats.env",
    ] {
        assert!(paths.contains(expected), "compose does not use {expected}");
    }
    let missing: Vec<&String> = paths.iter().filter(|p| !root.join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docker-compose.yml refers to missing files: {missing:?}"
    );
}

/// Every agent configuration under deploy/ loads with `AgentConfig::load`, and every `.toml`
/// there is either an agent configuration, a plan or the coordinator's example (so a new example
/// is never left untested).
#[test]
fn every_example_agent_config_loads() {
    let mut loaded = 0;
    for path in deploy_toml_files() {
        let text = read(&path);
        if is_plan(&text) {
            continue;
        }
        // The coordinator's example loads as the coordinator's configuration, quietly.
        if path.ends_with("deploy/config/coordinator.toml") {
            let env = std::collections::HashMap::new();
            flotilla_coordinator::settings::assemble(Some(&path), &env, vec![], &mut |w| {
                panic!("{}: {w}", path.display())
            })
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            continue;
        }
        assert!(
            is_agent_config(&text),
            "{} is neither an agent configuration nor a plan",
            path.display()
        );
        flotilla_agent::AgentConfig::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        loaded += 1;
    }
    assert!(
        loaded > ROLES.len(),
        "only {loaded} agent configurations found"
    );
}

/// The five T006 example configurations match their service: name, port, health URL, the
/// sidecar's restart helper and PID file on the shared volume, a secret directory.
#[test]
fn the_t006_agent_configs_are_service_specific() {
    let mut ports = BTreeSet::new();
    for role in ROLES {
        let path = repo_root().join(format!("deploy/config/agents/{role}.toml"));
        let config = flotilla_agent::AgentConfig::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let service = &config.service;
        assert_eq!(service.name.as_str(), role);
        assert_eq!(service.root, Path::new("/srv").join(role));
        let port = config.vars.get("port").expect("a port var");
        assert!(ports.insert(port.clone()), "port {port} used twice");
        assert_eq!(
            service.health_url,
            format!("http://127.0.0.1:{port}/health"),
            "{role}"
        );
        assert!(
            config.vars.contains_key("log_file"),
            "{role}: no log_file var"
        );
        let pid_file = format!("/srv/run/{role}.pid");
        assert_eq!(service.pid_file.as_deref(), Some(Path::new(&pid_file)));
        assert_eq!(
            service.restart_command.first().map(String::as_str),
            Some("/usr/local/bin/flotilla-restart-service"),
            "{role}: the restart helper the agent image installs"
        );
        assert_eq!(service.restart_command.get(1), Some(&pid_file), "{role}");
        assert_eq!(
            config.secrets.dir.as_deref(),
            Some(Path::new("/run/secrets"))
        );
        if matches!(role, "training" | "preprocess") {
            assert!(
                config
                    .commands
                    .allow
                    .contains(&"/usr/local/bin/flotilla-sample".to_owned()),
                "{role}: its job check needs the job binary on the allow-list"
            );
        }
    }
    let expected: BTreeSet<String> = (18081..=18085).map(|p: u16| p.to_string()).collect();
    assert_eq!(ports, expected);
}

/// Every plan under deploy/ passes `flotilla plan check`.
#[test]
fn every_plan_under_deploy_checks() {
    let plans: Vec<PathBuf> = deploy_toml_files()
        .into_iter()
        .filter(|p| is_plan(&read(p)))
        .collect();
    assert!(plans.len() >= 2, "plans found: {plans:?}");
    for plan in plans {
        let output = Command::new(binary("flotilla"))
            .arg("plan")
            .arg("check")
            .arg(&plan)
            .env("NO_COLOR", "1")
            .output()
            .expect("flotilla runs");
        assert!(
            output.status.success(),
            "flotilla plan check {}: {}{}",
            plan.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The Dockerfile's dependency stage stubs exactly the workspace members (a member it misses
/// breaks the image build), and every file it copies from deploy/ exists and is executable.
#[test]
fn dockerfile_matches_the_workspace() {
    let root = repo_root();
    let manifest = read(&root.join("Cargo.toml"));
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("workspace members");
    let members: BTreeSet<&str> = members_line
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|m| !m.is_empty())
        .collect();
    let dockerfile = read(&root.join("deploy/docker/Dockerfile"));
    let stubbed_line = dockerfile
        .lines()
        .find(|l| l.contains("for crate in"))
        .expect("the dummy-crate loop");
    let stubbed: BTreeSet<&str> = stubbed_line
        .split("for crate in")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("a list of crates")
        .split_whitespace()
        .collect();
    assert_eq!(stubbed, members, "the Dockerfile's dummy crates");
    // `COPY . .` must not send target/ (gigabytes) or .tools/ to the Docker daemon.
    let ignored = read(&root.join(".dockerignore"));
    for excluded in ["target/", ".tools/", ".git/"] {
        assert!(
            ignored.lines().any(|l| l.trim() == excluded),
            ".dockerignore must exclude {excluded}"
        );
    }
    for member in &members {
        assert!(
            dockerfile.contains(&format!("COPY {member}/Cargo.toml {member}/")),
            "the Dockerfile does not copy {member}/Cargo.toml"
        );
    }
    for target in ["coordinator", "agent", "agent-demo", "sample"] {
        assert!(
            dockerfile.contains(&format!(" AS {target}\n")),
            "no stage {target}"
        );
    }
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY deploy/")) {
        let source = line.split_whitespace().nth(1).expect("a COPY source");
        let path = root.join(source);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{source}: {e}"))
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert!(mode.mode() & 0o111 != 0, "{source} is not executable");
    }
}

/// The systemd unit runs the agent per service, unprivileged and sandboxed, and restarts it.
#[test]
fn systemd_unit_is_hardened() {
    let unit = read(&repo_root().join("deploy/systemd/flotilla-agent@.service"));
    let settings: BTreeSet<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .collect();
    for expected in [
        "User=flotilla",
        "ExecStart=/usr/local/bin/flotilla-agent --config /etc/flotilla/agents/%i.toml --log-json",
        "StateDirectory=flotilla/%i",
        "ReadWritePaths=/srv",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "Restart=on-failure",
        // Readiness and the watchdog: the agent speaks sd_notify (tests/tests/agent_ops.rs).
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
    ] {
        assert!(settings.contains(expected), "the unit lacks {expected}");
    }
}

/// The Kubernetes example.
const K8S_EXAMPLE: &str = "deploy/k8s/deployment.yaml";

/// The files the Kubernetes example tells you to load into ConfigMaps and Secrets exist.
#[test]
fn the_kubernetes_example_refers_to_existing_files() {
    let root = repo_root();
    let text = read(&root.join(K8S_EXAMPLE));
    let mut found = 0;
    for word in text.split_whitespace() {
        if let Some(source) = word.strip_prefix("--from-file=") {
            let path = source.rsplit('=').next().expect("a path");
            assert!(
                root.join(path).exists(),
                "{K8S_EXAMPLE} refers to missing {path}"
            );
            found += 1;
        }
    }
    assert_eq!(found, 3, "ConfigMap and Secret sources in {K8S_EXAMPLE}");
    assert!(text.contains("shareProcessNamespace: true"));
}

fn yaml(text: &str) -> yaml_rust2::Yaml {
    yaml_rust2::YamlLoader::load_from_str(text)
        .expect("valid YAML")
        .remove(0)
}

/// The Kubernetes example is a Deployment whose agent is a native sidecar (an init container
/// with `restartPolicy: Always`), listening beyond loopback on the port its startup and liveness
/// probes ask for `/healthz`, and annotated for Prometheus on that port.
#[test]
fn the_kubernetes_agent_is_a_native_sidecar_probed_on_its_endpoint() {
    let doc = yaml(&read(&repo_root().join(K8S_EXAMPLE)));
    assert_eq!(doc["kind"].as_str(), Some("Deployment"));
    let template = &doc["spec"]["template"];
    let agent = template["spec"]["initContainers"]
        .as_vec()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"].as_str() == Some("flotilla-agent"))
        })
        .expect("the agent is an init container");
    assert_eq!(agent["restartPolicy"].as_str(), Some("Always"));
    let env = agent["env"].as_vec().expect("the agent's environment");
    let listen = env
        .iter()
        .find(|e| e["name"].as_str() == Some("FLOTILLA_HTTP__LISTEN"))
        .and_then(|e| e["value"].as_str())
        .expect("the agent's endpoint is on");
    assert_eq!(listen, "0.0.0.0:9464", "the kubelet probes the pod's IP");
    let port = agent["ports"][0]["containerPort"].as_i64();
    assert_eq!(port, Some(9464));
    for probe in ["startupProbe", "livenessProbe"] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{probe}");
        assert_eq!(get["port"], agent["ports"][0]["name"], "{probe}");
    }
    // A sidecar's readiness gates the pod's traffic: the agent's must not (docs/deployment.md).
    assert!(agent["readinessProbe"].is_badvalue());
    let annotations = &template["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9464"));
    let service = &template["spec"]["containers"][0];
    assert_eq!(service["name"].as_str(), Some("service"));
}

/// In compose, every agent is healthy once `/readyz` answers 200 (through `flotilla-agent
/// probe`, at the address its endpoint listens on), starts once its service takes connections,
/// and the coordinator waits for every agent to be healthy.
#[test]
fn compose_agents_have_healthchecks_the_coordinator_waits_for() {
    let output = Command::new("docker-compose")
        .args(["--profile", "migrate", "config"])
        .current_dir(repo_root())
        .output()
        .expect("docker-compose runs (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc = yaml(&String::from_utf8_lossy(&output.stdout));
    let services = &doc["services"];
    let coordinator = &services["coordinator"]["depends_on"];
    for role in ROLES {
        let agent = &services[format!("{role}-agent").as_str()];
        let listen = agent["environment"]["FLOTILLA_HTTP__LISTEN"]
            .as_str()
            .expect("the agent's endpoint is on");
        let test: Vec<&str> = agent["healthcheck"]["test"]
            .as_vec()
            .expect("a healthcheck")
            .iter()
            .filter_map(|w| w.as_str())
            .collect();
        let url = format!("http://{listen}/readyz");
        assert_eq!(
            test,
            ["CMD", "flotilla-agent", "probe", url.as_str()],
            "{role}"
        );
        let on_service = &agent["depends_on"][role]["condition"];
        assert_eq!(on_service.as_str(), Some("service_healthy"), "{role}");
        assert!(
            services[role]["healthcheck"]["test"].as_vec().is_some(),
            "{role}"
        );
        let waits = &coordinator[format!("{role}-agent").as_str()]["condition"];
        assert_eq!(waits.as_str(), Some("service_healthy"), "{role}");
    }
}

/// The demo's NATS passwords agree: what the server reads (deploy/demo/secrets/nats.env, for the
/// `$FLOTILLA_…_PASSWORD` references of deploy/nats/nats-server.conf) is what each client's
/// secret file holds, and every identity the compose stack uses is declared by the server.
#[test]
fn the_demo_nats_identities_agree() {
    let root = repo_root();
    let server_env = read(&root.join("deploy/demo/secrets/nats.env"));
    let server_config = read(&root.join("deploy/nats/nats-server.conf"));
    let compose = read(&root.join("docker-compose.yml"));
    let password_of = |variable: &str| -> String {
        server_env
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{variable}=")))
            .unwrap_or_else(|| panic!("nats.env does not set {variable}"))
            .to_owned()
    };
    let mut clients: Vec<(String, String, PathBuf)> = vec![(
        "coordinator".into(),
        "FLOTILLA_COORDINATOR_PASSWORD".into(),
        root.join("deploy/demo/secrets/coordinator/nats-password"),
    )];
    for role in ROLES {
        clients.push((
            format!("agent-{role}-a"),
            format!("FLOTILLA_AGENT_{}_A_PASSWORD", role.to_uppercase()),
            root.join(format!("deploy/demo/secrets/{role}/nats-password")),
        ));
    }
    for (user, variable, file) in clients {
        assert!(
            server_config.contains(&format!("user: \"{user}\", password: ${variable}")),
            "deploy/nats/nats-server.conf does not declare {user} with ${variable}"
        );
        assert_eq!(
            read(&file).trim_end(),
            password_of(&variable),
            "{} and nats.env disagree",
            file.display()
        );
        if user != "coordinator" {
            assert!(
                compose.contains(&format!("FLOTILLA_NATS__AUTH__USER: {user}")),
                "the compose stack does not connect as {user}"
            );
        }
    }
    assert!(compose.contains("FLOTILLA_NATS__AUTH__USER: coordinator"));
}
