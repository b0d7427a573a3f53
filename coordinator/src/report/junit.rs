//! JUnit XML, so CI systems show a run as test results: one suite per wave, one case per
//! service; a failed service is a `<failure>` whose type is its failure kind.
//!
//! The document is written by `quick-junit` (over `quick-xml`), which escapes markup. Text from
//! data goes through [`sanitize`](crate::sanitize) first, because XML 1.0 cannot carry most
//! control characters at all: attributes get [`one_line`] (line breaks shown as `\n`, which XML
//! would otherwise fold into spaces), element text [`multi_line`].

use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{RunReport, ServiceReport, ServiceStatus, gate};
use crate::sanitize::{multi_line, one_line};

/// Renders `report` as JUnit XML.
pub(super) fn render(report: &RunReport) -> String {
    let mut junit = Report::new(one_line(&format!(
        "flotilla {} {}",
        report.plan, report.run_id
    )));
    junit.set_time(Duration::from_millis(report.duration_ms));
    for wave in &report.waves {
        let mut suite = TestSuite::new(one_line(&wave.name));
        for s in report.services.iter().filter(|s| s.wave == wave.name) {
            let time: u64 = s.phases.iter().map(|p| p.duration_ms).sum();
            let mut case = TestCase::new(format!("{}/{}", s.service, s.instance), status(s));
            case.set_classname(one_line(&format!("flotilla.{}", wave.name)))
                .set_time(Duration::from_millis(time));
            if s.failure.is_none() && s.status != ServiceStatus::NotStarted {
                case.set_system_out(multi_line(&format!(
                    "{}{}{}",
                    s.status.as_str(),
                    if s.rollback_validated {
                        ", rollback validated"
                    } else {
                        ""
                    },
                    gates_text(s)
                )));
            }
            suite.add_test_case(case);
        }
        junit.add_test_suite(suite);
    }
    // Writing into memory fails only on invalid UTF-8, which a `String` cannot hold.
    junit.to_string().expect("JUnit XML serializes into memory")
}

/// The case's status: a failure, a skip (not started), or a success.
fn status(s: &ServiceReport) -> TestCaseStatus {
    let reason = s.reason.as_deref().unwrap_or("");
    if let Some(kind) = s.failure {
        let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
        status
            .set_type(kind.as_str())
            .set_message(one_line(reason))
            .set_description(multi_line(&format!(
                "{}: {reason}{}",
                s.status.as_str(),
                gates_text(s)
            )));
        status
    } else if s.status == ServiceStatus::NotStarted {
        let mut status = TestCaseStatus::skipped();
        if !reason.is_empty() {
            status.set_message(one_line(reason));
        }
        status
    } else {
        TestCaseStatus::success()
    }
}

/// The service's gates on a line of their own, when it has any.
fn gates_text(s: &ServiceReport) -> String {
    if s.gates.is_empty() {
        String::new()
    } else {
        format!("\ngates: {}", gate::lines(&s.gates))
    }
}

#[cfg(test)]
mod tests;
