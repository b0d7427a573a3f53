//! `flotilla migrate` and `flotilla plan check`.

use std::path::Path;

use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

use super::{check_report_files, connect, engine_parts, fail, finish, open_store};
use crate::cli::{Cli, OutputFormat, ReportFiles};
use crate::discovery;
use crate::dry_run::{self, DryRunReport, PreviewStatus, TargetPreview};
use crate::exit::{self, CommandError, Outcome};
use crate::plan::Plan;
use crate::plan_files::LocalFile;
use crate::rollout::{self, Engine, Target};
use crate::selector::Selector;

/// How `flotilla migrate` was asked to run.
#[derive(Debug, Clone, Default)]
pub(super) struct Options {
    pub dry_run: bool,
    pub rehearse: bool,
    pub no_finalize: bool,
    /// `-l`: only the agents this selector matches.
    pub limit: Option<Selector>,
}

/// A plan, its text, and the files it ships (their digests filled in).
type Loaded = (Plan, String, Vec<LocalFile>);

/// Reads a plan, its text and the files it ships; the error says which line and key, or which
/// step's file, is wrong.
fn load_plan(path: &Path) -> Result<Loaded, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read plan {}: {e}", path.display()))?;
    let mut plan =
        Plan::parse_named(&text, &path.display().to_string()).map_err(|e| e.to_string())?;
    let files = crate::plan_files::resolve(&mut plan, path)
        .map_err(|e| format!("invalid plan {}: {e}", path.display()))?;
    Ok((plan, text, files))
}

/// Reads a plan, its text and its files, or says why not (exit 2).
fn read_plan(path: &Path) -> Result<Loaded, CommandError> {
    load_plan(path).map_err(|e| fail(exit::USAGE, e))
}

/// Checks a plan offline and shows its waves; with `--output json`, one JSON document either
/// way (`valid`, and the plan's shape or the `error`).
pub(super) fn plan_check(cli: &Cli, path: &Path) -> Outcome {
    let json = cli.output == OutputFormat::Json;
    let (plan, files) = match load_plan(path) {
        Ok((plan, _, files)) => (plan, files),
        Err(error) => {
            if json {
                let report = serde_json::json!({
                    "plan_file": path.display().to_string(),
                    "valid": false,
                    "error": error,
                });
                println!("{report:#}");
            }
            return Err(fail(exit::USAGE, error));
        }
    };
    let steps: usize = plan.services.iter().map(|s| s.steps.len()).sum();
    if json {
        let waves: Vec<serde_json::Value> = plan
            .waves
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.name,
                    "max_parallel": w.max_parallel.map(|m| match m {
                        crate::plan::Amount::Count(n) => serde_json::json!(n),
                        share => serde_json::json!(share.to_string()),
                    }),
                    "services": w.services,
                    "selector": w.selector.as_ref().map(ToString::to_string),
                })
            })
            .collect();
        let report = serde_json::json!({
            "plan_file": path.display().to_string(),
            "valid": true,
            "plan": plan.name,
            "services": plan.services.len(),
            "steps": steps,
            "waves": waves,
            "failure_budget": plan.failure_budget.to_string(),
            "on_failure": plan.on_failure.as_str(),
            "files": files.iter().map(|f| &f.file).collect::<Vec<_>>(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        );
        return Ok(exit::OK);
    }
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
            match &wave.selector {
                Some(selector) => format!("the agents that match \"{selector}\""),
                None => wave
                    .services
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        );
        for gate in plan.analysis.iter().flat_map(|a| &a.gates) {
            if gate.wave == wave.name {
                println!(
                    "    analysis {:?} after the wave ({}, inconclusive: {}): {}",
                    gate.name,
                    gate.threshold,
                    match gate.inconclusive {
                        flotilla_schemas::Inconclusive::Fail => "fail",
                        flotilla_schemas::Inconclusive::Warn => "warn",
                    },
                    crate::sanitize::one_line(&gate.query)
                );
            }
        }
    }
    if let Some(analysis) = &plan.analysis {
        println!("  analysis queries Prometheus at {}", analysis.prometheus);
    }
    println!(
        "  failure budget {}, on_failure = {}",
        plan.failure_budget,
        plan.on_failure.as_str()
    );
    for f in &files {
        println!(
            "  ships {} ({} bytes, {})",
            crate::sanitize::one_line(&f.file.path),
            f.file.size,
            f.file.digest
        );
    }
    Ok(exit::OK)
}

/// Runs a plan over the fleet (or shows what it would do).
pub(super) async fn migrate(
    cli: &Cli,
    plan_path: &Path,
    options: &Options,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> Outcome {
    let (dry_run, rehearse) = (options.dry_run, options.rehearse);
    let (mut plan, text, plan_files) = read_plan(plan_path)?;
    if options.no_finalize {
        plan.finalize = crate::plan::Finalize::Manual;
    }
    check_report_files(files)?;
    let (client, subjects) = connect(cli).await?;
    let agents = match discovery::discover(
        &client,
        &subjects,
        cli.settings.discovery_window,
        cli.settings.agent_inactive_after,
    )
    .await
    {
        Ok(discovered) => discovered.found,
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    let targets = preflight(cli, &plan, &agents, options.limit.as_ref())?;
    plan.waves = place_targets(&plan, &targets, &agents, options.limit.as_ref())?;
    // Before any command (a preview too) names them: once, whatever the number of agents.
    ship_plan_files(&client, &subjects, &plan_files).await?;
    if dry_run {
        return dry_run_previews(cli, &client, &subjects, &plan, &targets).await;
    }
    let store = open_store(&client, &subjects).await?;
    let parts = engine_parts(cli, &client, &subjects, store, shutdown)?;
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
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    if cli.output == crate::cli::OutputFormat::Text {
        announce(engine.run_id(), &plan, targets.len(), options);
    }
    let result = engine.drive().await;
    finish(cli, &client, result, files).await
}

/// The targets of `plan` among the live `agents`, under the operator's key pins; every problem
/// found is named (exit 3).
fn preflight(
    cli: &Cli,
    plan: &Plan,
    agents: &[flotilla_schemas::Presence],
    limit: Option<&Selector>,
) -> Result<Vec<Target>, CommandError> {
    let pins = crate::trust::AgentPins::parse(&cli.settings.trusted_agent_keys)
        .map_err(|e| fail(exit::USAGE, e))?;
    rollout::preflight(plan, agents, &pins, limit).map_err(preflight_failed)
}

/// The waves with `targets` placed in them by the plan's selectors (exit 3 when a selector
/// matches nothing, or a target would run before one it depends on).
fn place_targets(
    plan: &Plan,
    targets: &[Target],
    agents: &[flotilla_schemas::Presence],
    limit: Option<&Selector>,
) -> Result<Vec<crate::plan::Wave>, CommandError> {
    let pairs: Vec<_> = targets
        .iter()
        .map(|t| (t.service.clone(), t.instance.clone()))
        .collect();
    crate::plan::place(plan, &pairs, agents, limit).map_err(preflight_failed)
}

fn preflight_failed(problems: Vec<String>) -> CommandError {
    fail(
        exit::PREFLIGHT,
        format!(
            "pre-flight failed, nothing was changed: {}",
            problems.join("; ")
        ),
    )
}

/// Uploads the files the plan ships (those already in the store are not sent again).
async fn ship_plan_files(
    client: &async_nats::Client,
    subjects: &flotilla_schemas::subjects::Subjects,
    plan_files: &[LocalFile],
) -> Result<(), CommandError> {
    let js = async_nats::jetstream::new(client.clone());
    let shipped = crate::plan_files::ship(&js, subjects, plan_files)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    if !plan_files.is_empty() {
        tracing::info!(
            uploaded = shipped.uploaded,
            already_there = shipped.present,
            "plan files shipped"
        );
    }
    Ok(())
}

/// The run's first line on stderr: its ID, plan and shape.
fn announce(run: flotilla_schemas::RunId, plan: &Plan, agents: usize, options: &Options) {
    eprintln!(
        "run {}: plan \"{}\", {} agent(s){} in {} wave(s){}",
        run,
        crate::sanitize::one_line(&plan.name),
        agents,
        options
            .limit
            .as_ref()
            .map_or_else(String::new, |l| format!(" that \"{l}\" selects")),
        plan.waves.len(),
        match (options.rehearse, plan.finalize) {
            (true, _) => ", rehearsal",
            (false, crate::plan::Finalize::Manual) => ", manual finalize",
            (false, crate::plan::Finalize::Auto) => "",
        }
    );
}

/// Asks every target agent for its preview and prints the report; the exit code is the one the
/// real run would end with, as far as that can be known without changing anything.
async fn dry_run_previews(
    cli: &Cli,
    client: &async_nats::Client,
    subjects: &flotilla_schemas::subjects::Subjects,
    plan: &Plan,
    targets: &[Target],
) -> Outcome {
    let signer = super::signer(cli)?;
    let report = match dry_run::run(client, subjects, signer.as_deref(), plan, targets).await {
        Ok(report) => report,
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    match cli.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => print!("{}", dry_run_text(plan, targets.len(), &report)),
    }
    Ok(report.exit_code)
}

/// One target of the dry run: its steps and gates, what each step would do, and its verdict.
fn write_target(out: &mut String, plan: &Plan, target: &TargetPreview) {
    use std::fmt::Write;
    let Some(service_plan) = plan.service(&target.service) else {
        return;
    };
    let steps: Vec<&str> = service_plan.steps.iter().map(|s| s.name()).collect();
    let g = &service_plan.gates;
    let _ = writeln!(
        out,
        "  {}/{}: backup, {}, restart, validate ({} check(s){}), gates: startup +{}% (slack {}ms), memory +{}% (slack {} B)",
        target.service,
        target.instance,
        steps.join(", "),
        target.health_checks,
        if target.functional_checks == 0 {
            String::new()
        } else {
            format!(", {} functional", target.functional_checks)
        },
        g.startup_max_increase_pct,
        g.startup_slack_ms,
        g.memory_max_increase_pct,
        g.memory_slack_bytes
    );
    for step in &target.steps {
        let _ = writeln!(
            out,
            "    step {} {}: {}",
            step.step, step.action, step.summary
        );
        for line in step.diff.iter().flat_map(|d| d.lines()) {
            let _ = writeln!(out, "      {line}");
        }
    }
    match &target.reason {
        Some(reason) => {
            let _ = writeln!(out, "    {}: {reason}", target.status.as_str());
        }
        None => {
            let _ = writeln!(
                out,
                "    {}{}",
                target.status.as_str(),
                target
                    .backup_bytes
                    .map(|b| format!(" (backup of {b} bytes)"))
                    .unwrap_or_default()
            );
        }
    }
}

/// What picked a wave's agents, for people: its selector and the operator's, those there are.
fn selection(selector: Option<&str>, limit: Option<&str>) -> Option<String> {
    match (selector, limit) {
        (Some(s), Some(l)) => Some(format!("selector \"{s}\" (and -l \"{l}\")")),
        (Some(s), None) => Some(format!("selector \"{s}\"")),
        (None, Some(l)) => Some(format!("-l \"{l}\"")),
        (None, None) => None,
    }
}

/// The dry run as text: the plan's shape, then per target what each step would do.
fn dry_run_text(plan: &Plan, agents: usize, report: &DryRunReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "dry run of plan {:?}: nothing will change", plan.name);
    let _ = writeln!(
        out,
        "failure budget {} of {} agent(s), on_failure = {}, command_timeout {:?}",
        plan.failure_budget,
        agents,
        plan.on_failure.as_str(),
        plan.command_timeout
    );
    for (i, wave) in report.waves.iter().enumerate() {
        let _ = writeln!(
            out,
            "wave {} {:?} ({} at a time):",
            i + 1,
            wave.name,
            wave.max_parallel
                .map_or_else(|| "all".to_owned(), |n| n.to_string())
        );
        if let Some(selected) = selection(wave.selector.as_deref(), wave.limit.as_deref()) {
            let agents: Vec<String> = wave
                .targets
                .iter()
                .map(|t| format!("{}/{}", t.service, t.instance))
                .collect();
            let _ = writeln!(out, "  {selected} matched: {}", agents.join(", "));
        }
        for target in &wave.targets {
            write_target(&mut out, plan, target);
        }
        for q in &wave.analysis {
            let _ = writeln!(
                out,
                "  analysis {:?} after the wave ({}): {}",
                q.name, q.threshold, q.query
            );
        }
    }
    if plan.on_failure == crate::plan::OnFailure::Rollback {
        let _ = writeln!(
            out,
            "on failure over budget: stop, then roll back latest wave first ({})",
            plan.waves
                .iter()
                .rev()
                .map(|w| w.name.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        );
    }
    let targets: Vec<&TargetPreview> = report.waves.iter().flat_map(|w| &w.targets).collect();
    let ready = targets
        .iter()
        .filter(|t| t.status == PreviewStatus::WouldMigrate)
        .count();
    let _ = writeln!(
        out,
        "dry run {}: {ready} of {} agent(s) would migrate; nothing was changed",
        report.run_id,
        targets.len()
    );
    out
}
