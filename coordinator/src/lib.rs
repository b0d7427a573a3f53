//! `flotilla`: the coordinator CLI. Each command is a function here that returns the process
//! exit code; `main.rs` only parses arguments.

pub mod cli;
mod discovery;
pub mod exit;
pub mod plan;
mod report;
mod rollout;

use std::io::Write;
use std::time::{Duration, Instant};

use flotilla_bus::BusOptions;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{PhaseStatus, Progress, RunResult};
use flotilla_telemetry::error_chain;

pub use cli::{Cli, CommandKind, OutputFormat};
pub use report::{RunReport, ServiceReport, ServiceStatus};

use crate::plan::Plan;
use crate::rollout::{ProgressSink, Rollout};

/// Runs the command named on the command line; returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    match &cli.command {
        CommandKind::Agents => agents(&cli).await,
        CommandKind::Migrate { plan, dry_run } => migrate(&cli, plan, *dry_run).await,
        CommandKind::Plan {
            action: cli::PlanAction::Check { plan },
        } => plan_check(plan),
    }
}

fn fail(code: u8, message: impl std::fmt::Display) -> u8 {
    eprintln!("error: {message}");
    code
}

async fn connect(cli: &Cli) -> Result<(async_nats::Client, Subjects), u8> {
    let subjects =
        Subjects::new(&cli.prefix).map_err(|e| fail(exit::USAGE, format!("--prefix: {e}")))?;
    let options = BusOptions {
        url: cli.nats_url.clone(),
        name: "flotilla".into(),
        connect_timeout: cli.connect_timeout,
        allow_old_server: cli.allow_old_server,
    };
    let client = flotilla_bus::connect(&options)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    Ok((client, subjects))
}

async fn agents(cli: &Cli) -> u8 {
    let (client, subjects) = match connect(cli).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let found = match discovery::discover(&client, &subjects, cli.discovery_window).await {
        Ok(found) => found,
        Err(e) => return fail(exit::BUS, error_chain(&e)),
    };
    match cli.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&found).expect("presence serializes")
        ),
        OutputFormat::Text => {
            println!(
                "{:16} {:10} {:8} {:10} {:8} HOST",
                "SERVICE", "INSTANCE", "VERSION", "STATE", "PID"
            );
            for a in &found {
                let state = serde_json::to_value(a.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let pid = a
                    .service_pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:16} {:10} {:8} {:10} {:8} {}",
                    a.service.as_str(),
                    a.instance.as_str(),
                    a.version,
                    state,
                    pid,
                    a.host
                );
            }
            eprintln!("{} agent(s)", found.len());
        }
    }
    exit::OK
}

fn plan_check(path: &std::path::Path) -> u8 {
    match Plan::load(path) {
        Ok(plan) => {
            let steps: usize = plan.services.iter().map(|s| s.steps.len()).sum();
            println!(
                "plan {:?} is valid: {} service(s), {} step(s)",
                plan.name,
                plan.services.len(),
                steps
            );
            exit::OK
        }
        Err(e) => fail(exit::USAGE, e),
    }
}

async fn migrate(cli: &Cli, plan_path: &std::path::Path, dry_run: bool) -> u8 {
    let plan = match Plan::load(plan_path) {
        Ok(plan) => plan,
        Err(e) => return fail(exit::USAGE, e),
    };
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
        println!("dry run of plan {:?}: nothing will change", plan.name);
        for target in &targets {
            let service = plan
                .services
                .iter()
                .find(|s| s.name == target.service)
                .expect("targets come from the plan");
            let steps: Vec<&str> = service.steps.iter().map(|s| s.name()).collect();
            println!(
                "  {}/{}: backup, {}, restart, validate ({} check(s))",
                target.service,
                target.instance,
                steps.join(", "),
                service.health.len().max(1)
            );
        }
        return exit::OK;
    }
    let sink = TerminalProgress {
        started: Instant::now(),
        quiet: cli.output == OutputFormat::Json,
    };
    let rollout = Rollout {
        client: &client,
        subjects: &subjects,
        plan: &plan,
        sink,
    };
    let report = match rollout.run(targets).await {
        Ok(report) => report,
        Err(e) => return fail(exit::BUS, error_chain(&e)),
    };
    let _ = client.flush().await;
    match cli.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => print!("{}", report.to_text()),
    }
    let _ = std::io::stdout().flush();
    report.exit_code()
}

/// Progress as plain lines on stderr, one per phase change.
struct TerminalProgress {
    started: Instant,
    quiet: bool,
}

impl ProgressSink for TerminalProgress {
    fn progress(&mut self, p: &Progress) {
        if self.quiet || p.status == PhaseStatus::Started {
            return;
        }
        let status = if p.status == PhaseStatus::Succeeded {
            "ok"
        } else {
            "FAILED"
        };
        let took = p
            .duration_ms
            .map(|ms| format!(" ({ms}ms)"))
            .unwrap_or_default();
        let detail = p
            .detail
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        eprintln!(
            "[{:>6.2}s] {}/{} {} {status}{took}{detail}",
            self.elapsed(),
            p.service,
            p.instance,
            p.phase.as_str()
        );
    }

    fn result(&mut self, r: &RunResult) {
        if self.quiet {
            return;
        }
        let reason = r
            .reason
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        eprintln!(
            "[{:>6.2}s] {}/{} => {}{reason}",
            self.elapsed(),
            r.service,
            r.instance,
            r.outcome.as_str()
        );
    }
}

impl TerminalProgress {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// How long the discovery window lasts by default.
pub const DEFAULT_DISCOVERY_WINDOW: Duration = Duration::from_secs(2);
