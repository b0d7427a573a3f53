//! The invariant checker itself: evidence from a clean run passes, and each kind of damage a
//! fault could do (a torn tree, a step run twice, a lost or contradicted outcome, an act on a
//! forbidden command, a run that never ends) is caught under the right invariant. A checker
//! that cannot fail proves nothing.

use std::time::Duration;

use flotilla_tests::{Evidence, Fleet, NatsServer, Scenario, json_stdout};
use serde_json::json;

#[test]
fn the_checker_catches_each_kind_of_damage_under_its_invariant() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &["inference"]).unwrap();
    let scenario = Scenario::new(&fleet, &["inference"], Duration::from_secs(30));
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, "checked", "", ""));
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run = report["run_id"].as_str().unwrap();
    let clean = Evidence::collect(&fleet, &scenario, run).unwrap();
    let verdict = scenario.check(&clean, Some(Duration::from_secs(1)));
    verdict.assert_ok("clean");
    for invariant in ["I1", "I2", "I3", "I4", "I6"] {
        assert!(
            verdict.checked.contains_key(invariant),
            "{invariant} not checked"
        );
    }
    let migrate_id = clean.targets[0]["migrate"]["command"]["command_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let broken = |evidence: &Evidence, scenario: &Scenario, took: Option<Duration>| {
        scenario.check(evidence, took).broken()
    };
    let only = |set: std::collections::BTreeSet<&'static str>, invariant: &str| {
        assert!(set.contains(invariant), "{invariant} not caught: {set:?}");
    };

    // I1: the coordinator's record says something else than the journal.
    let mut e = clean.clone();
    e.targets[0]["migrate"]["result"]["outcome"] = json!("rolled_back");
    only(broken(&e, &scenario, None), "I1");
    // I1: a command left without a terminal state in a finished run.
    let mut e = clean.clone();
    e.targets[0]["finalize"]["result"] = json!(null);
    only(broken(&e, &scenario, None), "I1");
    // I2: a journalled outcome that never reached the stream.
    let mut e = clean.clone();
    e.events.retain(|ev| {
        !(ev["schema"] == "flotilla.result.v1" && ev["command_id"] == migrate_id.as_str())
    });
    only(broken(&e, &scenario, None), "I2");
    // I3: the step ran twice.
    let mut e = clean.clone();
    e.counters
        .get_mut("inference")
        .unwrap()
        .push("checked".into());
    only(broken(&e, &scenario, None), "I3");
    // I3: the journal accepted one command twice.
    let mut e = clean.clone();
    let accepted = e.journals["inference"]
        .iter()
        .find(|r| r["record"] == "accepted")
        .unwrap()
        .clone();
    e.journals.get_mut("inference").unwrap().push(accepted);
    only(broken(&e, &scenario, None), "I3");
    // I4: a torn tree (post-migration config, legacy file back), and a stray staged tree.
    let mut e = clean.clone();
    let tree = e.trees.get_mut("inference").unwrap();
    tree.insert(
        "legacy.conf".into(),
        scenario.before["inference"]["legacy.conf"].clone(),
    );
    only(broken(&e, &scenario, None), "I4");
    let mut e = clean.clone();
    e.strays.push(".inference.staging".into());
    only(broken(&e, &scenario, None), "I4");
    // I4: the tree is the old one although the journal says migrated.
    let mut e = clean.clone();
    e.trees
        .insert("inference".into(), scenario.before["inference"].clone());
    only(broken(&e, &scenario, None), "I4");
    // I5: a forbidden command's step ran.
    let mut forbidding = scenario.clone();
    forbidding.forbid("checked");
    only(broken(&clean, &forbidding, None), "I5");
    // I5: a forbidden command was acted on (it got to apply).
    let mut forbidding = scenario.clone();
    forbidding.forbid(migrate_id.clone());
    only(broken(&clean, &forbidding, None), "I5");
    // I6: terminal, but too late; or never.
    only(broken(&clean, &scenario, Some(scenario.bound * 2)), "I6");
    let mut e = clean.clone();
    e.report["status"] = json!("running");
    only(broken(&e, &scenario, None), "I6");
}
