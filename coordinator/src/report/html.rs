//! The HTML report: one self-contained page (inline CSS, JavaScript and SVG; nothing fetched)
//! with the run's timeline (waves and every service's phases on one time axis, rollbacks
//! marked), before/after charts of every gate against its limit, the cross-service checks with
//! the correlation verdict, and the migration guide of the Markdown report.
//!
//! The page is the askama template `templates/report.html`, with the stylesheet and the script
//! (`html/report.css`, `html/report.js`) included at build time. The tables are written by the
//! template; the timeline and charts are drawn by the script from the run's data
//! ([`timeline`]), embedded as JSON. The script sets `data-rendered="ok"` on `<html>` once it
//! has drawn everything (`"error"` and a visible message otherwise), which the browser test
//! reads. Every string that comes from the run is escaped: by the template's HTML escaping in the
//! tables, as text by the Markdown renderer in the guide, `<` written as `\u003c` in the JSON,
//! and set with `textContent` by the script.

use askama::Template;
use flotilla_schemas::{CheckVerdict, ConfigShape, SettingReport};
use time::OffsetDateTime;

use super::gate::{self, Gate};
use super::{RunReport, ServiceReport};
use crate::events::RunEvent;
use crate::store::{CorrelationVerdict, CrossServiceVerdict, RunRecord};

mod timeline;

/// The page's stylesheet.
const STYLE: &str = include_str!("html/report.css");
/// The page's script: draws the timeline and the charts from the embedded data.
const SCRIPT: &str = include_str!("html/report.js");

/// The heading of the Markdown report's guide section: the page shows what follows it.
const GUIDE_HEADING: &str = "\n## Migration guide, per service\n";

/// The page, as its template sees it.
#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    title: String,
    plan: &'a str,
    status_class: &'static str,
    status_text: String,
    facts: Vec<(&'static str, String)>,
    /// The run's trace, linked to the tracing UI when `[report] trace_url` is configured.
    trace: Option<TraceLink>,
    notes: &'a [String],
    waves: Vec<WaveLine>,
    services: Vec<ServiceLine>,
    /// The runs of run-once jobs: their duration, peak memory, exit code and outputs.
    jobs: Vec<JobLine>,
    gates: Vec<GateLine>,
    cross_service: Option<CrossServiceView>,
    correlation: Option<CorrelationView<'a>>,
    /// The migration guide, already HTML (text escaped by the Markdown renderer).
    guide: String,
    version: &'static str,
    /// The timeline's data as JSON, with `<` escaped so that it cannot close the script element.
    data: String,
    style: &'static str,
    script: &'static str,
}

/// The run's trace ID, and its page in a tracing UI.
struct TraceLink {
    id: String,
    url: Option<String>,
}

/// A row of the waves table.
struct WaveLine {
    name: String,
    parallel: String,
    status: &'static str,
    services: String,
}

/// A row of the services table.
struct ServiceLine {
    target: String,
    wave: String,
    status: &'static str,
    time_ms: u64,
    startup: String,
    memory: String,
    rollback_tested: &'static str,
    problem: String,
}

/// A row of the table of job runs.
struct JobLine {
    target: String,
    run: &'static str,
    figures: String,
}

/// A row of the table of every gate's figures.
struct GateLine {
    target: String,
    name: String,
    before: String,
    after: String,
    /// With its bound: `≤ 155 ms`.
    limit: String,
    verdict: &'static str,
}

/// The cross-service stage's verdict, in words.
struct CrossServiceView {
    ok: bool,
    services: Vec<InspectionLine>,
    problems: Vec<String>,
}

/// One agent's checks of the others, and its configuration's shape.
struct InspectionLine {
    target: String,
    checks: Vec<String>,
    config: Vec<String>,
}

/// The correlation check's verdict, as the page shows it.
struct CorrelationView<'a> {
    ok: bool,
    /// Failed only for want of telemetry.
    inconclusive: bool,
    trace_id: &'a str,
    error: Option<&'a str>,
    services: &'a [flotilla_tracestore::ServiceReport],
    roots: usize,
    orphans: usize,
    problems: &'a [String],
}

/// Renders the page for `report`, drawing the timeline from `events` (the run's events stream)
/// and, for commands without events, from the phases their results carry.
pub(super) fn render(
    report: &RunReport,
    record: &RunRecord,
    events: &[RunEvent],
    trace_url: Option<&str>,
) -> String {
    let data = timeline::page_data(report, record, events);
    let page = Page {
        title: format!("Flotilla run {}: {}", report.run_id, report.plan),
        plan: &report.plan,
        status_class: report.status.as_str(),
        status_text: report.status_text(),
        facts: facts(report),
        trace: report.trace_id.as_ref().map(|id| TraceLink {
            id: id.clone(),
            url: trace_url.map(|url| crate::settings::trace_link(url, id)),
        }),
        notes: &report.notes,
        waves: report
            .waves
            .iter()
            .map(|w| WaveLine {
                name: w.name.clone(),
                parallel: w
                    .max_parallel
                    .map_or_else(|| "all".to_owned(), |n| n.to_string()),
                status: w.status.as_str(),
                services: w.services.join(", "),
            })
            .collect(),
        services: report.services.iter().map(service_line).collect(),
        jobs: report.services.iter().flat_map(job_lines).collect(),
        gates: report
            .services
            .iter()
            .flat_map(|s| s.gates.iter().map(move |g| gate_line(s, Gate(g))))
            .collect(),
        cross_service: report.cross_service.as_ref().map(cross_service_view),
        correlation: report.correlation.as_ref().map(correlation_view),
        guide: guide(report),
        version: crate::VERSION,
        data: serde_json::to_string(&data)
            .expect("page data serializes")
            .replace('<', "\\u003c"),
        style: STYLE,
        script: SCRIPT,
    };
    // Rendering into a `String` fails only if a value's `Display` fails, which none here does.
    page.render().expect("the report page renders")
}

/// The run's facts, for the table under the title.
fn facts(report: &RunReport) -> Vec<(&'static str, String)> {
    let mut facts = vec![("run", report.run_id.to_string())];
    if report.rehearsal {
        facts.push(("mode", "rehearsal (migrate, validate, roll back)".into()));
    }
    facts.push(("started", rfc3339(report.started_at)));
    if let Some(end) = report.finished_at {
        facts.push(("finished", rfc3339(end)));
    }
    facts.push((
        "duration",
        format!("{:.2} s", report.duration_ms as f64 / 1000.0),
    ));
    facts.push(("stage", report.stage.as_str().into()));
    facts.push(("finalized", yes_no(report.finalized).into()));
    facts.push(("coordinator", report.coordinator.clone()));
    if let Some(by) = &report.started_by {
        facts.push(("started by", by.text()));
    }
    if let Some(digest) = &report.plan_digest {
        facts.push(("plan digest", digest.clone()));
    }
    facts
}

fn service_line(s: &ServiceReport) -> ServiceLine {
    let m = &s.measurements;
    ServiceLine {
        target: format!("{}/{}", s.service, s.instance),
        wave: s.wave.clone(),
        status: s.status.as_str(),
        time_ms: s.phases.iter().map(|p| p.duration_ms).sum(),
        startup: gate::restart_figures(m),
        memory: gate::memory_figures(m),
        rollback_tested: yes_no(s.rollback_validated),
        problem: s.problem(),
    }
}

fn job_lines(s: &ServiceReport) -> Vec<JobLine> {
    gate::job_runs(&s.measurements)
        .into_iter()
        .map(|(run, figures)| JobLine {
            target: format!("{}/{}", s.service, s.instance),
            run,
            figures,
        })
        .collect()
}

fn gate_line(s: &ServiceReport, gate: Gate) -> GateLine {
    GateLine {
        target: format!("{}/{}", s.service, s.instance),
        name: gate.0.gate.clone(),
        before: gate.figure(gate.0.before),
        after: gate.figure(gate.0.after),
        limit: format!("{} {}", gate.bound(), gate.figure(gate.0.limit)),
        verdict: gate.verdict(),
    }
}

fn cross_service_view(c: &CrossServiceVerdict) -> CrossServiceView {
    CrossServiceView {
        ok: c.ok,
        services: c
            .services
            .iter()
            .map(|s| InspectionLine {
                target: format!("{}/{}", s.service, s.instance),
                checks: s.checks.iter().map(check_text).collect(),
                config: s
                    .config
                    .iter()
                    .map(config_text)
                    .chain(s.settings.iter().map(setting_text))
                    .collect(),
            })
            .collect(),
        problems: c.problems.clone(),
    }
}

fn correlation_view(c: &CorrelationVerdict) -> CorrelationView<'_> {
    let report = c.report();
    CorrelationView {
        ok: c.ok(),
        inconclusive: !c.ok() && c.inconclusive(),
        trace_id: report.map_or("", |r| r.trace_id.as_str()),
        error: c.error(),
        services: report.map_or(&[][..], |r| &r.services),
        roots: report.map_or(0, |r| r.roots.len()),
        orphans: report.map_or(0, |r| r.orphans.len()),
        problems: report.map_or(&[][..], |r| &r.problems),
    }
}

/// A check's verdict in a few words: `http passed: 200`.
fn check_text(v: &CheckVerdict) -> String {
    format!(
        "{} {}: {}",
        v.kind,
        if v.passed { "passed" } else { "FAILED" },
        v.detail
    )
}

/// A configuration file's shape in a few words: `app.toml (standard, 4 key(s))`.
fn config_text(v: &ConfigShape) -> String {
    format!(
        "{} ({}, {} key(s){}{})",
        v.path,
        v.format,
        v.keys.len(),
        if v.exists { "" } else { ", missing" },
        if v.literal_secrets.is_empty() {
            String::new()
        } else {
            // Declared secret keys hold one too: the problems say which are leaks.
            format!(", resolved secret in {}", v.literal_secrets.join(", "))
        }
    )
}

/// A setting the fleet must agree on, as one service holds it (never its value).
fn setting_text(v: &SettingReport) -> String {
    format!(
        "setting {} ({} in {}): {}",
        v.name,
        v.key,
        v.file,
        if v.found { "found" } else { "NOT FOUND" }
    )
}

/// The Markdown report's per-service migration guide, as HTML.
fn guide(report: &RunReport) -> String {
    let markdown = report.to_markdown();
    let section = markdown
        .split_once(GUIDE_HEADING)
        .map_or(markdown.as_str(), |(_, guide)| guide);
    markdown_to_html(section)
}

/// Markdown to HTML with every piece of raw HTML in it shown as text: the Markdown carries
/// reasons, paths and names from agents and plans, which must never become markup.
fn markdown_to_html(md: &str) -> String {
    use pulldown_cmark::{Event, Parser};
    let events = Parser::new(md).map(|event| match event {
        Event::Html(html) | Event::InlineHtml(html) => Event::Text(html),
        other => other,
    });
    let mut out = String::with_capacity(md.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut out, events);
    out
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
