//! The soak on a 3-node cluster, short enough for CI: migrate/rollback cycles in which the node
//! leading one of the streams (commands, events, run records) is killed -9 mid-run and
//! restarted, every cycle checked against I1-I6 by the soak itself. The long soak is the same
//! binary with more cycles (docs/reliability.md).

use flotilla_tests::binary;

#[test]
fn the_soak_with_broker_node_kills_breaks_no_invariant() {
    let out = std::process::Command::new(binary("flotilla-soak"))
        .args(["--cluster", "--cycles", "3", "--seed", "7"])
        .args(["--faults", "broker-kill"])
        .output()
        .expect("flotilla-soak runs (cargo build --workspace --bins)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("faults injected: {BrokerKill: 3}"),
        "{stdout}"
    );
    assert!(stdout.contains("invariant violations: 0"), "{stdout}");
}
