//! The Markdown report. It doubles as the migration guide T006 asks for: per service, the steps
//! applied, the configuration path, the health endpoint, the figures before and after, whether
//! rollback was tested, and the problems met.

use std::fmt::Write as _;

use flotilla_schemas::{PhaseStatus, Step};

use super::gate::{self, Gate};
use super::{RunReport, ServiceReport, WaveReport};
use crate::plan::{Plan, ServicePlan};

/// Renders `report` as Markdown.
pub(super) fn render(report: &RunReport) -> String {
    let plan = Plan::parse(&report.plan_text).ok();
    let mut out = String::new();
    let _ = writeln!(out, "# Migration report: {}\n", report.plan);
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| run | `{}` |", report.run_id);
    let _ = writeln!(out, "| status | **{}** |", report.status_text());
    if report.rehearsal {
        let _ = writeln!(out, "| mode | rehearsal (migrate, validate, roll back) |");
    }
    let _ = writeln!(out, "| started | {} |", rfc3339(report.started_at));
    if let Some(end) = report.finished_at {
        let _ = writeln!(out, "| finished | {} |", rfc3339(end));
    }
    let _ = writeln!(
        out,
        "| duration | {:.1} s |",
        report.duration_ms as f64 / 1000.0
    );
    let _ = writeln!(out, "| finalized | {} |", yes_no(report.finalized));
    let _ = writeln!(out, "| coordinator | {} |", report.coordinator);
    if let Some(by) = &report.started_by {
        let _ = writeln!(out, "| started by | {} |", by.text().replace('|', "\\|"));
    }
    if let Some(digest) = &report.plan_digest {
        let _ = writeln!(out, "| plan digest | `{digest}` |");
    }
    if let Some(trace) = &report.trace_id {
        let _ = writeln!(out, "| trace | `{trace}` |");
    }
    if let Some(plan) = &plan {
        let _ = writeln!(
            out,
            "| on failure | {} (failure budget {}) |",
            plan.on_failure.as_str(),
            plan.failure_budget
        );
    }
    for note in &report.notes {
        let _ = writeln!(out, "\n> {note}");
    }

    tables(&mut out, report);
    let _ = writeln!(out, "\n## Migration guide, per service\n");
    for s in &report.services {
        let service_plan = plan.as_ref().and_then(|p| p.service(&s.service));
        guide(&mut out, s, service_plan);
    }
    // Reasons, paths and names are data: no control character reaches a reader's terminal or
    // editor raw (see `sanitize`).
    crate::sanitize::multi_line(&out).into_owned()
}

/// The waves table and the summary table, one row per service.
fn tables(out: &mut String, report: &RunReport) {
    let _ = writeln!(out, "\n## Waves\n");
    let _ = writeln!(
        out,
        "| # | wave | parallel | status | services |\n|---|---|---|---|---|"
    );
    for (i, wave) in report.waves.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            i + 1,
            wave.name,
            wave.max_parallel
                .map_or_else(|| "all".to_owned(), |n| n.to_string()),
            wave.status.as_str(),
            wave.services.join(", ") + &picked_by(wave)
        );
    }
    analysis_table(out, report);

    let _ = writeln!(out, "\n## Summary\n");
    let _ = writeln!(
        out,
        "| service | wave | status | startup (or job run) before → after | memory before → after | rollback tested | problem |\n|---|---|---|---|---|---|---|"
    );
    for s in &report.services {
        let m = &s.measurements;
        let _ = writeln!(
            out,
            "| {}/{} | {} | {} | {} | {} | {} | {} |",
            s.service,
            s.instance,
            s.wave,
            s.status.as_str(),
            gate::restart_figures(m),
            gate::memory_figures(m),
            yes_no(s.rollback_validated),
            s.problem().replace('|', "\\|").replace('\n', " "),
        );
    }
}

fn guide(out: &mut String, s: &ServiceReport, plan: Option<&ServicePlan>) {
    let _ = writeln!(out, "### {}/{}\n", s.service, s.instance);
    let _ = writeln!(out, "- status: **{}**", s.status.as_str());
    if let Some(plan) = plan {
        plan_lines(out, plan, gate::is_job(&s.measurements));
    }
    let m = &s.measurements;
    let _ = writeln!(
        out,
        "- figures: {}{}, memory {}, backup {} file(s), {}",
        if gate::is_job(m) { "" } else { "startup " },
        gate::restart_figures(m),
        gate::memory_figures(m),
        m.backup_files.map_or_else(|| "-".into(), |n| n.to_string()),
        bytes(m.backup_bytes),
    );
    for (label, run) in gate::job_runs(m) {
        let _ = writeln!(out, "- job {label}: {run}");
    }
    for gate in &s.gates {
        let _ = writeln!(out, "- gate {}", Gate(gate).line());
    }
    let _ = writeln!(
        out,
        "- rollback tested: {}",
        if s.rollback_validated {
            "yes: restored from the backup and proved healthy"
        } else {
            "no"
        }
    );
    if !s.phases.is_empty() {
        let phases: Vec<String> = s
            .phases
            .iter()
            .map(|p| {
                let mark = if p.status == PhaseStatus::Failed {
                    " ✗"
                } else {
                    ""
                };
                format!("{} {}ms{mark}", p.phase.as_str(), p.duration_ms)
            })
            .collect();
        let _ = writeln!(out, "- phases: {}", phases.join(", "));
    }
    let _ = writeln!(out, "- problems: {}\n", s.problem());
}

/// What the plan does to the service: the configuration written, the health endpoint, the steps.
fn plan_lines(out: &mut String, plan: &ServicePlan, job: bool) {
    let configs: Vec<&str> = plan
        .steps
        .iter()
        .filter_map(|step| match step {
            Step::WriteFile { path, .. } | Step::ReplaceText { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    let _ = writeln!(
        out,
        "- configuration written: {}",
        if configs.is_empty() {
            "none".to_owned()
        } else {
            configs
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let health: Vec<String> = plan
        .health
        .iter()
        .map(|h| {
            let url = h.url.as_deref().unwrap_or("the agent's health_url");
            match &h.body_contains {
                Some(body) => format!("{url} → {} with `{body}`", h.expect_status),
                None => format!("{url} → {}", h.expect_status),
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "- health endpoint: {}",
        if job {
            "none: a run-once job, judged by its run".to_owned()
        } else if health.is_empty() {
            "the agent's health_url → 200".to_owned()
        } else {
            health.join("; ")
        }
    );
    let _ = writeln!(out, "- steps:");
    for (i, step) in plan.steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}", i + 1, describe(step));
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::WriteFile { path, mode, .. } => match mode {
            Some(mode) => format!("write `{path}` (mode {mode:o})"),
            None => format!("write `{path}`"),
        },
        Step::ReplaceText { path, find, .. } => format!("replace `{find}` in `{path}`"),
        Step::Delete { path } => format!("delete `{path}`"),
        Step::RunCommand { program, args, .. } => {
            format!("run `{program} {}`", args.join(" "))
        }
        Step::Restart => "restart the service".into(),
    }
}

fn bytes(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1024 * 1024 => format!("{:.1} KiB", v as f64 / 1024.0),
        Some(v) => format!("{:.1} MiB", v as f64 / 1048576.0),
    }
}

fn yes_no(v: bool) -> &'static str {
    if v { "yes" } else { "no" }
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Which selectors picked a wave's services, for the Waves table (empty when none did).
fn picked_by(wave: &WaveReport) -> String {
    let parts: Vec<String> = [("selector", &wave.selector), ("-l", &wave.limit)]
        .into_iter()
        .filter_map(|(what, s)| s.as_ref().map(|s| format!("{what} `{s}`")))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// The waves' analysis verdicts, when there are any: the query as sent and what it returned.
fn analysis_table(out: &mut String, report: &RunReport) {
    let mut verdicts = report.analysis_verdicts().peekable();
    if verdicts.peek().is_none() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## Analysis\n\n| wave | gate | query | before | after | threshold | verdict |\n|---|---|---|---|---|---|---|"
    );
    let number = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| v.to_string());
    for (wave, v) in verdicts {
        let verdict = match (v.passed, v.inconclusive) {
            (true, false) => "passed".to_owned(),
            (true, true) => format!("inconclusive (warn): {}", v.detail),
            (false, _) => format!("**failed**: {}", v.detail),
        };
        let _ = writeln!(
            out,
            "| {wave} | {} | `{}` | {} | {} | {} | {} |",
            v.name,
            v.query.replace('|', "\\|").replace('`', "'"),
            number(v.baseline),
            number(v.value),
            v.threshold,
            verdict.replace('|', "\\|")
        );
    }
}
