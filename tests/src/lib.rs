//! The test harness: a real `nats-server` on an ephemeral port with JetStream in a temp dir, and
//! a fleet of real sample services, each with its real `flotilla-agent` sidecar. The end-to-end
//! tests and the demo (`flotilla-demo`) share it.

pub mod confinement;
pub mod docs;
pub mod faults;
mod fleet;
pub mod invariants;
mod nats;
pub mod proxy;
mod snapshot;
pub mod tap;

pub use fleet::{Fleet, ROLES};
pub use invariants::{Evidence, Scenario, Verdict};
pub use nats::NatsServer;
pub use proxy::Proxy;
pub use snapshot::{Snapshot, snapshot};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_owned()
}

/// A binary of this workspace, built by `cargo build` into the same target directory as the
/// running test or demo.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable has a directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("timed out after {timeout:?} waiting for {what}")
}

/// GET `path` on 127.0.0.1:`port` with a raw HTTP/1.1 request; returns status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &([127, 0, 0, 1], port).into(),
        Duration::from_secs(1),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A plan's `[[service.step]]` that writes `role`'s configuration in the standard layout (T006's
/// unified `config/service.toml`), with `behaviour` appended as its `[behaviour]` table when not
/// empty (the sample service's test knobs, e.g. `fail_health = true`).
pub fn standard_config_step(role: &str, behaviour: &str) -> String {
    let behaviour = if behaviour.is_empty() {
        String::new()
    } else {
        format!("[behaviour]\n{behaviour}\n")
    };
    format!(
        r#"[[service.step]]
action = "write_file"
path = "config/service.toml"
content = """
[service]
name = "{role}"
environment = "demo"
[server]
host = "127.0.0.1"
port = ${{var:port}}
[logging]
format = "json"
level = "info"
file = "${{var:log_file}}"
{behaviour}"""
"#
    )
}

/// The demo plan (`deploy/demo/plan.toml`: the T006 migration, with its cross-service checks)
/// cut down to the services of `roles`.
pub fn demo_plan_text(roles: &[&str]) -> String {
    let mut text = std::fs::read_to_string(repo_root().join("deploy/demo/plan.toml"))
        .expect("the demo plan is readable");
    for role in ROLES.iter().filter(|r| !roles.contains(r)) {
        text = text.replace(&format!("[[service]]\nname = \"{role}\"\n"), "");
    }
    text
}

/// Asserts that every service of `roles` is byte-identical to its snapshot in `before` (in the
/// same order) and answers healthy on the legacy layout: restored.
pub fn assert_restored(fleet: &Fleet, roles: &[&str], before: &[Snapshot]) {
    assert_eq!(roles.len(), before.len(), "one snapshot per role");
    for (role, before) in roles.iter().zip(before) {
        assert_eq!(
            &snapshot(&fleet.root(role)),
            before,
            "{role} is not restored"
        );
        let (status, body) = fleet.health(role).expect("service answers");
        assert_eq!(status, 200, "{role}: {body}");
        assert!(body.contains("\"layout\":\"legacy\""), "{role}: {body}");
    }
}

/// Parses a command's stdout as JSON, showing stdout and stderr when it is not.
pub fn json_stdout(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
