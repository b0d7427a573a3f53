//! The HTML report: one self-contained page (inline CSS, JavaScript and SVG; nothing fetched)
//! with the run's timeline (waves and every service's phases on one time axis, rollbacks
//! marked), before/after charts of every gate against its limit, the cross-service checks with
//! the correlation verdict, and the migration guide of the Markdown report.
//!
//! The tables are written here; the timeline and charts are drawn by the page's script from the
//! run's data, embedded as JSON. The script sets `data-rendered="ok"` on `<html>` once it has
//! drawn everything (`"error"` and a visible message otherwise), which the browser test reads.
//! Every string that comes from the run is escaped: HTML-escaped in the tables, `<` written as
//! `\u003c` in the JSON, and set with `textContent` by the script.

use std::collections::HashMap;
use std::fmt::Write as _;

use flotilla_schemas::{
    CheckVerdict, CommandId, ConfigShape, GateReport, Phase, PhaseStatus, RunResult,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::memory::memory_figures;
use super::{RunReport, ServiceReport};
use crate::events::RunEvent;
use crate::store::{CommandRecord, CrossServiceVerdict, RunRecord};

/// The page's data for its script: times in milliseconds from the run's start.
#[derive(Debug, Serialize)]
struct PageData {
    duration_ms: i64,
    waves: Vec<WaveSpan>,
    rows: Vec<Row>,
    marks: Vec<Mark>,
    charts: Vec<Chart>,
}

/// A wave: its rows and when its migrations ran.
#[derive(Debug, Serialize)]
struct WaveSpan {
    name: String,
    status: &'static str,
    start: Option<i64>,
    end: Option<i64>,
    /// Indices into [`PageData::rows`].
    rows: Vec<usize>,
}

/// One target on the timeline.
#[derive(Debug, Serialize)]
struct Row {
    target: String,
    service: String,
    status: &'static str,
    bars: Vec<Bar>,
}

/// One phase of one command.
#[derive(Debug, Clone, Serialize)]
struct Bar {
    phase: &'static str,
    /// The command: `migrate`, `rollback` or `finalize`.
    kind: &'static str,
    start: i64,
    end: i64,
    /// `succeeded`, `failed`, `running` (no end seen), or `interrupted` (no end seen, but the
    /// command has a result).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// A moment worth a line across the timeline.
#[derive(Debug, Serialize)]
struct Mark {
    at: i64,
    label: String,
    kind: &'static str,
}

/// One service's figures.
#[derive(Debug, Serialize)]
struct Chart {
    target: String,
    service: String,
    status: &'static str,
    gates: Vec<ChartGate>,
}

/// One gate (or a bare measurement, without a limit).
#[derive(Debug, Serialize)]
struct ChartGate {
    name: String,
    /// `ms`, `bytes` or empty.
    unit: &'static str,
    before: f64,
    after: Option<f64>,
    limit: Option<f64>,
    passed: Option<bool>,
    higher_is_better: bool,
    inconclusive: bool,
}

/// Renders the page for `report`, drawing the timeline from `events` (the run's events stream)
/// and, for commands without events, from the phases their results carry.
pub(super) fn render(report: &RunReport, record: &RunRecord, events: &[RunEvent]) -> String {
    let data = page_data(report, record, events);
    let json = serde_json::to_string(&data)
        .expect("page data serializes")
        .replace('<', "\\u003c");
    let mut out = String::with_capacity(64 * 1024);
    let title = format!("Flotilla run {}: {}", report.run_id, report.plan);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\" data-rendered=\"pending\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&title)
    );
    header(&mut out, report);
    out.push_str(
        "<section id=\"timeline-section\">\n<h2>Timeline</h2>\n\
         <p class=\"hint\">Waves and every service's phases on one time axis; hover a bar for its figures. \
         Red outlines are failed phases, red bars rollbacks.</p>\n\
         <div id=\"legend\" class=\"legend\"></div>\n\
         <svg id=\"timeline\" role=\"img\" aria-label=\"timeline of the run\"></svg>\n</section>\n",
    );
    waves_and_summary(&mut out, report);
    out.push_str(
        "<section id=\"charts-section\">\n<h2>Before and after</h2>\n\
         <p class=\"hint\">Each gate's figure before the migration (grey) and after it (blue when \
         it passed, red when it tripped), against its limit (dashed).</p>\n\
         <div id=\"charts\" class=\"charts\"></div>\n",
    );
    gates_table(&mut out, report);
    out.push_str("</section>\n");
    checks(&mut out, report);
    guide(&mut out, report);
    let _ = write!(
        out,
        "<footer>Generated by flotilla {} from the run store and the run's events.</footer>\n\
         <p id=\"render-error\" class=\"error\" hidden></p>\n\
         <script type=\"application/json\" id=\"flotilla-data\">{json}</script>\n\
         <script>{SCRIPT}</script>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn header(out: &mut String, report: &RunReport) {
    let _ = writeln!(
        out,
        "<header>\n<h1>Migration report: {}</h1>\n<p class=\"status status-{}\">{}</p>",
        esc(&report.plan),
        esc(&status_class(report)),
        esc(&report.status_text())
    );
    out.push_str("<table class=\"facts\">\n");
    let mut fact = |k: &str, v: String| {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    fact("run", report.run_id.to_string());
    if report.rehearsal {
        fact("mode", "rehearsal (migrate, validate, roll back)".into());
    }
    fact("started", rfc3339(report.started_at));
    if let Some(end) = report.finished_at {
        fact("finished", rfc3339(end));
    }
    fact(
        "duration",
        format!("{:.2} s", report.duration_ms as f64 / 1000.0),
    );
    fact("stage", report.stage.as_str().into());
    fact("finalized", yes_no(report.finalized).into());
    fact("coordinator", report.coordinator.clone());
    out.push_str("</table>\n");
    if !report.notes.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for note in &report.notes {
            let _ = writeln!(out, "<li>{}</li>", esc(note));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</header>\n");
}

fn waves_and_summary(out: &mut String, report: &RunReport) {
    out.push_str(
        "<section id=\"waves\">\n<h2>Waves</h2>\n<table>\n<thead><tr><th>#</th><th>wave</th>\
         <th>parallel</th><th>status</th><th>services</th></tr></thead>\n<tbody>\n",
    );
    for (i, wave) in report.waves.iter().enumerate() {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            i + 1,
            esc(&wave.name),
            wave.max_parallel
                .map_or_else(|| "all".to_owned(), |n| n.to_string()),
            esc(wave.status.as_str()),
            esc(&wave.services.join(", "))
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
    out.push_str(
        "<section id=\"summary\">\n<h2>Services</h2>\n<table>\n<thead><tr><th>service</th>\
         <th>wave</th><th>status</th><th>time</th><th>startup before → after</th>\
         <th>memory before → after</th><th>rollback tested</th><th>problem</th></tr></thead>\n<tbody>\n",
    );
    for s in &report.services {
        let m = &s.measurements;
        let total: u64 = s.phases.iter().map(|p| p.duration_ms).sum();
        let _ = writeln!(
            out,
            "<tr class=\"svc-{}\"><td>{}/{}</td><td>{}</td><td><span class=\"badge {}\">{}</span></td>\
             <td>{} ms</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(s.status.as_str()),
            esc(s.service.as_str()),
            esc(s.instance.as_str()),
            esc(&s.wave),
            esc(s.status.as_str()),
            esc(s.status.as_str()),
            total,
            ms(m.startup_ms_before),
            ms(m.startup_ms_after),
            esc(&memory_figures(m)),
            yes_no(s.rollback_validated),
            esc(&problem(s)),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn gates_table(out: &mut String, report: &RunReport) {
    if report.services.iter().all(|s| s.gates.is_empty()) {
        return;
    }
    out.push_str(
        "<details class=\"figures\"><summary>Every gate's figures</summary>\n<table>\n\
         <thead><tr><th>service</th><th>gate</th><th>before</th><th>after</th><th>limit</th>\
         <th>verdict</th></tr></thead>\n<tbody>\n",
    );
    for s in &report.services {
        for gate in &s.gates {
            let g = GateView::of(gate);
            let _ = writeln!(
                out,
                "<tr><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td></tr>",
                esc(s.service.as_str()),
                esc(s.instance.as_str()),
                esc(&g.name),
                esc(&g.figure(g.before)),
                esc(&g.figure(g.after)),
                if g.higher_is_better { "≥" } else { "≤" },
                esc(&g.figure(g.limit)),
                esc(g.verdict()),
            );
        }
    }
    out.push_str("</tbody>\n</table>\n</details>\n");
}

fn checks(out: &mut String, report: &RunReport) {
    out.push_str("<section id=\"checks\">\n<h2>Cross-service checks</h2>\n");
    cross_service(out, report.cross_service.as_ref());
    out.push_str("<h3>Correlation of every service's spans and logs</h3>\n");
    let Some(c) = &report.correlation else {
        out.push_str(
            "<p>The correlation check did not run for this run (a rehearsal, a failed run, or a \
             run that predates it).</p>\n</section>\n",
        );
        return;
    };
    let ok = c.ok();
    let report = c.report();
    let _ = writeln!(
        out,
        "<p class=\"verdict {}\">Correlation: <strong>{}</strong>{}</p>",
        if ok { "ok" } else { "bad" },
        if ok { "verified" } else { "FAILED" },
        report
            .map(|r| r.trace_id.as_str())
            .filter(|t| !t.is_empty())
            .map(|t| format!(" (trace <code>{}</code>)", esc(t)))
            .unwrap_or_default()
    );
    if let Some(error) = c.error() {
        let _ = writeln!(out, "<p class=\"error\">{}</p>", esc(error));
    }
    let services = report.map_or(&[][..], |r| &r.services);
    if !services.is_empty() {
        out.push_str(
            "<table>\n<thead><tr><th>service</th><th>spans</th><th>logs</th><th>correlated</th>\
             <th>problems</th></tr></thead>\n<tbody>\n",
        );
        for s in services {
            let _ = writeln!(
                out,
                "<tr><td>{}/{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.service),
                esc(&s.instance),
                s.spans,
                s.logs,
                if s.correlated { "yes" } else { "NO" },
                esc(&if s.problems.is_empty() {
                    "none".to_owned()
                } else {
                    s.problems.join("; ")
                })
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    let _ = writeln!(
        out,
        "<p>Trace roots: {} (one expected); orphan spans: {}.</p>",
        report.map_or(0, |r| r.roots.len()),
        report.map_or(0, |r| r.orphans.len())
    );
    if let Some(problems) = report.map(|r| &r.problems).filter(|p| !p.is_empty()) {
        out.push_str("<ul class=\"notes\">\n");
        for p in problems {
            let _ = writeln!(out, "<li>{}</li>", esc(p));
        }
        out.push_str("</ul>\n");
    }
    out.push_str("</section>\n");
}

/// The cross-service stage: each agent's checks of the others, and its configuration's shape.
fn cross_service(out: &mut String, stage: Option<&CrossServiceVerdict>) {
    out.push_str("<h3>Communication and configuration consistency</h3>\n");
    let Some(c) = stage else {
        out.push_str(
            "<p>The plan declares no cross-service stage, or the run did not reach it.</p>\n",
        );
        return;
    };
    let _ = writeln!(
        out,
        "<p class=\"verdict {}\">Cross-service checks: <strong>{}</strong></p>",
        if c.ok { "ok" } else { "bad" },
        if c.ok { "passed" } else { "FAILED" }
    );
    if !c.services.is_empty() {
        out.push_str(
            "<table>\n<thead><tr><th>service</th><th>checks</th><th>configuration</th></tr></thead>\n<tbody>\n",
        );
        for s in &c.services {
            let checks: Vec<String> = s.checks.iter().map(check_text).collect();
            let config: Vec<String> = s.config.iter().map(config_text).collect();
            let list = |items: &[String]| {
                if items.is_empty() {
                    "-".to_owned()
                } else {
                    items
                        .iter()
                        .map(|i| esc(i))
                        .collect::<Vec<_>>()
                        .join("<br>")
                }
            };
            let _ = writeln!(
                out,
                "<tr><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
                esc(s.service.as_str()),
                esc(s.instance.as_str()),
                list(&checks),
                list(&config)
            );
        }
        out.push_str("</tbody>\n</table>\n");
    }
    if !c.problems.is_empty() {
        out.push_str("<ul class=\"notes\">\n");
        for p in &c.problems {
            let _ = writeln!(out, "<li>{}</li>", esc(p));
        }
        out.push_str("</ul>\n");
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
            format!(", literal secret in {}", v.literal_secrets.join(", "))
        }
    )
}

/// The Markdown report's per-service migration guide, rendered as HTML.
fn guide(out: &mut String, report: &RunReport) {
    let markdown = report.to_markdown();
    let section = markdown
        .split_once(GUIDE_HEADING)
        .map_or(markdown.as_str(), |(_, guide)| guide);
    out.push_str("<section id=\"guide\">\n<h2>Migration guide, per service</h2>\n");
    out.push_str(&markdown_to_html(section));
    out.push_str("</section>\n");
}

/// The heading of the Markdown report's guide section: the page shows what follows it.
const GUIDE_HEADING: &str = "\n## Migration guide, per service\n";

/// What went wrong with a service, in one line.
fn problem(s: &ServiceReport) -> String {
    let failed = s.failed_phases();
    match (s.failure, &s.reason) {
        (Some(kind), Some(reason)) => format!("{}: {reason}", kind.as_str()),
        (Some(kind), None) if !failed.is_empty() => {
            format!("{}: {}", kind.as_str(), failed.join("; "))
        }
        (Some(kind), None) => kind.as_str().to_owned(),
        (None, Some(reason)) => reason.clone(),
        (None, None) if !failed.is_empty() => failed.join("; "),
        (None, None) => "none".into(),
    }
}

/// Converts the small Markdown subset the report uses (headings, lists, a nested numbered
/// list, quotes, `code` and **bold**) to HTML, escaping all text.
fn markdown_to_html(md: &str) -> String {
    #[derive(PartialEq)]
    enum Open {
        Ul,
        Li,
        Ol,
    }
    let mut out = String::new();
    let mut open: Vec<Open> = Vec::new();
    let close_to = |open: &mut Vec<Open>, keep: usize, out: &mut String| {
        while open.len() > keep {
            match open.pop() {
                Some(Open::Ul) => out.push_str("</ul>\n"),
                Some(Open::Li) => out.push_str("</li>\n"),
                Some(Open::Ol) => out.push_str("</ol>\n"),
                None => {}
            }
        }
    };
    for line in md.lines() {
        let nested = line
            .strip_prefix("  ")
            .and_then(|l| l.split_once(". "))
            .filter(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if let Some((_, text)) = nested {
            if open.last() != Some(&Open::Ol) {
                open.push(Open::Ol);
                out.push_str("<ol>\n");
            }
            let _ = writeln!(out, "<li>{}</li>", inline(text));
        } else if let Some(text) = line.strip_prefix("- ") {
            let keep = open
                .iter()
                .position(|o| *o == Open::Ul)
                .map_or(0, |i| i + 1);
            close_to(&mut open, keep, &mut out);
            if open.is_empty() {
                open.push(Open::Ul);
                out.push_str("<ul>\n");
            }
            open.push(Open::Li);
            let _ = write!(out, "<li>{}", inline(text));
        } else {
            close_to(&mut open, 0, &mut out);
            if let Some(text) = line.strip_prefix("### ") {
                let _ = writeln!(out, "<h3>{}</h3>", inline(text));
            } else if let Some(text) = line.strip_prefix("## ") {
                let _ = writeln!(out, "<h3>{}</h3>", inline(text));
            } else if let Some(text) = line.strip_prefix("> ") {
                let _ = writeln!(out, "<blockquote>{}</blockquote>", inline(text));
            } else if !line.trim().is_empty() {
                let _ = writeln!(out, "<p>{}</p>", inline(line));
            }
        }
    }
    close_to(&mut open, 0, &mut out);
    out
}

/// Inline Markdown: `code` and **bold**; everything else escaped.
fn inline(text: &str) -> String {
    let mut out = String::new();
    let parts: Vec<&str> = text.split('`').collect();
    let balanced = parts.len() % 2 == 1;
    for (i, part) in parts.iter().enumerate() {
        if i % 2 == 1 && balanced {
            let _ = write!(out, "<code>{}</code>", esc(part));
            continue;
        }
        if i > 0 && !balanced {
            out.push('`');
        }
        let bold: Vec<&str> = part.split("**").collect();
        if bold.len() % 2 == 1 {
            for (j, b) in bold.iter().enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<strong>{}</strong>", esc(b));
                } else {
                    out.push_str(&esc(b));
                }
            }
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

/// A gate's figures, read generically so that gates the agent adds render too.
struct GateView {
    name: String,
    before: f64,
    after: f64,
    limit: f64,
    passed: bool,
    higher_is_better: bool,
    inconclusive: bool,
}

impl GateView {
    fn of(gate: &GateReport) -> Self {
        let value = serde_json::to_value(gate).unwrap_or_default();
        let number = |k: &str| value[k].as_f64().unwrap_or(0.0);
        GateView {
            name: gate.gate.clone(),
            before: number("before"),
            after: number("after"),
            limit: number("limit"),
            passed: gate.passed,
            higher_is_better: value["higher_is_better"].as_bool() == Some(true),
            inconclusive: value["inconclusive"].as_bool() == Some(true),
        }
    }

    fn unit(&self) -> &'static str {
        unit_of(&self.name)
    }

    fn figure(&self, v: f64) -> String {
        gate_figure(&self.name, v)
    }

    fn verdict(&self) -> &'static str {
        match (self.inconclusive, self.passed) {
            (true, true) => "inconclusive (passed)",
            (true, false) => "inconclusive (failed)",
            (false, true) => "passed",
            (false, false) => "TRIPPED",
        }
    }
}

/// A gate's figure in its unit: `120 ms`, `20.5 MiB`, or the bare number.
pub(crate) fn gate_figure(gate: &str, v: f64) -> String {
    match unit_of(gate) {
        "bytes" => format!("{:.1} MiB", v / 1048576.0),
        "ms" => format!("{v} ms"),
        _ => format!("{}", (v * 100.0).round() / 100.0),
    }
}

fn unit_of(gate: &str) -> &'static str {
    if gate.ends_with("_bytes") || gate.starts_with("memory") {
        "bytes"
    } else if gate.ends_with("_ms") || gate.starts_with("startup") {
        "ms"
    } else {
        ""
    }
}

// === the page's data ===

fn page_data(report: &RunReport, record: &RunRecord, events: &[RunEvent]) -> PageData {
    let start = record.started_at;
    let rel = |t: OffsetDateTime| (t - start).whole_milliseconds() as i64;
    // Which target and which kind of command every command ID is.
    let mut commands: HashMap<CommandId, (usize, &'static str)> = HashMap::new();
    for (t, target) in record.targets.iter().enumerate() {
        for (kind, command) in [
            ("migrate", &target.migrate),
            ("rollback", &target.rollback),
            ("finalize", &target.finalize),
        ] {
            if let Some(c) = command {
                commands.insert(c.command.command_id, (t, kind));
            }
        }
    }
    let by_name: HashMap<String, usize> = record
        .targets
        .iter()
        .enumerate()
        .map(|(t, target)| (format!("{}/{}", target.service, target.instance), t))
        .collect();
    let mut bars: Vec<Vec<Bar>> = vec![Vec::new(); record.targets.len()];
    let mut open: HashMap<(CommandId, Phase), i64> = HashMap::new();
    let mut with_events: std::collections::HashSet<CommandId> = Default::default();
    let mut latest = rel(report.finished_at.unwrap_or(report.updated_at));
    for event in events {
        latest = latest.max(rel(event.at()));
        let RunEvent::Progress(p) = event else {
            continue;
        };
        // Commands the record does not hold are the cross-service stage's inspections.
        let Some((t, kind)) = commands.get(&p.command_id).copied().or_else(|| {
            let &t = by_name.get(&format!("{}/{}", p.service, p.instance))?;
            commands.insert(p.command_id, (t, "inspect"));
            Some((t, "inspect"))
        }) else {
            continue;
        };
        with_events.insert(p.command_id);
        let at = rel(p.at);
        match p.status {
            PhaseStatus::Started => {
                open.insert((p.command_id, p.phase), at);
            }
            PhaseStatus::Succeeded | PhaseStatus::Failed => {
                let begin = open.remove(&(p.command_id, p.phase)).unwrap_or_else(|| {
                    at - p.duration_ms.map_or(0, |d| i64::try_from(d).unwrap_or(0))
                });
                bars[t].push(Bar {
                    phase: p.phase.as_str(),
                    kind,
                    start: begin,
                    end: at,
                    status: phase_status(p.status),
                    detail: p.detail.clone(),
                });
            }
        }
    }
    // Phases whose end never came: cut at their command's result, or still running.
    let answered: HashMap<CommandId, i64> = record
        .commands()
        .filter_map(|c| Some((c.command.command_id, rel(c.result.as_ref()?.at))))
        .collect();
    for ((command_id, phase), begin) in open {
        if let Some(&(t, kind)) = commands.get(&command_id) {
            let end = answered.get(&command_id).copied();
            bars[t].push(Bar {
                phase: phase.as_str(),
                kind,
                start: begin,
                end: end.unwrap_or(latest).max(begin),
                status: if end.is_some() {
                    "interrupted"
                } else {
                    "running"
                },
                detail: None,
            });
        }
    }
    // Commands whose events are gone (or were never read): their results' phases, back to back.
    for (t, target) in record.targets.iter().enumerate() {
        for (kind, command) in [
            ("migrate", &target.migrate),
            ("rollback", &target.rollback),
            ("finalize", &target.finalize),
        ] {
            let Some(CommandRecord {
                result: Some(result),
                ..
            }) = command
            else {
                continue;
            };
            if with_events.contains(&result.command_id) {
                continue;
            }
            bars[t].extend(bars_from_result(result, kind, rel(result.at)));
        }
        bars[t].sort_by_key(|b| (b.start, b.end));
    }
    let rows: Vec<Row> = record
        .targets
        .iter()
        .zip(bars)
        .zip(&report.services)
        .map(|((target, bars), service)| Row {
            target: format!("{}/{}", target.service, target.instance),
            service: target.service.to_string(),
            status: service.status.as_str(),
            bars,
        })
        .collect();
    let waves = record
        .waves
        .iter()
        .map(|w| {
            let migrate = || {
                w.targets
                    .iter()
                    .filter_map(|&t| record.targets[t].migrate.as_ref())
            };
            let first = migrate().filter_map(|c| c.sent_at).map(rel).min();
            let bar_start = w
                .targets
                .iter()
                .flat_map(|&t| rows[t].bars.iter().filter(|b| b.kind == "migrate"))
                .map(|b| b.start)
                .min();
            let bar_end = w
                .targets
                .iter()
                .flat_map(|&t| rows[t].bars.iter().filter(|b| b.kind == "migrate"))
                .map(|b| b.end)
                .max();
            let result_end = migrate()
                .filter_map(|c| c.result.as_ref().map(|r| rel(r.at)))
                .max();
            WaveSpan {
                name: w.name.clone(),
                status: w.status.as_str(),
                start: match (first, bar_start) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                end: result_end.max(bar_end),
                rows: w.targets.clone(),
            }
        })
        .collect();
    let mut marks = Vec::new();
    for (kind, label) in [("rollback", "rollback"), ("finalize", "finalize")] {
        let first = record
            .targets
            .iter()
            .filter_map(|t| {
                if kind == "rollback" {
                    &t.rollback
                } else {
                    &t.finalize
                }
                .as_ref()
            })
            .filter_map(|c| c.sent_at.map(|at| (at, c.cause.clone())))
            .min_by_key(|(at, _)| *at);
        if let Some((at, cause)) = first {
            marks.push(Mark {
                at: rel(at),
                label: match cause {
                    Some(cause) if kind == "rollback" => format!("{label}: {cause}"),
                    _ => label.to_owned(),
                },
                kind,
            });
        }
    }
    if let Some(at) = rows
        .iter()
        .flat_map(|r| &r.bars)
        .filter(|b| b.kind == "inspect")
        .map(|b| b.start)
        .min()
    {
        marks.push(Mark {
            at,
            label: "cross-service checks".into(),
            kind: "check",
        });
    }
    for bar in rows.iter().flat_map(|r| &r.bars) {
        latest = latest.max(bar.end);
    }
    PageData {
        duration_ms: latest.max(1),
        waves,
        rows,
        marks,
        charts: report.services.iter().map(chart).collect(),
    }
}

fn bars_from_result(result: &RunResult, kind: &'static str, end: i64) -> Vec<Bar> {
    let total: i64 = result
        .phases
        .iter()
        .map(|p| i64::try_from(p.duration_ms).unwrap_or(0))
        .sum();
    let mut at = end - total;
    result
        .phases
        .iter()
        .map(|p| {
            let begin = at;
            at += i64::try_from(p.duration_ms).unwrap_or(0);
            Bar {
                phase: p.phase.as_str(),
                kind,
                start: begin,
                end: at,
                status: phase_status(p.status),
                detail: p.detail.clone(),
            }
        })
        .collect()
}

fn chart(s: &ServiceReport) -> Chart {
    let mut gates: Vec<ChartGate> = s
        .gates
        .iter()
        .map(|g| {
            let g = GateView::of(g);
            ChartGate {
                unit: g.unit(),
                before: g.before,
                after: Some(g.after),
                limit: Some(g.limit),
                passed: Some(g.passed),
                higher_is_better: g.higher_is_better,
                inconclusive: g.inconclusive,
                name: g.name,
            }
        })
        .collect();
    // Figures measured without a gate (e.g. no startup baseline): shown without a limit.
    let m = &s.measurements;
    for (name, before, after) in [
        ("startup_ms", m.startup_ms_before, m.startup_ms_after),
        ("memory_bytes", m.rss_bytes_before, m.rss_bytes_after),
    ] {
        if gates.iter().any(|g| unit_of(&g.name) == unit_of(name)) {
            continue;
        }
        if let Some(v) = before.or(after) {
            gates.push(ChartGate {
                name: name.to_owned(),
                unit: unit_of(name),
                before: before.unwrap_or(v) as f64,
                after: after.map(|a| a as f64),
                limit: None,
                passed: None,
                higher_is_better: false,
                inconclusive: false,
            });
        }
    }
    Chart {
        target: format!("{}/{}", s.service, s.instance),
        service: s.service.to_string(),
        status: s.status.as_str(),
        gates,
    }
}

fn phase_status(status: PhaseStatus) -> &'static str {
    match status {
        PhaseStatus::Started => "running",
        PhaseStatus::Succeeded => "succeeded",
        PhaseStatus::Failed => "failed",
    }
}

fn status_class(report: &RunReport) -> String {
    serde_json::to_value(report.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn ms(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v} ms"))
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

const STYLE: &str = r##"
:root { --fg:#1d2430; --muted:#5d6b7e; --line:#d8dee6; --bg:#ffffff; --panel:#f5f7fa;
  --ok:#2f9e55; --bad:#d64545; --warn:#d98a1c; --blue:#3b73d9; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); margin: 0 auto; padding: 24px 32px 48px; max-width: 1400px; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { text-align: left; padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { background: var(--panel); font-weight: 600; }
table.facts th { color: var(--muted); font-weight: 500; width: 110px; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, monospace; background: var(--panel);
  padding: 1px 4px; border-radius: 3px; }
.status { font-size: 15px; font-weight: 600; margin: 0 0 10px; }
.status-succeeded, .status-rehearsed, .verdict.ok { color: var(--ok); }
.status-failed, .status-cancelled, .verdict.bad, .error { color: var(--bad); }
.status-succeeded_with_failures, .status-running, .status-rolled_back, .status-awaiting_finalize { color: var(--warn); }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; background: #e6ebf1; }
.badge.succeeded { background: #dcf3e4; color: #1d6e3a; }
.badge.rolled_back, .badge.rollback_failed, .badge.refused, .badge.timed_out,
.badge.not_delivered { background: #fbe2e2; color: #9b2323; }
.hint { color: var(--muted); margin: 0 0 6px; }
.notes li { color: var(--muted); }
.legend { display: flex; flex-wrap: wrap; gap: 14px; margin: 6px 0 4px; font-size: 12px; color: var(--muted); }
.legend span::before { content: ""; display: inline-block; width: 12px; height: 10px; margin-right: 5px;
  border-radius: 2px; background: var(--swatch); vertical-align: -1px; }
#timeline { width: 100%; display: block; }
#timeline text { font-size: 12px; fill: var(--fg); }
#timeline .axis text { fill: var(--muted); font-size: 11px; }
#timeline .grid { stroke: #eef1f5; }
#timeline .wave-band { fill: #eef3fb; }
#timeline .wave-label { font-weight: 600; fill: #2c4d8a; }
#timeline .bar { stroke: #ffffff; stroke-width: 0.5; }
#timeline .bar.failed { stroke: var(--bad); stroke-width: 2; }
#timeline .bar.running { opacity: 0.55; }
#timeline .mark line { stroke-dasharray: 4 3; stroke-width: 1.5; }
#timeline .mark.rollback line { stroke: var(--bad); }
#timeline .mark.finalize line { stroke: var(--muted); }
#timeline .mark.rollback text { fill: var(--bad); }
#timeline .mark.check line { stroke: #b08a1e; }
#timeline .mark.check text { fill: #8a6a10; }
#timeline .row-status { fill: var(--muted); }
#timeline .status-rolled_back, #timeline .status-rollback_failed, #timeline .status-refused,
#timeline .status-timed_out { fill: var(--bad); }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: #fff; }
.card h3 { margin: 2px 0 4px; display: flex; justify-content: space-between; }
.chart { width: 100%; display: block; }
.chart text { font-size: 11.5px; fill: var(--fg); }
.chart .value { fill: var(--muted); }
.chart .limit { stroke: var(--fg); stroke-dasharray: 4 3; stroke-width: 1.5; }
.chart .before { fill: #b6bfcc; }
.chart .after { fill: var(--blue); }
.chart .after.tripped { fill: var(--bad); }
.chart .after.inconclusive { fill: var(--warn); }
details.figures { margin-top: 12px; }
#guide ul { padding-left: 20px; }
blockquote { color: var(--muted); border-left: 3px solid var(--line); margin: 6px 0; padding-left: 10px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"##;

const SCRIPT: &str = r##"
(function () {
  "use strict";
  var root = document.documentElement;
  window.addEventListener("error", function (e) { fail(e.message || "script error"); });
  function fail(message) {
    root.setAttribute("data-rendered", "error");
    var p = document.getElementById("render-error");
    if (p) { p.hidden = false; p.textContent = "The timeline and charts could not be drawn: " + message; }
  }
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = { accepted: "#9aa5b1", precheck: "#5b8def", backup: "#8e6cef", apply: "#f0a030",
    restart: "#2bb3a3", validate: "#3fa34d", inspect: "#d4a72c", rollback: "#d64545",
    finalize: "#6b7785", recover: "#c77dba" };
  function el(name, attrs, parent, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]); }
    if (text !== undefined) e.textContent = text;
    if (parent) parent.appendChild(e);
    return e;
  }
  function seconds(ms) {
    var s = ms / 1000;
    return (Math.abs(s) >= 10 ? s.toFixed(0) : Math.abs(s) >= 1 ? s.toFixed(1) : s.toFixed(2)) + " s";
  }
  function figure(v, unit) {
    if (v === null || v === undefined) return "-";
    if (unit === "bytes") return (v / 1048576).toFixed(1) + " MiB";
    if (unit === "ms") return Math.round(v) + " ms";
    return String(Math.round(v * 100) / 100);
  }
  function niceStep(span, ticks) {
    var raw = span / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 5, 10];
    for (var i = 0; i < steps.length; i++) { if (steps[i] * p >= raw) return steps[i] * p; }
    return 10 * p;
  }

  function legend() {
    var box = document.getElementById("legend");
    Object.keys(COLORS).forEach(function (phase) {
      var s = document.createElement("span");
      s.style.setProperty("--swatch", COLORS[phase]);
      s.textContent = phase;
      box.appendChild(s);
    });
  }

  function timeline(data) {
    var svg = document.getElementById("timeline");
    var width = Math.max(svg.getBoundingClientRect().width || 0, 900);
    var labelW = 190, rightPad = 180, top = 40, rowH = 24, waveH = 22, barH = 15;
    var span = Math.max(data.duration_ms, 1);
    var scale = (width - labelW - rightPad) / span;
    var x = function (ms) { return labelW + Math.max(0, ms) * scale; };
    var y = top, layout = [];
    data.waves.forEach(function (wave, w) {
      layout.push({ wave: w, y: y }); y += waveH;
      wave.rows.forEach(function (r) { layout.push({ row: r, y: y }); y += rowH; });
    });
    var rowsEnd = y, height = y + 12 + 16 * data.marks.length;
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    svg.setAttribute("height", height);
    var axis = el("g", { "class": "axis" }, svg);
    var step = niceStep(span, 10);
    for (var t = 0; t <= span + 1e-9; t += step) {
      el("line", { "class": "grid", x1: x(t), x2: x(t), y1: top - 6, y2: rowsEnd }, axis);
      el("text", { x: x(t), y: top - 12, "text-anchor": "middle" }, axis, seconds(t));
    }
    layout.forEach(function (item) {
      if (item.wave !== undefined) {
        var wave = data.waves[item.wave];
        var rows = wave.rows.length;
        if (wave.start !== null && wave.end !== null) {
          el("rect", { "class": "wave-band", x: x(wave.start), y: item.y + 2,
            width: Math.max(2, (wave.end - wave.start) * scale), height: waveH + rows * rowH - 4, rx: 4 }, svg);
        }
        el("text", { "class": "wave-label", x: 6, y: item.y + 15 }, svg,
          "wave " + (item.wave + 1) + ": " + wave.name + " (" + wave.status + ")");
        return;
      }
      var row = data.rows[item.row];
      var g = el("g", { "class": "row", "data-service": row.service }, svg);
      el("text", { "class": "row-label", x: 18, y: item.y + 16 }, g, row.target);
      row.bars.forEach(function (bar) {
        var r = el("rect", { "class": "bar " + bar.status + " kind-" + bar.kind,
          x: x(bar.start), y: item.y + (rowH - barH) / 2, height: barH, rx: 2,
          width: Math.max(2, (bar.end - bar.start) * scale),
          fill: COLORS[bar.phase] || "#888", "data-phase": bar.phase }, g);
        el("title", {}, r, row.target + " " + bar.kind + ": " + bar.phase + " " + bar.status +
          ", " + Math.max(0, bar.end - bar.start) + " ms (at " + seconds(bar.start) + ")" +
          (bar.detail ? "\n" + bar.detail : ""));
      });
      var failed = row.bars.filter(function (b) { return b.status === "failed"; })
        .map(function (b) { return b.phase + " ✗"; });
      el("text", { "class": "row-status status-" + row.status, x: width - rightPad + 12, y: item.y + 16 }, g,
        row.status + (failed.length ? " (" + failed.join(", ") + ")" : ""));
    });
    data.marks.forEach(function (mark, i) {
      var g = el("g", { "class": "mark " + mark.kind }, svg);
      var ly = rowsEnd + 14 + 16 * i, right = x(mark.at) > width * 0.7;
      el("line", { x1: x(mark.at), x2: x(mark.at), y1: top - 4, y2: ly + 2 }, g);
      el("text", { x: x(mark.at) + (right ? -4 : 4), y: ly, "text-anchor": right ? "end" : "start" }, g, mark.label);
    });
    return data.rows.length;
  }

  function charts(data) {
    var box = document.getElementById("charts");
    var drawn = 0;
    data.charts.forEach(function (c) {
      var card = document.createElement("div");
      card.className = "card";
      var h = document.createElement("h3");
      var name = document.createElement("span"); name.textContent = c.target;
      var status = document.createElement("span"); status.className = "badge " + c.status; status.textContent = c.status;
      h.appendChild(name); h.appendChild(status); card.appendChild(h);
      var width = 420, labelW = 112, valueW = 118, gateH = 62, barH = 14;
      var height = Math.max(1, c.gates.length) * gateH + 6;
      var svg = el("svg", { "class": "chart", "data-service": c.service, viewBox: "0 0 " + width + " " + height,
        role: "img" }, card);
      el("title", {}, svg, c.target + ": figures before and after the migration");
      if (!c.gates.length) {
        el("text", { x: 4, y: 20 }, svg, "no figures: the migration did not get that far");
      }
      c.gates.forEach(function (gate, i) {
        var y = i * gateH + 4;
        var top = Math.max(gate.before, gate.after || 0, gate.limit || 0, 1) * 1.12;
        var sx = function (v) { return labelW + (v / top) * (width - labelW - valueW); };
        var vx = width - valueW + 8;
        el("text", { x: 0, y: y + 13 }, svg, gate.name);
        var verdict = gate.passed === null ? "measured" : gate.inconclusive ? "inconclusive" :
          gate.passed ? "passed" : "TRIPPED";
        el("text", { "class": "value", x: 0, y: y + 29 }, svg, verdict);
        el("rect", { "class": "before", x: labelW, y: y + 2, height: barH, width: Math.max(1, sx(gate.before) - labelW) }, svg);
        el("text", { "class": "value", x: vx, y: y + 13 }, svg, "before " + figure(gate.before, gate.unit));
        if (gate.after !== null) {
          var cls = "after" + (gate.passed === false ? " tripped" : "") + (gate.inconclusive ? " inconclusive" : "");
          el("rect", { "class": cls, x: labelW, y: y + 2 + barH + 3, height: barH, width: Math.max(1, sx(gate.after) - labelW) }, svg);
          el("text", { "class": "value", x: vx, y: y + 13 + barH + 3 }, svg, "after " + figure(gate.after, gate.unit));
        }
        if (gate.limit !== null) {
          el("line", { "class": "limit", x1: sx(gate.limit), x2: sx(gate.limit), y1: y, y2: y + 2 * barH + 7 }, svg);
          el("text", { "class": "value", x: vx, y: y + 13 + 2 * (barH + 3) }, svg,
            "limit " + (gate.higher_is_better ? "≥ " : "≤ ") + figure(gate.limit, gate.unit));
        }
      });
      box.appendChild(card);
      drawn++;
    });
    return drawn;
  }

  try {
    var data = JSON.parse(document.getElementById("flotilla-data").textContent);
    legend();
    var rows = timeline(data);
    var cards = charts(data);
    if (rows !== data.rows.length || cards !== data.charts.length) throw new Error("incomplete drawing");
    if (root.getAttribute("data-rendered") !== "error") root.setAttribute("data-rendered", "ok");
  } catch (e) {
    fail(e && e.message ? e.message : String(e));
  }
})();
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_subset_is_escaped_and_structured() {
        let html = markdown_to_html(
            "### inference/a\n\n- status: **succeeded**\n- steps:\n  1. write `<b>&x`\n  2. restart\n- problems: <script>\n",
        );
        assert!(html.contains("<h3>inference/a</h3>"), "{html}");
        assert!(html.contains("<strong>succeeded</strong>"), "{html}");
        assert!(
            html.contains("<ol>\n<li>write <code>&lt;b&gt;&amp;x</code></li>"),
            "{html}"
        );
        assert!(html.contains("problems: &lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        assert_eq!(html.matches("<ul>").count(), html.matches("</ul>").count());
        assert_eq!(html.matches("<li>").count(), html.matches("</li>").count());
    }

    fn command(run: &str, id: &str, service: &str) -> serde_json::Value {
        serde_json::json!({
            "schema": "flotilla.command.v1", "command_id": id, "run_id": run,
            "service": service, "instance": "a",
            "issued_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T01:00:00Z",
            "action": { "kind": "finalize", "migration": id },
        })
    }

    fn result(run: &str, id: &str, service: &str, at: &str, outcome: &str) -> RunResult {
        serde_json::from_value(serde_json::json!({
            "schema": "flotilla.result.v1", "run_id": run, "command_id": id,
            "service": service, "instance": "a", "at": at, "outcome": outcome,
            "phases": [
                { "phase": "precheck", "status": "succeeded", "duration_ms": 100 },
                { "phase": "apply", "status": "failed", "duration_ms": 200, "detail": "<boom>" },
            ],
            "gates": [{ "gate": "startup_ms", "before": 50, "after": 70, "limit": 150, "passed": true }],
        }))
        .unwrap()
    }

    /// The timeline takes phase times from the events, falls back to a result's phases for a
    /// command without events, and marks the fleet rollback; the page escapes what it embeds.
    #[test]
    fn timeline_comes_from_events_and_falls_back_to_results() {
        let run = "01a21930-abcf-70cf-b8be-040f0f9d3362";
        let (m1, m2, r1) = (
            "01a21930-0000-7000-8000-000000000001",
            "01a21930-0000-7000-8000-000000000002",
            "01a21930-0000-7000-8000-000000000003",
        );
        let mut record: RunRecord = serde_json::from_value(serde_json::json!({
            "schema": "flotilla.run.v1", "run_id": run, "plan_name": "p</script>",
            "plan_path": "p.toml", "plan_text": "name = \"p\"\n", "status": "failed",
            "stage": "done", "started_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:05Z", "finished_at": "2026-01-01T00:00:05Z",
            "coordinator": "host:1",
            "waves": [{ "name": "one", "max_parallel": null, "targets": [0, 1], "status": "done" }],
            "targets": [
                { "service": "inference", "instance": "a", "wave": 0 },
                { "service": "ingest", "instance": "a", "wave": 0 },
            ],
        }))
        .unwrap();
        let sent = |at: &str, c: serde_json::Value, r: RunResult| CommandRecord {
            command: serde_json::from_value(c).unwrap(),
            sent_at: Some(
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap(),
            ),
            result: Some(r),
            timed_out: false,
            not_delivered: None,
            cause: Some("another service failed".into()),
            digest: None,
        };
        record.targets[0].migrate = Some(sent(
            "2026-01-01T00:00:01Z",
            command(run, m1, "inference"),
            result(run, m1, "inference", "2026-01-01T00:00:02Z", "succeeded"),
        ));
        record.targets[0].rollback = Some(sent(
            "2026-01-01T00:00:03Z",
            command(run, r1, "inference"),
            result(run, r1, "inference", "2026-01-01T00:00:04Z", "rolled_back"),
        ));
        record.targets[1].migrate = Some(sent(
            "2026-01-01T00:00:01Z",
            command(run, m2, "ingest"),
            result(run, m2, "ingest", "2026-01-01T00:00:03Z", "rolled_back"),
        ));
        let progress = |id: &str, at: &str, status: &str, phase: &str| {
            RunEvent::Progress(
                serde_json::from_value(serde_json::json!({
                    "schema": "flotilla.progress.v1", "run_id": run, "command_id": id,
                    "service": "inference", "instance": "a", "at": at, "phase": phase,
                    "status": status,
                }))
                .unwrap(),
            )
        };
        let events = [
            progress(m1, "2026-01-01T00:00:01.100Z", "started", "precheck"),
            progress(m1, "2026-01-01T00:00:01.300Z", "succeeded", "precheck"),
            progress(r1, "2026-01-01T00:00:03.500Z", "started", "rollback"),
        ];
        let report = RunReport::from_record(&record);
        let data = page_data(&report, &record, &events);
        let inference = &data.rows[0].bars;
        assert_eq!(
            (inference[0].phase, inference[0].start, inference[0].end),
            ("precheck", 1100, 1300)
        );
        // Started, never ended, but the command has a result: it ends there.
        let rollback = inference.iter().find(|b| b.kind == "rollback").unwrap();
        assert_eq!(
            (rollback.start, rollback.end, rollback.status),
            (3500, 4000, "interrupted")
        );
        // No events for ingest: its result's phases, back to back, ending at the result.
        let ingest = &data.rows[1].bars;
        assert_eq!((ingest[0].start, ingest[0].end), (2700, 2800));
        assert_eq!(
            (ingest[1].start, ingest[1].end, ingest[1].status),
            (2800, 3000, "failed")
        );
        assert_eq!(data.waves[0].start, Some(1000));
        assert_eq!(data.marks[0].kind, "rollback");
        assert_eq!(data.marks[0].at, 3000);
        assert_eq!(data.charts[0].gates[0].name, "startup_ms");
        let page = render(&report, &record, &events);
        assert!(!page.contains("p</script>"), "the plan name is not escaped");
        assert!(!page.contains("<boom>"), "a phase detail is not escaped");
        assert!(page.contains("&lt;boom&gt;") || page.contains("\\u003cboom>"));
    }

    #[test]
    fn escape_covers_attribute_quotes() {
        assert_eq!(esc(r#"a<"'>&"#), "a&lt;&quot;&#39;&gt;&amp;");
    }
}
