use flotilla_schemas::{Action, Command, CommandId, InstanceId, RunResult, ServiceName};

use super::*;
use crate::plan::Plan;
use crate::store::{CommandRecord, RunRecord};

const PLAN: &str = "name = \"p\"\n[[wave]]\nname = \"canary\"\nservices = [\"a\"]\n[[step]]\naction = \"restart\"\n[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n[[service]]\nname = \"c\"\n";

fn record() -> RunRecord {
    let plan = Plan::parse(PLAN).unwrap();
    let targets: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|s| {
            (
                ServiceName::parse(*s).unwrap(),
                InstanceId::parse("x").unwrap(),
            )
        })
        .collect();
    RunRecord::new(
        RunId::new(),
        "p",
        "p.toml",
        PLAN,
        &plan.waves,
        &targets,
        false,
    )
}

fn command(record: &RunRecord, t: usize) -> CommandRecord {
    let now = OffsetDateTime::now_utc();
    CommandRecord {
        command: Command {
            schema: Default::default(),
            command_id: CommandId::new(),
            run_id: record.run_id,
            service: record.targets[t].service.clone(),
            instance: record.targets[t].instance.clone(),
            issued_at: now,
            expires_at: now,
            action: Action::Finalize {
                migration: CommandId::new(),
            },
        },
        sent_at: Some(now),
        result: None,
        timed_out: false,
        not_delivered: None,
        cause: None,
        digest: None,
    }
}

fn result(c: &CommandRecord, outcome: Outcome, failed: Option<Phase>) -> RunResult {
    RunResult {
        reason: Some("health <check> said \"no\" & more".into()),
        phases: failed
            .map(|phase| PhaseReport {
                phase,
                status: PhaseStatus::Failed,
                duration_ms: 3,
                detail: None,
                started_at: None,
            })
            .into_iter()
            .collect(),
        ..RunResult::of(&c.command, OffsetDateTime::now_utc(), outcome)
    }
}

#[test]
fn the_taxonomy_and_exit_codes_follow_the_record() {
    let mut record = record();
    let mut a = command(&record, 0);
    a.result = Some(result(&a, Outcome::RolledBack, Some(Phase::Validate)));
    record.targets[0].migrate = Some(a);
    record.status = RunStatus::Failed;
    let report = RunReport::from_record(&record);
    assert_eq!(report.services[0].status, ServiceStatus::RolledBack);
    assert_eq!(
        report.services[0].failure,
        Some(FailureKind::FailedValidation)
    );
    assert_eq!(report.services[1].status, ServiceStatus::NotStarted);
    assert_eq!(report.services[1].wave, "rest");
    assert_eq!(report.exit_code(), exit::FAILED);

    let mut b = command(&record, 1);
    b.timed_out = true;
    record.targets[1].migrate = Some(b);
    let report = RunReport::from_record(&record);
    assert_eq!(report.services[1].failure, Some(FailureKind::TimedOut));
    assert_eq!(report.exit_code(), exit::TIMED_OUT);

    let mut c = command(&record, 2);
    c.result = Some(result(&c, Outcome::Succeeded, None));
    let mut rollback = command(&record, 2);
    rollback.result = Some(result(
        &rollback,
        Outcome::RollbackFailed,
        Some(Phase::Rollback),
    ));
    record.targets[2].migrate = Some(c);
    record.targets[2].rollback = Some(rollback);
    let report = RunReport::from_record(&record);
    assert_eq!(
        report.services[2].failure,
        Some(FailureKind::RollbackFailed)
    );
    assert_eq!(report.exit_code(), exit::ROLLBACK_FAILED);

    record.targets[1].migrate = None;
    record.targets[2].migrate = None;
    record.targets[2].rollback = None;
    record.status = RunStatus::Cancelled;
    assert_eq!(RunReport::from_record(&record).exit_code(), exit::CANCELLED);
}

#[test]
fn junit_escapes_and_classifies() {
    let mut record = record();
    let mut a = command(&record, 0);
    a.result = Some(result(&a, Outcome::Refused, Some(Phase::Precheck)));
    record.targets[0].migrate = Some(a);
    record.status = RunStatus::Failed;
    let xml = RunReport::from_record(&record).to_junit();
    assert!(
        xml.contains("<failure message=\"health &lt;check&gt; said &quot;no&quot; &amp; more\" type=\"refused\">"),
        "{xml}"
    );
    assert!(
        xml.contains("tests=\"3\" skipped=\"2\" failures=\"1\""),
        "{xml}"
    );
    assert!(xml.contains("<testsuite name=\"canary\""), "{xml}");
}

#[test]
fn markdown_is_a_guide_per_service() {
    let mut record = record();
    let mut a = command(&record, 0);
    a.result = Some(result(&a, Outcome::RolledBack, Some(Phase::Apply)));
    record.targets[0].migrate = Some(a);
    record.status = RunStatus::Failed;
    let md = RunReport::from_record(&record).to_markdown();
    assert!(md.contains("### a/x"), "{md}");
    assert!(md.contains("1. restart the service"), "{md}");
    assert!(md.contains("failed apply: health <check>"), "{md}");
    assert!(md.contains("| 1 | canary | all | pending | a/x |"), "{md}");
}

#[test]
fn a_run_awaiting_finalize_exits_0_only_when_every_service_succeeded_and_names_both_decisions() {
    let mut record = record();
    for t in 0..3 {
        let mut c = command(&record, t);
        c.result = Some(result(&c, Outcome::Succeeded, None));
        record.targets[t].migrate = Some(c);
    }
    record.status = RunStatus::AwaitingFinalize;
    let report = RunReport::from_record(&record);
    assert_eq!(report.exit_code(), exit::OK);
    let text = report.to_text();
    assert!(text.contains("awaiting finalize: 3 service(s)"), "{text}");
    let run = record.run_id;
    assert!(
        text.contains(&format!(
            "next: `flotilla finalize {run}` drops the backups, or `flotilla rollback {run}` restores the fleet"
        )),
        "{text}"
    );

    // A failure within the budget is still a failure while the run waits.
    let mut a = command(&record, 0);
    a.result = Some(result(&a, Outcome::RolledBack, Some(Phase::Validate)));
    record.targets[0].migrate = Some(a);
    let report = RunReport::from_record(&record);
    assert_eq!(report.exit_code(), exit::FAILED);
    assert!(
        report.to_text().contains("1 rolled back"),
        "{}",
        report.to_text()
    );
}

/// A service restored by a rehearsal has a reason but no failure: it has no problem, in the
/// Markdown report and the HTML page alike, while a failed one shows its kind and reason in both.
#[test]
fn markdown_and_html_agree_on_a_services_problem() {
    let mut record = record();
    let mut migrate = command(&record, 0);
    migrate.result = Some(result(&migrate, Outcome::Succeeded, None));
    let mut rollback = command(&record, 0);
    rollback.cause = Some("rehearsal: restored after validation and proved healthy".into());
    rollback.result = Some(result(&rollback, Outcome::RolledBack, None));
    record.targets[0].migrate = Some(migrate);
    record.targets[0].rollback = Some(rollback);
    let mut failed = command(&record, 1);
    failed.result = Some(result(&failed, Outcome::RolledBack, Some(Phase::Validate)));
    record.targets[1].migrate = Some(failed);
    let report = RunReport::from_record(&record);
    assert_eq!(report.services[0].problem(), "none");
    let failure = "failed validation: health <check> said \"no\" & more";
    assert_eq!(report.services[1].problem(), failure);
    let md = report.to_markdown();
    assert!(md.contains("| a/x | canary | rolled_back |"), "{md}");
    assert!(md.contains("| yes | none |"), "{md}");
    let html = report.to_html(&record, &[], None);
    assert!(
        html.contains("<td>yes</td><td>none</td></tr>"),
        "the restored service's problem in the page"
    );
    assert!(
        html.contains(
            "<td>failed validation: health &#60;check&#62; said &#34;no&#34; &#38; more</td>"
        ),
        "{html}"
    );
    assert!(!html.contains("rehearsal: restored after validation and proved healthy</td>"));
}

#[test]
fn reports_name_who_started_the_run_the_plan_digest_and_link_the_trace() {
    let mut record = record();
    record.started_by = Some(crate::store::StartedBy {
        user: "alice".into(),
        host: "ops-1".into(),
        signing_key: Some("k3yId".into()),
    });
    record.trace_parent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let report = RunReport::from_record(&record);
    let digest = {
        use sha2::Digest;
        let hex: String = sha2::Sha256::digest(PLAN.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    };
    assert_eq!(report.plan_digest.as_deref(), Some(digest.as_str()));
    let by = "alice@ops-1 (signing key k3yId)";
    assert!(
        report
            .to_text()
            .contains(&format!("  by: {by}, plan {digest}")),
        "{}",
        report.to_text()
    );
    let md = report.to_markdown();
    assert!(md.contains(&format!("| started by | {by} |")), "{md}");
    assert!(
        md.contains(&format!("| plan digest | `{digest}` |")),
        "{md}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["started_by"]["user"], "alice");
    assert_eq!(json["started_by"]["signing_key"], "k3yId");
    assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let html = report.to_html(&record, &[], Some("http://jaeger:16686/trace/{trace_id}"));
    assert!(
        html.contains(
            "<a id=\"trace-link\" href=\"http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736\""
        ),
        "{html}"
    );
    assert!(html.contains(&format!("<td>{digest}</td>")));
    let unlinked = report.to_html(&record, &[], None);
    assert!(unlinked.contains("<code>4bf92f3577b34da6a3ce929d0e0e4736</code>"));
    assert!(!unlinked.contains("trace-link"));
}

#[test]
fn a_record_written_before_who_and_digest_loads_and_reports_without_them() {
    let mut value = serde_json::to_value(record()).unwrap();
    let fields = value.as_object_mut().unwrap();
    assert!(fields.remove("started_by").is_some() && fields.remove("plan_digest").is_some());
    let old: RunRecord = serde_json::from_value(value).unwrap();
    assert_eq!(
        (old.started_by.clone(), old.plan_digest.clone()),
        (None, None)
    );
    let report = RunReport::from_record(&old);
    assert!(!report.to_text().contains("  by: "));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("started_by").is_none() && json.get("plan_digest").is_none());
}
