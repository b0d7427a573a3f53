//! A real nats-server for one test: ephemeral port, JetStream in a temp dir, killed on drop.
//! (A trimmed copy of `flotilla-tests`' `NatsServer`: this crate cannot depend on that one.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nats-server.
pub struct NatsServer {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server; the binary comes from `NATS_SERVER_BIN`, the repository's `.tools/`
    /// (where `scripts/ensure-nats.sh` installs it), or `PATH`.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports_dir = dir.path().join("ports");
        std::fs::create_dir(&ports_dir).expect("ports dir");
        let config = dir.path().join("nats.conf");
        let store = dir.path().join("jetstream");
        std::fs::write(
            &config,
            format!(
                "jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n",
                store.display().to_string()
            ),
        )
        .expect("config");
        let binary = server_binary();
        let child = Command::new(&binary)
            .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
            .arg(&ports_dir)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} (run scripts/ensure-nats.sh): {e}",
                    binary.display()
                )
            });
        let mut server = Self {
            child,
            url: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = std::fs::read_dir(&ports_dir)
                .ok()
                .and_then(|mut entries| entries.next())
                .and_then(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|ports| ports["nats"][0].as_str().map(str::to_owned));
            if let Some(url) = url {
                server.url = url;
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-venv/bin/nats-server");
    if installed.exists() {
        return installed;
    }
    PathBuf::from("nats-server")
}
