//! One function per command; each returns the process exit code and prints what it has to say.

use std::io::Write;
use std::path::Path;

use async_nats::jetstream;
use flotilla_bus::BusOptions;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{RunId, ServiceName};
use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Cli, CommandKind, OutputFormat, ReportFiles, ReportFormat};
use crate::exit;
use crate::plan::Plan;
use crate::progress::TerminalProgress;
use crate::report::RunReport;
use crate::rollout::{self, Engine, EngineParts};
use crate::store::{Revisions, RunRecord, Store, StoreError, Unreadable};

mod agents;
mod html;
mod migrate;
mod watch;

/// Runs the command named on the command line.
pub(crate) async fn run(cli: Cli, shutdown: CancellationToken) -> u8 {
    match &cli.command {
        CommandKind::Agents => agents::agents(&cli).await,
        CommandKind::Migrate {
            plan,
            dry_run,
            rehearse,
            files,
        } => migrate::migrate(&cli, plan, *dry_run, *rehearse, files, shutdown).await,
        CommandKind::Plan {
            action: cli::PlanAction::Check { plan },
        } => migrate::plan_check(plan),
        CommandKind::Runs => runs(&cli).await,
        CommandKind::Status { run } => status(&cli, run.as_deref()).await,
        CommandKind::Resume { run, files } => resume(&cli, run, files, shutdown).await,
        CommandKind::Rollback {
            run,
            service,
            files,
        } => rollback(&cli, run, service.as_deref(), files, shutdown).await,
        CommandKind::Cancel { run } => cancel(&cli, run).await,
        CommandKind::Verify { run } => verify(&cli, run.as_deref()).await,
        CommandKind::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: the generator panics on a closed pipe (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "flotilla", &mut script);
            let _ = std::io::stdout().write_all(&script);
            exit::OK
        }
        CommandKind::Keys {
            action: cli::KeysAction::Generate { out },
        } => keys_generate(out),
        CommandKind::Report { run, format } => report(&cli, run.as_deref(), *format).await,
        CommandKind::Watch { run, wait } => {
            watch::watch(&cli, run.as_deref(), *wait, shutdown).await
        }
    }
}

/// What every engine of this process needs: the bus, the store, progress on the terminal, the
/// signing key and Ctrl-C.
pub(crate) fn engine_parts<'a>(
    cli: &Cli,
    client: &'a async_nats::Client,
    subjects: &'a Subjects,
    store: Store,
    shutdown: CancellationToken,
) -> Result<EngineParts<'a, TerminalProgress>, u8> {
    Ok(EngineParts {
        client,
        subjects,
        store,
        sink: TerminalProgress::new(cli.output == OutputFormat::Json),
        signer: signer(cli)?,
        correlation: crate::rollout::CorrelationCheck {
            backend: cli.trace_backend.clone(),
            wait: cli.verify_wait,
            enforce: !cli.no_verify,
            telemetry: cli.telemetry.clone(),
        },
        shutdown,
    })
}

/// `flotilla keys generate`.
fn keys_generate(out: &Path) -> u8 {
    let key = match flotilla_bus::signing::SigningKey::generate() {
        Ok(key) => key,
        Err(e) => return fail(exit::USAGE, e),
    };
    if let Err(e) = key.save(out) {
        return fail(exit::USAGE, error_chain(&e));
    }
    println!("private key: {} (mode 0600; keep it secret)", out.display());
    println!(
        "public key:  {} ; add this line to every agent's [security] trusted_keys:",
        flotilla_bus::signing::public_key_path(out).display()
    );
    println!("  trusted_keys = [\"{}\"]", key.public_key_text());
    exit::OK
}

/// The signing key named on the command line, if any.
fn signer(cli: &Cli) -> Result<Option<std::sync::Arc<flotilla_bus::signing::SigningKey>>, u8> {
    match &cli.signing_key {
        None => Ok(None),
        Some(path) => flotilla_bus::signing::SigningKey::load(path)
            .map(|k| Some(std::sync::Arc::new(k)))
            .map_err(|e| fail(exit::USAGE, error_chain(&e))),
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
        auth: cli.auth.credentials(),
    };
    let client = flotilla_bus::connect(&options)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    // The coordinator owns the streams: agents may not create them (least privilege), and
    // wait for them before they answer discovery.
    let js = jetstream::new(client.clone());
    let streams = async {
        flotilla_bus::commands_stream(&js, &subjects).await?;
        flotilla_bus::events_stream(&js, &subjects).await
    };
    streams
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    if let Some(telemetry) = &cli.telemetry.0
        && let Err(e) = telemetry
            .attach_nats(client.clone(), subjects.prefix())
            .await
    {
        tracing::warn!(error = %error_chain(&e), "telemetry store unavailable; the run's spans stay local");
    }
    Ok((client, subjects))
}

async fn open_store(client: &async_nats::Client, subjects: &Subjects) -> Result<Store, u8> {
    Store::open(&jetstream::new(client.clone()), subjects)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))
}

/// Connects, opens the store and loads the run named `run` (or the latest).
async fn load_run(
    cli: &Cli,
    run: Option<&str>,
) -> Result<(async_nats::Client, Subjects, Store, RunRecord, Revisions), u8> {
    let (client, subjects) = connect(cli).await?;
    let store = open_store(&client, &subjects).await?;
    let run_id: RunId = match store.find(run).await {
        Ok(found) => {
            warn_unreadable(&found.unreadable);
            found.run.map_err(|why| fail(exit::USAGE, why))?
        }
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    match store.load(&run_id).await {
        Ok(Some((record, revisions))) => Ok((client, subjects, store, record, revisions)),
        Ok(None) => Err(fail(
            exit::USAGE,
            format!("no run {run_id} in the run store"),
        )),
        // The store answered; this coordinator cannot read what it holds.
        Err(e @ StoreError::Corrupt { .. }) => Err(fail(exit::USAGE, error_chain(&e))),
        Err(e) => Err(fail(exit::BUS, error_chain(&e))),
    }
}

/// Prints the report in the chosen format and writes the report files; returns its exit code.
fn emit(cli: &Cli, record: &RunRecord, files: &ReportFiles) -> u8 {
    let report = RunReport::from_record(record);
    match cli.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => print!("{}", report.to_text()),
    }
    let _ = std::io::stdout().flush();
    let mut code = report.exit_code();
    for (path, text) in [
        (&files.report_md, report.to_markdown()),
        (&files.junit, report.to_junit()),
    ] {
        if let Some(path) = path
            && let Err(e) = std::fs::write(path, text)
        {
            eprintln!("error: cannot write {}: {e}", path.display());
            code = code.max(exit::FAILED);
        }
    }
    code
}

/// Checks the report files can be written before anything changes.
fn check_report_files(files: &ReportFiles) -> Result<(), u8> {
    for path in [&files.report_md, &files.junit, &files.report_html]
        .into_iter()
        .flatten()
    {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(fail(
                exit::USAGE,
                format!(
                    "cannot write {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                ),
            ));
        }
    }
    Ok(())
}

async fn runs(cli: &Cli) -> u8 {
    let (client, subjects) = match connect(cli).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match open_store(&client, &subjects).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let listing = match store.list().await {
        Ok(listing) => listing,
        Err(e) => return fail(exit::BUS, error_chain(&e)),
    };
    warn_unreadable(&listing.unreadable);
    let reports: Vec<RunReport> = listing.runs.iter().map(RunReport::from_record).collect();
    match cli.output {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = reports
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "run_id": r.run_id,
                        "plan": r.plan,
                        "status": r.status,
                        "stage": r.stage,
                        "rehearsal": r.rehearsal,
                        "started_at": r.started_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                        "duration_ms": r.duration_ms,
                        "services": r.services.len(),
                        "coordinator": r.coordinator,
                    })
                })
                .chain(listing.unreadable.iter().map(|u| {
                    serde_json::json!({ "key": u.key, "unreadable": u.reason })
                }))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&rows).expect("rows serialize")
            );
        }
        OutputFormat::Text => {
            println!(
                "{:36}  {:20}  {:23}  {:>8}  {:>8}  PLAN",
                "RUN", "STARTED", "STATUS", "SERVICES", "TIME"
            );
            for r in &reports {
                let started = r
                    .started_at
                    .replace_nanosecond(0)
                    .unwrap_or(r.started_at)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                println!(
                    "{:36}  {:20}  {:23}  {:>8}  {:>8}  {}",
                    r.run_id.to_string(),
                    started,
                    serde_json::to_value(r.status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    r.services.len(),
                    format!("{:.1}s", r.duration_ms as f64 / 1000.0),
                    r.plan
                );
            }
            eprintln!("{} run(s)", reports.len());
        }
    }
    exit::OK
}

/// One warning line per run-store entry that a listing skipped.
fn warn_unreadable(unreadable: &[Unreadable]) {
    for entry in unreadable {
        eprintln!(
            "warning: run-store entry {} is unreadable and skipped: {}",
            entry.key, entry.reason
        );
    }
}

async fn status(cli: &Cli, run: Option<&str>) -> u8 {
    let (client, subjects, store, mut record, mut revisions) = match load_run(cli, run).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    file_late_results(&client, &subjects, &store, &mut record, &mut revisions).await;
    emit(cli, &record, &ReportFiles::default())
}

/// Brings an ended run's record up to what its agents answered after its coordinator gave up
/// on them (see [`crate::rollout::file_late_results`]); a failure only warns.
async fn file_late_results(
    client: &async_nats::Client,
    subjects: &Subjects,
    store: &Store,
    record: &mut RunRecord,
    revisions: &mut Revisions,
) {
    match crate::rollout::file_late_results(client, subjects, store, record, revisions).await {
        Ok(0) => {}
        Ok(n) => eprintln!("note: filed {n} result(s) that came after the coordinator gave up"),
        Err(e) => eprintln!("warning: late results not filed: {}", error_chain(&e)),
    }
}

async fn verify(cli: &Cli, run: Option<&str>) -> u8 {
    let (client, subjects, _store, record, _) = match load_run(cli, run).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let Some(trace_id) = record
        .trace_parent
        .as_deref()
        .and_then(crate::verify::trace_id_of)
    else {
        return fail(
            exit::FAILED,
            format!(
                "run {} recorded no trace (it predates tracing)",
                record.run_id
            ),
        );
    };
    let expected: Vec<(String, String)> = record
        .targets
        .iter()
        .map(|t| (t.service.to_string(), t.instance.to_string()))
        .collect();
    let report = match crate::verify::verify_run(
        &client,
        subjects.prefix(),
        &cli.trace_backend,
        trace_id,
        &record.run_id.to_string(),
        &expected,
        cli.verify_wait,
    )
    .await
    {
        Ok(report) => report,
        Err(e) => return fail(exit::BUS, format!("cannot read trace {trace_id}: {e}")),
    };
    match cli.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        OutputFormat::Text => print!("{}", crate::verify::to_text(&report)),
    }
    if report.ok { exit::OK } else { exit::FAILED }
}

async fn report(cli: &Cli, run: Option<&str>, format: ReportFormat) -> u8 {
    let (client, subjects, store, mut record, mut revisions) = match load_run(cli, run).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    file_late_results(&client, &subjects, &store, &mut record, &mut revisions).await;
    let report = RunReport::from_record(&record);
    match format {
        ReportFormat::Html => print!("{}", html::render(&client, &subjects, &record).await),
        ReportFormat::Text => print!("{}", report.to_text()),
        ReportFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("reports serialize")
        ),
        ReportFormat::Md => print!("{}", report.to_markdown()),
        ReportFormat::Junit => print!("{}", report.to_junit()),
    }
    exit::OK
}

async fn cancel(cli: &Cli, run: &str) -> u8 {
    let (_client, _subjects, store, record, _) = match load_run(cli, Some(run)).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if !record.resumable() {
        return fail(
            exit::USAGE,
            format!(
                "run {} has ended ({:?}); there is nothing to cancel",
                record.run_id, record.status
            ),
        );
    }
    if let Err(e) = store.request_cancel(&record.run_id).await {
        return fail(exit::BUS, error_chain(&e));
    }
    eprintln!(
        "cancel requested for run {}: its coordinator stops dispatching before the next command; `flotilla resume {}` finishes it",
        record.run_id, record.run_id
    );
    exit::OK
}

async fn resume(cli: &Cli, run: &str, files: &ReportFiles, shutdown: CancellationToken) -> u8 {
    if let Err(code) = check_report_files(files) {
        return code;
    }
    let (client, subjects, store, record, revisions) = match load_run(cli, Some(run)).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if !record.resumable() {
        return fail(
            exit::USAGE,
            format!(
                "run {} has ended ({:?}); `flotilla status {}` shows it",
                record.run_id, record.status, record.run_id
            ),
        );
    }
    let plan = match Plan::parse_named(&record.plan_text, &record.plan_path) {
        Ok(plan) => plan,
        Err(e) => return fail(exit::USAGE, e),
    };
    eprintln!(
        "resuming run {} ({}) at stage {:?}",
        record.run_id, record.plan_name, record.stage
    );
    let parts = match engine_parts(cli, &client, &subjects, store, shutdown) {
        Ok(parts) => parts,
        Err(code) => return code,
    };
    let result = match Engine::attach(parts, plan, record, revisions).await {
        Ok(engine) => engine.drive().await,
        Err(e) => Err(e),
    };
    finish(cli, &client, result, files).await
}

async fn rollback(
    cli: &Cli,
    run: &str,
    service: Option<&str>,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> u8 {
    if let Err(code) = check_report_files(files) {
        return code;
    }
    let only = match service.map(ServiceName::parse).transpose() {
        Ok(only) => only,
        Err(e) => return fail(exit::USAGE, format!("--service: {e}")),
    };
    let (client, subjects, store, record, revisions) = match load_run(cli, Some(run)).await {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    if let Some(only) = &only
        && !record.targets.iter().any(|t| &t.service == only)
    {
        return fail(
            exit::USAGE,
            format!("service {only} is not part of run {}", record.run_id),
        );
    }
    let selected = |t: &&crate::store::TargetRecord| only.as_ref().is_none_or(|s| &t.service == s);
    if record.status == crate::store::RunStatus::Running
        && record.updated_at > time::OffsetDateTime::now_utc() - time::Duration::seconds(5)
    {
        eprintln!(
            "warning: run {} is running (updated moments ago); if its coordinator is alive, this rollback will conflict with it",
            record.run_id
        );
    }
    let finalized: Vec<String> = record
        .targets
        .iter()
        .filter(selected)
        .filter(|t| {
            t.finalize
                .as_ref()
                .and_then(|f| f.result.as_ref())
                .is_some_and(|r| r.outcome == flotilla_schemas::Outcome::Finalized)
        })
        .map(|t| format!("{}/{}", t.service, t.instance))
        .collect();
    if !finalized.is_empty() {
        return fail(
            exit::USAGE,
            format!(
                "run {} was finalized for {}: their backups are gone, nothing to roll back to",
                record.run_id,
                finalized.join(", ")
            ),
        );
    }
    let plan = match Plan::parse_named(&record.plan_text, &record.plan_path) {
        Ok(plan) => plan,
        Err(e) => return fail(exit::USAGE, e),
    };
    let parts = match engine_parts(cli, &client, &subjects, store, shutdown) {
        Ok(parts) => parts,
        Err(code) => return code,
    };
    let result = match Engine::attach(parts, plan, record, revisions).await {
        Ok(engine) => engine.roll_back(only).await,
        Err(e) => Err(e),
    };
    finish(cli, &client, result, files).await
}

/// Reports how an engine run ended.
async fn finish(
    cli: &Cli,
    client: &async_nats::Client,
    result: Result<RunRecord, rollout::RolloutError>,
    files: &ReportFiles,
) -> u8 {
    let _ = client.flush().await;
    match result {
        Ok(record) => {
            let code = emit(cli, &record, files);
            code.max(html::write_file(cli, client, &record, files).await)
        }
        Err(e) => fail(exit::BUS, error_chain(&e)),
    }
}
