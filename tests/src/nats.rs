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

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return path.into();
    }
    let installed = crate::repo_root().join(".tools/nats-venv/bin/nats-server");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("nats-server")
}
