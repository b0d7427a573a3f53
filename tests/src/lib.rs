//! The end-to-end harness: fault injection, the crash-safety invariants, a NATS proxy, a bus tap,
//! the secure broker variants and tree snapshots, over the shared test kit (`flotilla-testkit`:
//! the nats-server, the fleet, `Fleet::migrate`, the plan builder), which it re-exports so that
//! the tests import one crate. The end-to-end tests, the demo (`flotilla-demo`) and the soak
//! (`flotilla-soak`) share it.

pub mod confinement;
pub mod docs;
pub mod faults;
pub mod invariants;
pub mod proxy;
pub mod run_store;
pub mod secure;
mod snapshot;
pub mod tap;

pub use flotilla_testkit::{
    Cluster, ClusterOptions, Fleet, NatsServer, Plan, Prometheus, ROLES, Service, binary,
    demo_plan_text, flotilla_against, flotilla_command, free_port, http_get, json_stdout, plan,
    repo_root, report, standard_config_step, wait_for,
};
pub use invariants::{Evidence, Scenario, Verdict};
pub use proxy::Proxy;
pub use snapshot::{Snapshot, snapshot};

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
