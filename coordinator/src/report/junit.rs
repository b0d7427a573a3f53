//! JUnit XML, so CI systems show a run as test results: one suite per wave, one case per
//! service; a failed service is a `<failure>` whose type is its failure kind.

use std::fmt::Write as _;

use super::{RunReport, ServiceStatus};

/// Renders `report` as JUnit XML.
pub(super) fn render(report: &RunReport) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let failures = report
        .services
        .iter()
        .filter(|s| s.failure.is_some())
        .count();
    let skipped = report
        .services
        .iter()
        .filter(|s| s.status == ServiceStatus::NotStarted)
        .count();
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        escape(&format!("flotilla {} {}", report.plan, report.run_id)),
        report.services.len(),
        report.duration_ms as f64 / 1000.0
    );
    for wave in &report.waves {
        let members: Vec<_> = report
            .services
            .iter()
            .filter(|s| s.wave == wave.name)
            .collect();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">",
            escape(&wave.name),
            members.len(),
            members.iter().filter(|s| s.failure.is_some()).count(),
            members
                .iter()
                .filter(|s| s.status == ServiceStatus::NotStarted)
                .count(),
        );
        for s in members {
            let time: u64 = s.phases.iter().map(|p| p.duration_ms).sum();
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}/{}\" time=\"{:.3}\"",
                escape(&format!("flotilla.{}", wave.name)),
                escape(s.service.as_str()),
                escape(s.instance.as_str()),
                time as f64 / 1000.0
            );
            let reason = escape(s.reason.as_deref().unwrap_or(""));
            if s.failure.is_some() {
                let kind = s.failure.map_or(s.status.as_str(), |k| k.as_str());
                let _ = writeln!(
                    out,
                    ">\n      <failure type=\"{}\" message=\"{reason}\">{}: {reason}</failure>\n    </testcase>",
                    escape(kind),
                    s.status.as_str()
                );
            } else if s.status == ServiceStatus::NotStarted {
                let _ = writeln!(
                    out,
                    ">\n      <skipped message=\"{reason}\"/>\n    </testcase>"
                );
            } else {
                let _ = writeln!(
                    out,
                    ">\n      <system-out>{}{}</system-out>\n    </testcase>",
                    s.status.as_str(),
                    if s.rollback_validated {
                        ", rollback validated"
                    } else {
                        ""
                    }
                );
            }
        }
        let _ = writeln!(out, "  </testsuite>");
    }
    out.push_str("</testsuites>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
