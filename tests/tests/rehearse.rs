//! `--rehearse` runs every stage a real run runs (waves, validation, the cross-service checks,
//! the correlation check) before it restores the fleet: what would fail the real run fails the
//! rehearsal, and the fleet still ends byte-identical to where it started.

use flotilla_tests::{Fleet, NatsServer, assert_restored, demo_plan_text, json_stdout, snapshot};

#[test]
fn a_rehearsal_fails_on_a_cross_service_check_a_real_run_would_fail_and_restores_the_fleet() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let before: Vec<_> = roles.iter().map(|r| snapshot(&fleet.root(r))).collect();
    // The demo plan, but legacy.conf (its api_key in clear) is left behind: every service
    // migrates and validates, and only the cross-service check sees the literal secret.
    let demo = demo_plan_text(&roles);
    let keep_legacy = demo.replace(
        "[[step]]\naction = \"delete\"\npath = \"legacy.conf\"\n",
        "",
    );
    assert_ne!(keep_legacy, demo);
    let plan = fleet.write_plan("keep-legacy.toml", &keep_legacy);

    let out = fleet.flotilla(&[
        "migrate",
        plan.to_str().unwrap(),
        "--rehearse",
        "--output",
        "json",
    ]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");
    assert_eq!(report["status"], "failed", "{report:#}");
    assert_eq!(report["rehearsal"], true);
    let cross = &report["cross_service"];
    assert_eq!(cross["ok"], false, "{cross:#}");
    assert!(
        cross["problems"]
            .to_string()
            .contains("legacy.conf holds a literal secret"),
        "{cross:#}"
    );
    for service in report["services"].as_array().unwrap() {
        assert_eq!(service["status"], "rolled_back", "{service:#}");
        assert_eq!(service["rollback_validated"], true, "{service:#}");
        assert!(
            service["reason"]
                .as_str()
                .unwrap()
                .contains("cross-service checks failed"),
            "{service:#}"
        );
    }
    assert_restored(&fleet, &roles, &before);

    // The text report says the rehearsal failed, and why.
    let run = report["run_id"].as_str().unwrap();
    let status = fleet.flotilla(&["status", run]);
    assert_eq!(status.status.code(), Some(1));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(
            "REHEARSAL FAILED: the cross-service checks failed: 0 succeeded, 2 rolled back"
        ),
        "{text}"
    );
}
