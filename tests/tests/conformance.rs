//! The contract, spoken by another implementation: a Python client written from
//! docs/wire-protocol.md and schemas/json alone (tests/conformance/client.py) drives a real
//! agent next to a real sample service — discovery, a signed preview, migrate and rollback, an unsigned
//! and a forged command — and validates every message it sees against the schemas.
//! Its dependencies come from scripts/ensure-python-deps.sh (scripts/test.sh runs it).

use std::path::PathBuf;
use std::process::Command;

use flotilla_tests::{Fleet, NatsServer, repo_root, snapshot};

/// The Python that has the client's pinned dependencies.
fn python() -> PathBuf {
    let python = std::env::var_os("FLOTILLA_CONFORMANCE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools/conformance-venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run scripts/ensure-python-deps.sh (scripts/test.sh does)",
        python.display()
    );
    python
}

#[test]
fn a_python_client_written_from_the_docs_migrates_and_rolls_back_a_real_agent() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let root = fleet.root("inference");
    let before = snapshot(&root);

    let out = Command::new(python())
        .arg(repo_root().join("tests/conformance/client.py"))
        .args(["--nats", nats.url(), "--key"])
        .arg(fleet.dir().join("coordinator.key"))
        .args(["--service", "inference", "--instance", "a"])
        .output()
        .expect("the conformance client runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the conformance client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    assert!(stdout.contains("conformance: passed"), "{stdout}\n{stderr}");
    assert_eq!(
        snapshot(&root),
        before,
        "the service's tree is not back to where it started after the rollback"
    );
}
