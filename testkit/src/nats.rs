//! A real nats-server for one test: ephemeral port, JetStream in a temp dir, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// A running nats-server.
pub struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    /// What a restart needs: the configuration file and its environment.
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// Starts a server; the binary comes from `NATS_SERVER_BIN`, the repository's `.tools/`
    /// (where `scripts/ensure-nats.sh` installs it), or `PATH`.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, "jetstream {\n  sync_interval: always\n}\n")?;
        Self::start_in(dir, &config, &[])
    }

    /// Starts a server with the configuration file `config` (e.g. the shipped secure one), with
    /// `env` for the variables it references. Its port, monitoring port and store directory are
    /// overridden for the test.
    pub fn start_with_config(
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_in(tempfile::tempdir()?, config, env)
    }

    fn start_in(
        dir: tempfile::TempDir,
        config: &std::path::Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let ports_dir = dir.path().join("ports");
        std::fs::create_dir(&ports_dir)?;
        let binary = server_binary();
        let child = Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                "-1",
                "-m",
                "-1",
                "--ports_file_dir",
            ])
            .arg(&ports_dir)
            .arg("-sd")
            .arg(dir.path().join("jetstream"))
            .arg("-c")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (run scripts/ensure-nats.sh)",
                    binary.display()
                )
            })?;
        let mut server = Self {
            child,
            url: String::new(),
            _dir: dir,
            config: config.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut url = None;
        crate::wait_for("nats-server's ports file", Duration::from_secs(10), || {
            url = std::fs::read_dir(&ports_dir)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(str::to_owned));
            url.is_some()
        })?;
        server.url = url.expect("waited for it");
        Ok(server)
    }

    /// The client URL (`tls://…` when the configuration has a `tls {}` block).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process ID of the running server (a new one after [`NatsServer::restart`]).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The monitoring (HTTP) port of the running server, from its ports file; `None` when the
    /// configuration disables monitoring.
    pub fn monitoring_port(&self) -> Option<u16> {
        let file = self
            ._dir
            .path()
            .join("ports")
            .join(format!("nats-server_{}.ports", self.child.id()));
        let ports: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()?;
        ports["monitoring"][0]
            .as_str()?
            .rsplit(':')
            .next()?
            .trim_end_matches('/')
            .parse()
            .ok()
    }

    /// The server's client connections (monitoring endpoint `/connz?auth=true`).
    pub fn connections(&self) -> Vec<serde_json::Value> {
        let port = self
            .monitoring_port()
            .expect("the monitoring port is enabled");
        // HTTP/1.0, so that the answer is not chunked.
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(stream, "GET /connz?auth=true&limit=1000 HTTP/1.0\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        assert!(head.starts_with("HTTP/1.0 200"), "{response}");
        let connz: serde_json::Value = serde_json::from_str(body).unwrap();
        connz["connections"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return path.into();
    }
    let installed = crate::repo_root().join(".tools/nats-venv/bin/nats-server");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// The JetStream store directory, kept across [`NatsServer::restart`].
    pub fn store_dir(&self) -> PathBuf {
        self._dir.path().join("jetstream")
    }

    /// The client port, kept across [`NatsServer::restart`].
    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("the server URL ends with its port")
    }

    /// Kills the server with SIGKILL (no clean shutdown, no flush) and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, with the same store directory and
    /// configuration, after [`NatsServer::kill`] (or kills it first). Returns once the server
    /// takes connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let ports_dir = self._dir.path().join("ports");
        for entry in std::fs::read_dir(&ports_dir)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let port = self.port();
        let binary = server_binary();
        // The port may linger for a moment after a SIGKILL: retry the bind briefly.
        let mut last = None;
        for _ in 0..50 {
            let child = Command::new(&binary)
                .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "-1"])
                .arg("--ports_file_dir")
                .arg(&ports_dir)
                .arg("-sd")
                .arg(self.store_dir())
                .arg("-c")
                .arg(&self.config)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot restart {}", binary.display()))?;
            self.child = child;
            let pid = self.child.id();
            let ready =
                crate::wait_for("nats-server's ports file", Duration::from_secs(10), || {
                    if let Ok(Some(_)) = self.child.try_wait() {
                        return true;
                    }
                    ports_dir.join(format!("nats-server_{pid}.ports")).exists()
                });
            match self.child.try_wait() {
                Ok(None) if ready.is_ok() => return Ok(()),
                Ok(None) => last = Some(anyhow::anyhow!("nats-server did not come back")),
                _ => {
                    last = Some(anyhow::anyhow!(
                        "nats-server exited at once (port {port} busy?)"
                    ));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nats-server did not restart")))
    }
}
