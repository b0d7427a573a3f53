//! A fleet of sample services with their agents, laid out in a temp dir from the demo's legacy
//! configurations (`deploy/demo/legacy/<role>/`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

mod agents;
mod cli;
mod external;
mod foreign;

/// The five services of T006.
pub const ROLES: [&str; 5] = ["inference", "training", "ingest", "execution", "preprocess"];

/// How often (ms) the services export their batched spans and logs.
const SERVICE_BATCH_DELAY_MS: u64 = 500;

/// One service and its agent.
struct Member {
    port: u16,
    agent: Option<Child>,
    config: PathBuf,
    env: Vec<(String, String)>,
}

/// Sample services with sidecar agents, stopped on drop.
pub struct Fleet {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    nats_url: String,
    members: BTreeMap<String, Member>,
    /// PID files of services run outside any agent (external supervisor), killed on drop.
    external_pid_files: Vec<PathBuf>,
    /// Environment of every `flotilla` run: the signing key, and any NATS identity.
    cli_env: Vec<(String, String)>,
    /// The public key the agents trust.
    trusted_key: String,
}

impl Fleet {
    /// Lays out and starts `roles` against the NATS server at `nats_url`, in a fresh temp dir.
    pub fn start(nats_url: &str, roles: &[&str]) -> anyhow::Result<Self> {
        Self::start_with_env(nats_url, roles, &[])
    }

    /// Like [`Fleet::start`], with extra environment for every agent (e.g. `FLOTILLA_AGENT__…`
    /// overrides or a test crash point).
    pub fn start_with_env(
        nats_url: &str,
        roles: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(nats_url, roles, &|_| env.clone(), Vec::new())
    }

    /// The general form: `agent_env` gives each role's agent its extra environment (e.g. its own
    /// NATS identity), `cli_env` is the environment of every `flotilla` this fleet runs.
    pub fn start_with(
        nats_url: &str,
        roles: &[&str],
        agent_env: &dyn Fn(&str) -> Vec<(String, String)>,
        cli_env: Vec<(String, String)>,
    ) -> anyhow::Result<Self> {
        let mut fleet = Self::empty(nats_url, cli_env)?;
        fleet.setup()?;
        fleet.add_and_start(roles, agent_env)?;
        fleet.wait_ready(Duration::from_secs(30))?;
        Ok(fleet)
    }

    /// `flotilla setup`: the documented order is the streams first, so that the agents find them
    /// at once.
    fn setup(&self) -> anyhow::Result<()> {
        let out = self.flotilla(&["setup"]);
        anyhow::ensure!(
            out.status.success(),
            "flotilla setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Lays out and starts the agents of `roles`, without waiting for them to answer. On a fleet
    /// from [`Fleet::empty`], no `flotilla` command has run (none created the streams), as when
    /// a fleet comes up before anyone ran `flotilla setup`.
    pub fn add_and_start(
        &mut self,
        roles: &[&str],
        agent_env: &dyn Fn(&str) -> Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        for role in roles {
            let mut member = self.lay_out(role)?;
            member.env = agent_env(role);
            self.members.insert((*role).to_owned(), member);
        }
        self.connect_execution_to_inference()?;
        for role in roles {
            self.start_agent(role)?;
        }
        Ok(())
    }

    /// A fleet with no member yet, in a fresh temp dir, with its own command-signing key: its
    /// agents trust that key and its `flotilla` signs with it (`cli_env` as in
    /// [`Fleet::start_with`]).
    pub fn empty(nats_url: &str, cli_env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir()?;
        let dir = temp.path().to_owned();
        let key_path = dir.join("coordinator.key");
        let key = flotilla_bus::signing::SigningKey::generate()?;
        key.save(&key_path)?;
        Ok(Fleet {
            dir,
            _temp: Some(temp),
            nats_url: nats_url.to_owned(),
            members: BTreeMap::new(),
            external_pid_files: Vec::new(),
            cli_env: [(
                "FLOTILLA_SIGNING_KEY".to_owned(),
                key_path.display().to_string(),
            )]
            .into_iter()
            .chain(cli_env)
            .collect(),
            trusted_key: key.public_key_text(),
        })
    }

    fn lay_out(&self, role: &str) -> anyhow::Result<Member> {
        let port = crate::free_port();
        let root = self.root(role);
        let (state, secrets, logs) = (
            self.dir.join("state").join(role),
            self.dir.join("secrets").join(role),
            self.dir.join("logs"),
        );
        for dir in [&root, &state, &secrets, &logs] {
            std::fs::create_dir_all(dir)?;
        }
        let log_file = logs.join(format!("{role}.log"));
        let legacy = legacy_conf(role, port, &log_file)?;
        std::fs::write(root.join("legacy.conf"), legacy)?;
        std::fs::write(secrets.join("API_KEY"), format!("demo-{role}-key-123\n"))?;
        let config = self.dir.join(format!("agent-{role}.toml"));
        let sample = crate::binary("flotilla-sample");
        std::fs::write(
            &config,
            format!(
                r#"[nats]
url = "{nats}"

[agent]
instance = "a"
state_dir = "{state}"

[service]
name = "{role}"
root = "{root}"
command = ["{sample}", "--role", "{role}", "--root", "{root}"]
health_url = "http://127.0.0.1:{port}/health"
startup_timeout = "15s"

[vars]
port = "{port}"
log_file = "{log}"

[secrets]
dir = "{secrets}"

[commands]
allow = ["true", "false", "sh", "{sample}"]

[security]
trusted_keys = ["{trusted}"]

# Last, so that lines appended to the file (an upstream) land in it. The service exports its own
# spans and logs; a short batch delay lets `verify` see them soon after a request.
[service.env]
FLOTILLA_SAMPLE_NATS_URL = "{nats}"
OTEL_BSP_SCHEDULE_DELAY = "{batch_delay_ms}"
OTEL_BLRP_SCHEDULE_DELAY = "{batch_delay_ms}"
"#,
                nats = self.nats_url,
                trusted = self.trusted_key,
                state = state.display(),
                root = root.display(),
                sample = sample.display(),
                log = log_file.display(),
                secrets = secrets.display(),
                batch_delay_ms = SERVICE_BATCH_DELAY_MS,
            ),
        )?;
        Ok(Member {
            port,
            agent: None,
            config,
            env: Vec::new(),
        })
    }

    /// Starts (or restarts) the agent of `role`.
    pub fn start_agent(&mut self, role: &str) -> anyhow::Result<()> {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("agent-{role}.log")))?;
        let member = self.members.get_mut(role).context("unknown role")?;
        let child = Command::new(crate::binary("flotilla-agent"))
            .arg("--config")
            .arg(&member.config)
            .env("NO_COLOR", "1")
            .envs(member.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("cannot start flotilla-agent")?;
        member.agent = Some(child);
        Ok(())
    }

    /// Forgets the extra environment of `role`'s agent, for its next start.
    pub fn clear_agent_env(&mut self, role: &str) {
        if let Some(member) = self.members.get_mut(role) {
            member.env.clear();
        }
    }

    /// Kills the agent of `role` with SIGKILL: no clean-up, its service keeps running.
    pub fn kill_agent(&mut self, role: &str) {
        if let Some(mut child) = self.members.get_mut(role).and_then(|m| m.agent.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The NATS URL the fleet uses.
    pub fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// Stops the agent of `role` with SIGTERM and waits. Its service keeps running (the next
    /// agent adopts it), unless the agent is configured with `stop_service_on_exit`.
    pub fn stop_agent(&mut self, role: &str) {
        if let Some(mut child) = self.members.get_mut(role).and_then(|m| m.agent.take()) {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }

    /// The PID of `role`'s service, from its agent's PID file, while that process runs.
    pub fn service_pid(&self, role: &str) -> Option<u32> {
        let text =
            std::fs::read_to_string(self.dir.join("state").join(role).join("service.pid")).ok()?;
        let pid: u32 = text.split_whitespace().next()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
        (!zombie && String::from_utf8_lossy(&cmdline).contains("flotilla-sample")).then_some(pid)
    }

    /// The live sample-service processes serving `role`'s root (found by their command line,
    /// which names the root, unique to this fleet): whichever agent started them, whatever its
    /// PID file says now.
    pub fn service_processes(&self, role: &str) -> Vec<u32> {
        let root = self.root(role);
        let root = root.as_os_str().as_encoded_bytes();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let ours = args.first()?.ends_with(b"flotilla-sample")
                    && args.windows(2).any(|w| w[0] == b"--root" && w[1] == root);
                let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                let zombie = stat
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
                (ours && !zombie).then_some(pid)
            })
            .collect()
    }

    /// Stops `role`'s service (SIGTERM, then SIGKILL after 5 s) and waits for it to go.
    pub fn stop_service(&self, role: &str) {
        let pids = self.service_processes(role);
        for pid in &pids {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        let gone = |pids: &[u32]| {
            let left = self.service_processes(role);
            pids.iter().all(|p| !left.contains(p))
        };
        if crate::wait_for("the service to stop", Duration::from_secs(5), || {
            gone(&pids)
        })
        .is_err()
        {
            for pid in &pids {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }

    /// Waits until every agent answers presence.
    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let expected = self.members.len();
        let mut seen = 0;
        crate::wait_for("every agent to answer presence", timeout, || {
            seen = self.agents().map(|a| a.len()).unwrap_or(0);
            seen >= expected
        })
        .with_context(|| {
            format!(
                "{seen} of {expected} agents answered; agent logs in {}",
                self.dir.display()
            )
        })
    }

    /// The fleet's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The service root of `role`.
    pub fn root(&self, role: &str) -> PathBuf {
        self.dir.join("services").join(role)
    }

    /// The service's log file (outside its root, so a restore does not rewind it).
    pub fn service_log(&self, role: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{role}.log"))
    }

    /// The HTTP port of `role`.
    pub fn port(&self, role: &str) -> u16 {
        self.members[role].port
    }

    /// GET /health of `role`: status and body.
    pub fn health(&self, role: &str) -> Option<(u16, String)> {
        crate::http_get(self.port(role), "/health")
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let roles: Vec<String> = self.members.keys().cloned().collect();
        for role in roles {
            self.stop_agent(&role);
            // The service outlives its agent (the agent's default): stop it too, through the
            // PID file its agent keeps, if that PID still runs the sample service.
            self.stop_service(&role);
        }
        for pid_file in &self.external_pid_files {
            if let Ok(pid) = std::fs::read_to_string(pid_file) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

impl Fleet {
    /// The key this fleet's `flotilla` signs commands with.
    pub fn signing_key(&self) -> flotilla_bus::signing::SigningKey {
        flotilla_bus::signing::SigningKey::load(&self.dir.join("coordinator.key"))
            .expect("the fleet's key")
    }
}

impl Fleet {
    /// Points execution's `/execute` at inference (`FLOTILLA_SAMPLE_UPSTREAM` in its
    /// `[service.env]`), when both are in the fleet.
    fn connect_execution_to_inference(&self) -> anyhow::Result<()> {
        let (Some(execution), Some(inference)) =
            (self.members.get("execution"), self.members.get("inference"))
        else {
            return Ok(());
        };
        let mut config = std::fs::OpenOptions::new()
            .append(true)
            .open(&execution.config)?;
        use std::io::Write;
        writeln!(
            config,
            "FLOTILLA_SAMPLE_UPSTREAM = \"http://127.0.0.1:{}\"",
            inference.port
        )?;
        Ok(())
    }
}

/// The demo's legacy configuration of `role` (`deploy/demo/legacy/<role>/legacy.conf`), on
/// `port` and logging to `log_file`.
fn legacy_conf(role: &str, port: u16, log_file: &Path) -> anyhow::Result<String> {
    let legacy = std::fs::read_to_string(
        crate::repo_root()
            .join("deploy/demo/legacy")
            .join(role)
            .join("legacy.conf"),
    )
    .with_context(|| format!("legacy configuration of {role}"))?;
    Ok(legacy
        .lines()
        .map(|line| match line.split_once('=') {
            Some(("listen_port", _)) => format!("listen_port={port}\n"),
            Some(("log_file", _)) => format!("log_file={}\n", log_file.display()),
            _ => format!("{line}\n"),
        })
        .collect())
}
