//! The JUnit writer against arbitrary text: whatever the reasons, names and details hold, the
//! document parses with a strict XML parser and every field reads back as its sanitized text.

use flotilla_schemas::{InstanceId, RunId, ServiceName};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::super::{
    FailureKind, RunReport, RunStatus, ServiceReport, ServiceStatus, Stage, WaveReport, WaveStatus,
};
use super::gates_text;
use crate::sanitize::{multi_line, one_line};

/// A service's name, how it ended and its reason.
type Service = (String, ServiceStatus, Option<FailureKind>, String);

/// Text of any kind, with the characters that break XML and terminals well represented.
fn text() -> impl Strategy<Value = String> {
    let nasty = prop::sample::select(vec![
        '\0', '\u{1}', '\u{8}', '\u{b}', '\u{1b}', '\u{7f}', '\u{85}', '\u{9b}', '\r', '\n', '\t',
        '\u{202e}', '\u{2066}', '\u{2028}', '\u{fffe}', '\u{ffff}', '<', '>', '&', '"', '\'', ']',
        ' ', '\\', 'é', '🦀',
    ]);
    prop::collection::vec(prop_oneof![any::<char>(), nasty], 0..24)
        .prop_map(|chars| chars.into_iter().collect())
}

/// A service as the report has it; names are validated types, so only their own alphabet.
fn service() -> impl Strategy<Value = Service> {
    let outcome = prop::sample::select(vec![
        (ServiceStatus::Succeeded, None),
        (ServiceStatus::NotStarted, None),
        (
            ServiceStatus::RolledBack,
            Some(FailureKind::FailedValidation),
        ),
        (ServiceStatus::Refused, Some(FailureKind::Refused)),
        (ServiceStatus::TimedOut, Some(FailureKind::TimedOut)),
        (
            ServiceStatus::RollbackFailed,
            Some(FailureKind::RollbackFailed),
        ),
    ]);
    ("[a-z0-9][a-z0-9_-]{0,12}", outcome, text())
        .prop_map(|(name, (status, failure), reason)| (name, status, failure, reason))
}

fn report(plan: String, waves: Vec<(String, Vec<Service>)>) -> RunReport {
    let now = OffsetDateTime::now_utc();
    let mut report = RunReport {
        run_id: RunId::new(),
        plan,
        status: RunStatus::Failed,
        stage: Stage::Done,
        rehearsal: false,
        started_at: now,
        finished_at: Some(now),
        duration_ms: 1234,
        updated_at: now,
        finalized: false,
        coordinator: String::new(),
        started_by: None,
        plan_digest: None,
        trace_id: None,
        notes: Vec::new(),
        waves: Vec::new(),
        services: Vec::new(),
        correlation: None,
        cross_service: None,
        plan_text: String::new(),
    };
    for (w, (name, services)) in waves.into_iter().enumerate() {
        // Wave names are unique in a plan.
        let name = format!("{w}{name}");
        for (service, status, failure, reason) in services {
            report.services.push(ServiceReport {
                status,
                failure,
                reason: Some(reason),
                gates: vec![flotilla_schemas::GateReport {
                    gate: "predict.p95_us".into(),
                    before: 4000,
                    after: 9000,
                    limit: 8000,
                    passed: false,
                    higher_is_better: false,
                    inconclusive: false,
                }],
                ..ServiceReport::not_started(
                    ServiceName::parse(service).unwrap(),
                    InstanceId::parse("a").unwrap(),
                    name.clone(),
                )
            });
        }
        report.waves.push(WaveReport {
            name,
            status: WaveStatus::Done,
            max_parallel: None,
            selector: None,
            limit: None,
            analysis: Vec::new(),
            services: Vec::new(),
            pause: None,
            started_at: None,
            paused_at: None,
            paused_until: None,
            pause_ended_at: None,
        });
    }
    report
}

/// A required attribute's value.
fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
    node.attribute(name)
        .unwrap_or_else(|| panic!("<{}> has no {name}", node.tag_name().name()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn junit_is_valid_xml_and_every_field_reads_back_sanitized(
        plan in text(),
        waves in prop::collection::vec((text(), prop::collection::vec(service(), 0..4)), 0..4),
    ) {
        let report = report(plan, waves);
        let xml = report.to_junit();
        let doc = roxmltree::Document::parse(&xml)
            .unwrap_or_else(|e| panic!("invalid XML ({e}):\n{xml:?}"));
        let root = doc.root_element();
        prop_assert_eq!(root.tag_name().name(), "testsuites");
        let name = format!("flotilla {} {}", report.plan, report.run_id);
        prop_assert_eq!(attr(root, "name"), one_line(&name));
        prop_assert_eq!(attr(root, "tests"), report.services.len().to_string());
        let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
        prop_assert_eq!(suites.len(), report.waves.len());
        for (suite, wave) in suites.iter().zip(&report.waves) {
            prop_assert_eq!(attr(*suite, "name"), one_line(&wave.name));
            let cases: Vec<_> = suite.children().filter(|n| n.has_tag_name("testcase")).collect();
            let members: Vec<_> = report.services.iter().filter(|s| s.wave == wave.name).collect();
            prop_assert_eq!(cases.len(), members.len());
            for (case, s) in cases.iter().zip(members) {
                let reason = s.reason.as_deref().unwrap_or_default();
                prop_assert_eq!(attr(*case, "name"), format!("{}/{}", s.service, s.instance));
                let classname = format!("flotilla.{}", wave.name);
                prop_assert_eq!(attr(*case, "classname"), one_line(&classname));
                let child = |tag: &str| case.children().find(|n| n.has_tag_name(tag));
                match (s.failure, s.status) {
                    (Some(kind), _) => {
                        let failure = child("failure").expect("a failure element");
                        prop_assert_eq!(attr(failure, "type"), kind.as_str());
                        prop_assert_eq!(attr(failure, "message"), one_line(reason));
                        let body = format!("{}: {reason}{}", s.status.as_str(), gates_text(s));
                        prop_assert_eq!(failure.text().unwrap_or_default(), multi_line(&body));
                    }
                    (None, ServiceStatus::NotStarted) => {
                        let skipped = child("skipped").expect("a skipped element");
                        let message = skipped.attribute("message").unwrap_or_default();
                        prop_assert_eq!(message, one_line(reason));
                    }
                    (None, status) => {
                        let out = child("system-out").expect("a system-out element");
                        let text = format!("{}{}", status.as_str(), gates_text(s));
                        prop_assert_eq!(out.text(), Some(text.as_str()));
                    }
                }
            }
        }
    }
}
