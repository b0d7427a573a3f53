//! `flotilla migrate` and `flotilla plan check`.

use std::path::Path;

use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

use super::{check_report_files, connect, engine_parts, fail, finish, open_store};
use crate::cli::{Cli, ReportFiles};
use crate::plan::Plan;
use crate::rollout::{self, Engine, Target};
use crate::{discovery, exit};

/// Reads a plan and its text.
fn read_plan(path: &Path) -> Result<(Plan, String), u8> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            exit::USAGE,
            format!("cannot read plan {}: {e}", path.display()),
        )
    })?;
    let plan =
        Plan::parse_named(&text, &path.display().to_string()).map_err(|e| fail(exit::USAGE, e))?;
    Ok((plan, text))
}

/// Checks a plan offline and shows its waves.
pub(super) fn plan_check(path: &Path) -> u8 {
    let plan = match read_plan(path) {
        Ok((plan, _)) => plan,
        Err(code) => return code,
    };
    let steps: usize = plan.services.iter().map(|s| s.steps.len()).sum();
    println!(
        "plan {:?} is valid: {} service(s), {} step(s), {} wave(s)",
        plan.name,
        plan.services.len(),
        steps,
        plan.waves.len()
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        println!(
            "  wave {} {:?} ({} at a time): {}",
            i + 1,
            wave.name,
            wave.max_parallel
                .map_or_else(|| "all".to_owned(), |n| n.to_string()),
            wave.services
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  failure budget {}, on_failure = {}",
        plan.failure_budget,
        plan.on_failure.as_str()
    );
    exit::OK
}

/// Runs a plan over the fleet (or shows what it would do).
pub(super) async fn migrate(
    cli: &Cli,
    plan_path: &Path,
    dry_run: bool,
    rehearse: bool,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> u8 {
    let (plan, text) = match read_plan(plan_path) {
        Ok(read) => read,
        Err(code) => return code,
    };
    if let Err(code) = check_report_files(files) {
        return code;
    }
    let (client, subjects) = match connect(cli).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let agents = match discovery::discover(&client, &subjects, cli.discovery_window).await {
        Ok(found) => found,
        Err(e) => return fail(exit::BUS, error_chain(&e)),
    };
    let targets = match rollout::preflight(&plan, &agents) {
        Ok(targets) => targets,
        Err(problems) => {
            return fail(
                exit::PREFLIGHT,
                format!(
                    "pre-flight failed, nothing was changed: {}",
                    problems.join("; ")
                ),
            );
        }
    };
    if dry_run {
        dry_run_text(&plan, &targets);
        return exit::OK;
    }
    let store = match open_store(&client, &subjects).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let parts = match engine_parts(cli, &client, &subjects, store, shutdown) {
        Ok(parts) => parts,
        Err(code) => return code,
    };
    let engine = match Engine::create(
        parts,
        plan.clone(),
        &plan_path.display().to_string(),
        &text,
        &targets,
        rehearse,
    )
    .await
    {
        Ok(engine) => engine,
        Err(e) => return fail(exit::BUS, error_chain(&e)),
    };
    eprintln!(
        "run {}: plan {:?}, {} agent(s) in {} wave(s){}",
        engine.run_id(),
        plan.name,
        targets.len(),
        plan.waves.len(),
        if rehearse { ", rehearsal" } else { "" }
    );
    let result = engine.drive().await;
    finish(cli, &client, result, files).await
}

fn dry_run_text(plan: &Plan, targets: &[Target]) {
    println!("dry run of plan {:?}: nothing will change", plan.name);
    println!(
        "failure budget {} of {} agent(s), on_failure = {}, command_timeout {:?}",
        plan.failure_budget,
        targets.len(),
        plan.on_failure.as_str(),
        plan.command_timeout
    );
    for (i, wave) in plan.waves.iter().enumerate() {
        println!(
            "wave {} {:?} ({} at a time):",
            i + 1,
            wave.name,
            wave.max_parallel
                .map_or_else(|| "all".to_owned(), |n| n.to_string())
        );
        for service in &wave.services {
            let Some(service_plan) = plan.service(service) else {
                continue;
            };
            let steps: Vec<&str> = service_plan.steps.iter().map(|s| s.name()).collect();
            let g = &service_plan.gates;
            for target in targets.iter().filter(|t| &t.service == service) {
                println!(
                    "  {}/{}: backup, {}, restart, validate ({} check(s){}), gates: startup +{}% (slack {}ms), memory +{}% (slack {} B)",
                    target.service,
                    target.instance,
                    steps.join(", "),
                    service_plan.health.len().max(1),
                    if service_plan.checks.is_empty() {
                        String::new()
                    } else {
                        format!(", {} functional", service_plan.checks.len())
                    },
                    g.startup_max_increase_pct,
                    g.startup_slack_ms,
                    g.memory_max_increase_pct,
                    g.memory_slack_bytes
                );
            }
        }
    }
    if plan.on_failure == crate::plan::OnFailure::Rollback {
        println!(
            "on failure over budget: stop, then roll back latest wave first ({})",
            plan.waves
                .iter()
                .rev()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
}
