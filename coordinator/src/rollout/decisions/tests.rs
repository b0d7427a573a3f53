//! The engine's decisions over hand-made run records: no bus, no agent, milliseconds.

use flotilla_schemas::{
    Action, Command, CommandId, InstanceId, Outcome, RunId, RunResult, ServiceName,
};
use time::OffsetDateTime;

use super::*;
use crate::plan::OnFailure;
use crate::store::ActionKind;
use crate::store::{CommandRecord, RunRecord, TargetRecord};

fn target(name: &str) -> TargetRecord {
    TargetRecord {
        service: ServiceName::parse(name).unwrap(),
        instance: InstanceId::parse("i1").unwrap(),
        wave: 0,
        migrate: None,
        rollback: None,
        finalize: None,
        agent_keys: Vec::new(),
        bake_failure: None,
    }
}

/// A recorded command, sent or not, with the outcome of its result if it has one.
fn command(t: &TargetRecord, sent: bool, outcome: Option<Outcome>) -> CommandRecord {
    let now = OffsetDateTime::now_utc();
    let command = Command {
        schema: Default::default(),
        command_id: CommandId::new(),
        run_id: RunId::new(),
        service: t.service.clone(),
        instance: t.instance.clone(),
        issued_at: now,
        expires_at: now,
        action: Action::Finalize {
            migration: CommandId::new(),
        },
    };
    let result = outcome.map(|outcome| {
        serde_json::from_value::<RunResult>(serde_json::json!({
            "schema": "flotilla.result.v1",
            "run_id": command.run_id,
            "command_id": command.command_id,
            "service": t.service,
            "instance": t.instance,
            "at": "2026-01-01T00:00:00Z",
            "outcome": outcome,
        }))
        .unwrap()
    });
    CommandRecord {
        command,
        sent_at: sent.then_some(now),
        result,
        timed_out: false,
        not_delivered: None,
        cause: None,
        digest: None,
    }
}

fn record(targets: Vec<TargetRecord>) -> RunRecord {
    let mut record = RunRecord::new(RunId::new(), "p", "p.toml", "", &[], &[], false);
    record.targets = targets;
    record
}

#[test]
fn a_command_is_dispatched_until_it_went_out_or_ended() {
    let mut t = target("api");
    assert!(
        needs_dispatch(&t, ActionKind::Migrate),
        "nothing recorded yet"
    );
    t.migrate = Some(command(&t, false, None));
    assert!(
        needs_dispatch(&t, ActionKind::Migrate),
        "recorded but never sent"
    );
    assert!(!in_flight(&t, ActionKind::Migrate));
    t.migrate = Some(command(&t, true, None));
    assert!(!needs_dispatch(&t, ActionKind::Migrate));
    assert!(in_flight(&t, ActionKind::Migrate), "sent, no answer");
    t.migrate.as_mut().unwrap().timed_out = true;
    assert!(!in_flight(&t, ActionKind::Migrate), "given up on");
    assert!(
        needs_dispatch(&t, ActionKind::Rollback),
        "each kind has its own slot"
    );
}

#[test]
fn migrated_means_succeeded_and_not_finalized() {
    let mut t = target("api");
    assert!(!migrated(&t));
    t.migrate = Some(command(&t, true, Some(Outcome::Succeeded)));
    assert!(migrated(&t));
    assert!(!migrate_failed(&t));
    t.finalize = Some(command(&t, true, Some(Outcome::Finalized)));
    assert!(!migrated(&t));
}

#[test]
fn a_migrate_given_up_on_may_have_happened_and_counts_as_failed() {
    let mut t = target("api");
    t.migrate = Some(command(&t, true, None));
    assert!(
        !maybe_migrated(&t) && !migrate_failed(&t),
        "still in flight"
    );
    t.migrate.as_mut().unwrap().timed_out = true;
    assert!(maybe_migrated(&t) && migrate_failed(&t));
    let mut u = target("web");
    u.migrate = Some(command(&u, true, None));
    u.migrate.as_mut().unwrap().not_delivered = Some("no stream".into());
    assert!(maybe_migrated(&u) && migrate_failed(&u));
}

#[test]
fn failures_count_every_migrate_that_did_not_succeed() {
    let mut ok = target("a");
    ok.migrate = Some(command(&ok, true, Some(Outcome::Succeeded)));
    let mut refused = target("b");
    refused.migrate = Some(command(&refused, true, Some(Outcome::Refused)));
    let mut restored = target("c");
    restored.migrate = Some(command(&restored, true, Some(Outcome::RolledBack)));
    let waiting = target("d");
    assert_eq!(failures(&record(vec![ok, refused, restored, waiting])), 2);
}

#[test]
fn a_broken_budget_stops_dispatch_unless_the_plan_continues() {
    assert!(stops_dispatch(true, OnFailure::Rollback));
    assert!(stops_dispatch(true, OnFailure::Leave));
    assert!(!stops_dispatch(true, OnFailure::Continue));
    assert!(!stops_dispatch(false, OnFailure::Rollback));
}

#[test]
fn after_the_waves_a_broken_budget_rolls_back_or_leaves_and_a_rehearsal_always_restores() {
    use AfterWaves::*;
    for on_failure in [OnFailure::Rollback, OnFailure::Leave, OnFailure::Continue] {
        assert_eq!(after_waves(false, false, on_failure), Finalize);
        assert_eq!(after_waves(false, true, on_failure), Finalize);
        assert_eq!(after_waves(true, true, on_failure), RollBack);
    }
    assert_eq!(after_waves(true, false, OnFailure::Rollback), RollBack);
    assert_eq!(after_waves(true, false, OnFailure::Leave), Leave);
    assert_eq!(after_waves(true, false, OnFailure::Continue), Leave);
}

#[test]
fn the_rollback_cause_names_the_failed_check_or_the_failed_service() {
    let check = Some("the correlation check");
    assert_eq!(
        rollback_cause(check, false, false),
        "rolled back because the correlation check failed"
    );
    assert_eq!(
        rollback_cause(check, true, false),
        "rehearsal: restored; the correlation check failed"
    );
    assert_eq!(
        rollback_cause(None, true, false),
        "rehearsal: restored after validation and proved healthy"
    );
    assert_eq!(
        rollback_cause(None, true, true),
        "rolled back because another service of the run failed"
    );
    assert_eq!(
        rollback_cause(None, false, true),
        "rolled back because another service of the run failed"
    );
}

#[test]
fn a_rehearsal_is_rehearsed_only_with_every_rollback_proved_and_no_failed_check() {
    let mut a = target("a");
    a.rollback = Some(command(&a, true, Some(Outcome::RolledBack)));
    let mut b = target("b");
    b.rollback = Some(command(&b, true, Some(Outcome::RolledBack)));
    let good = record(vec![a.clone(), b.clone()]);
    assert!(rehearsed(&good, None));
    assert!(!rehearsed(&good, Some("the cross-service checks")));
    b.rollback = Some(command(&b, true, Some(Outcome::RollbackFailed)));
    assert!(!rehearsed(&record(vec![a.clone(), b]), None));
    assert!(
        !rehearsed(&record(vec![a, target("c")]), None),
        "never rolled back"
    );
}

#[test]
fn a_rollback_given_up_on_is_sent_again_but_a_migrate_is_not() {
    let mut t = target("api");
    t.migrate = Some(command(&t, true, Some(Outcome::Succeeded)));
    let mut rollback = command(&t, true, None);
    rollback.not_delivered = Some("no stream leader".into());
    t.rollback = Some(rollback.clone());
    assert!(needs_dispatch(&t, ActionKind::Rollback), "not delivered");
    rollback.not_delivered = None;
    rollback.timed_out = true;
    t.rollback = Some(rollback);
    assert!(needs_dispatch(&t, ActionKind::Rollback), "no answer");
    t.rollback = Some(command(&t, true, Some(Outcome::RolledBack)));
    assert!(!needs_dispatch(&t, ActionKind::Rollback), "answered");

    let mut migrate = command(&t, true, None);
    migrate.not_delivered = Some("expired".into());
    t.migrate = Some(migrate);
    assert!(
        !needs_dispatch(&t, ActionKind::Migrate),
        "a failed migrate is rolled back, never sent again"
    );
}

#[test]
fn a_run_is_unresolved_while_a_rollback_it_needs_has_no_answer() {
    let mut migrated = target("api");
    migrated.migrate = Some(command(&migrated, true, Some(Outcome::Succeeded)));
    let mut lost = target("db");
    let mut migrate = command(&lost, true, None);
    migrate.timed_out = true;
    lost.migrate = Some(migrate);
    let mut untouched = target("web");
    untouched.migrate = Some(command(&untouched, true, Some(Outcome::RolledBack)));
    let mut run = record(vec![migrated, lost, untouched]);
    assert_eq!(
        unresolved_rollbacks(&run, None),
        vec![0, 1],
        "none sent yet"
    );

    let mut undelivered = command(&run.targets[0], true, None);
    undelivered.not_delivered = Some("no stream leader".into());
    run.targets[0].rollback = Some(undelivered);
    run.targets[1].rollback = Some(command(&run.targets[1], true, Some(Outcome::Refused)));
    assert_eq!(
        unresolved_rollbacks(&run, None),
        vec![0],
        "the agent of db said it had nothing to roll back; api's rollback never arrived"
    );
    let db = ServiceName::parse("db").unwrap();
    assert!(unresolved_rollbacks(&run, Some(&db)).is_empty());

    run.targets[0].rollback = Some(command(&run.targets[0], true, Some(Outcome::RolledBack)));
    assert!(unresolved_rollbacks(&run, None).is_empty());
}

#[test]
fn dispatch_waits_for_a_tenth_of_the_cap_unless_what_is_left_fits() {
    // No cap: everything queued, a batch at a time.
    assert_eq!(dispatch_now(usize::MAX, 0, 1200, 500), 500);
    assert_eq!(dispatch_now(usize::MAX, 700, 3, 500), 3);
    // Cap 500: the first batch fills it; then nothing until 50 are free.
    assert_eq!(dispatch_now(500, 0, 50_000, 500), 500);
    assert_eq!(dispatch_now(500, 499, 50_000, 500), 0);
    assert_eq!(dispatch_now(500, 451, 50_000, 500), 0);
    assert_eq!(dispatch_now(500, 450, 50_000, 500), 50);
    // The last few go once they all fit.
    assert_eq!(dispatch_now(500, 490, 7, 500), 7);
    assert_eq!(dispatch_now(500, 495, 7, 500), 0);
    // Small caps are refilled slot by slot, as before.
    assert_eq!(dispatch_now(1, 0, 5, 500), 1);
    assert_eq!(dispatch_now(1, 1, 5, 500), 0);
    assert_eq!(dispatch_now(5, 4, 5, 500), 1);
    // Nothing queued, nothing sent.
    assert_eq!(dispatch_now(500, 0, 0, 500), 0);
}
