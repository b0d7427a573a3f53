//! One function per command; each prints what it has to say and returns its exit code, or the
//! [`CommandError`] that stopped it.

use std::io::Write;
use std::path::Path;

use async_nats::jetstream;
use flotilla_bus::BusOptions;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{RunId, ServiceName};
use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Cli, CommandKind, OutputFormat, ReportFiles, ReportFormat};
use crate::exit::{self, CommandError, Outcome};
use crate::plan::Plan;
use crate::progress::TerminalProgress;
use crate::report::RunReport;
use crate::rollout::{self, Engine, EngineParts};
use crate::sanitize::{multi_line, one_line};
use crate::store::{Revisions, RunRecord, RunStatus, Store, StoreError, Unreadable};

mod agents;
mod html;
mod man;
mod migrate;
mod setup;
mod watch;

/// Runs the command named on the command line.
pub(crate) async fn run(cli: Cli, shutdown: CancellationToken) -> Outcome {
    match &cli.command {
        CommandKind::Agents {
            action: Some(cli::AgentsAction::Forget { agents, inactive }),
            ..
        } => agents::forget(&cli, agents, *inactive).await,
        CommandKind::Agents {
            action: None,
            all,
            filter,
            selector,
        } => agents::agents(&cli, filter, selector, *all).await,
        CommandKind::Setup { .. } => setup::setup(&cli).await,
        CommandKind::Migrate {
            plan,
            dry_run,
            rehearse,
            no_finalize,
            selector,
            files,
        } => {
            let options = migrate::Options {
                dry_run: *dry_run,
                rehearse: *rehearse,
                no_finalize: *no_finalize,
                limit: selector.iter().cloned().reduce(|a, b| a.and(&b)),
            };
            migrate::migrate(&cli, plan, &options, files, shutdown).await
        }
        CommandKind::Plan {
            action: cli::PlanAction::Check { plan },
        } => migrate::plan_check(&cli, plan),
        CommandKind::Runs { limit, status } => runs(&cli, *limit, status).await,
        CommandKind::Status { run } => status(&cli, run.as_deref()).await,
        CommandKind::Resume { run, files } => resume(&cli, run, files, shutdown).await,
        CommandKind::Rollback {
            run,
            service,
            files,
        } => rollback(&cli, run, service.as_deref(), files, shutdown).await,
        CommandKind::Finalize { run, files } => finalize(&cli, run, files, shutdown).await,
        CommandKind::Promote { run, files } => promote(&cli, run, files, shutdown).await,
        CommandKind::Cancel { run } => cancel(&cli, run).await,
        CommandKind::Verify { run } => verify(&cli, run.as_deref()).await,
        CommandKind::Completions { shell } => {
            use clap::CommandFactory;
            // Into a buffer first: the generator panics on a closed pipe (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "flotilla", &mut script);
            let _ = std::io::stdout().write_all(&script);
            Ok(exit::OK)
        }
        CommandKind::Keys {
            action: cli::KeysAction::Generate { out },
        } => keys_generate(&cli, out),
        CommandKind::Report { run, format } => {
            // `-o json` asks for the JSON report; an explicit `--format` wins.
            let format = format.unwrap_or(match cli.output {
                OutputFormat::Json => ReportFormat::Json,
                OutputFormat::Text => ReportFormat::Md,
            });
            report(&cli, run.as_deref(), format).await
        }
        CommandKind::Watch { run, wait, filter } => {
            watch::watch(&cli, run.as_deref(), *wait, filter, shutdown).await
        }
        CommandKind::Man { out } => man::write_pages(out),
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
) -> Result<EngineParts<'a, TerminalProgress>, CommandError> {
    Ok(EngineParts {
        client,
        subjects,
        store,
        sink: TerminalProgress::new(cli.output == OutputFormat::Json),
        signer: signer(cli)?,
        correlation: crate::rollout::CorrelationCheck {
            backend: cli.settings.trace_backend.clone(),
            wait: cli.settings.verify_wait,
            enforce: !cli.settings.no_verify,
            telemetry: cli.telemetry.clone(),
        },
        shutdown,
    })
}

/// `flotilla keys generate`.
fn keys_generate(cli: &Cli, out: &Path) -> Outcome {
    let key = match flotilla_bus::signing::SigningKey::generate() {
        Ok(key) => key,
        Err(e) => return Err(fail(exit::USAGE, e)),
    };
    if let Err(e) = key.save(out) {
        return Err(fail(exit::USAGE, error_chain(&e)));
    }
    let public_key_file = flotilla_bus::signing::public_key_path(out);
    match cli.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "private_key_file": out,
            "public_key_file": public_key_file,
            "public_key": key.public_key_text(),
        })),
        OutputFormat::Text => {
            let shown = |path: &Path| one_line(&path.display().to_string()).into_owned();
            println!("private key: {} (mode 0600; keep it secret)", shown(out));
            println!(
                "public key:  {} ; add this line to every agent's [security] trusted_keys:",
                shown(&public_key_file)
            );
            println!("  trusted_keys = [\"{}\"]", key.public_key_text());
        }
    }
    Ok(exit::OK)
}

/// The signing key named on the command line, if any.
fn signer(
    cli: &Cli,
) -> Result<Option<std::sync::Arc<flotilla_bus::signing::SigningKey>>, CommandError> {
    match &cli.settings.signing_key {
        None => Ok(None),
        Some(path) => flotilla_bus::signing::SigningKey::load(path)
            .map(|k| Some(std::sync::Arc::new(k)))
            .map_err(|e| fail(exit::USAGE, error_chain(&e))),
    }
}

/// The error that ends a command with `code`; [`crate::run`] says it on stderr.
fn fail(code: u8, message: impl std::fmt::Display) -> CommandError {
    CommandError::new(code, message)
}

/// Prints `value` as one JSON document on stdout.
fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("output serializes")
    );
}

/// Connects, creating whatever of the streams and the bucket is missing (agents may not create
/// them, and answer discovery before they exist), then attaches telemetry.
async fn connect(cli: &Cli) -> Result<(async_nats::Client, Subjects), CommandError> {
    let (client, subjects) = connect_bus(cli).await?;
    provision(cli, &client, &subjects).await?;
    attach_telemetry(cli, &client, &subjects).await;
    Ok((client, subjects))
}

/// Creates what is missing of the streams and buckets, with the configured replication; warns
/// of those whose settings differ.
async fn provision(
    cli: &Cli,
    client: &async_nats::Client,
    subjects: &Subjects,
) -> Result<(), CommandError> {
    let replication = setup::replication(cli, client)?;
    let js = jetstream::new(client.clone());
    let resources = setup::provision_all(&js, subjects, &replication, false)
        .await
        .map_err(|e| setup::placement_failure(&replication, e, client))?;
    setup::warn_differing(&resources);
    Ok(())
}

/// [`connect`] for a command that only reads (`runs`, `status`, `report`, `verify`, `watch`,
/// `agents`): a stream it cannot provision now (no leader during an election, a node down) is
/// a warning, not a failure, for the run records stay readable from any replica.
async fn connect_reader(cli: &Cli) -> Result<(async_nats::Client, Subjects), CommandError> {
    let (client, subjects) = connect_bus(cli).await?;
    match tokio::time::timeout(READER_PROVISION_WAIT, provision(cli, &client, &subjects)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!(
            "warning: the streams cannot be checked now ({}); reading what the run store holds",
            crate::sanitize::one_line(&e.to_string())
        ),
        Err(_) => eprintln!(
            "warning: the streams did not answer within {READER_PROVISION_WAIT:?} (a leader election?); reading what the run store holds"
        ),
    }
    attach_telemetry(cli, &client, &subjects).await;
    Ok((client, subjects))
}

/// How long a reading command waits for the streams' check before it reads the store anyway.
const READER_PROVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn attach_telemetry(cli: &Cli, client: &async_nats::Client, subjects: &Subjects) {
    if let Some(telemetry) = &cli.telemetry.0 {
        telemetry
            .attach_nats(client.clone(), subjects.prefix())
            .await;
    }
}

/// Connects, and nothing more.
async fn connect_bus(cli: &Cli) -> Result<(async_nats::Client, Subjects), CommandError> {
    let subjects = Subjects::new(&cli.settings.nats.prefix)
        .map_err(|e| fail(exit::USAGE, format!("--prefix: {e}")))?;
    let options = BusOptions {
        servers: cli.settings.nats.url.clone(),
        name: "flotilla".into(),
        connect_timeout: cli.settings.nats.connect_timeout,
        allow_old_server: cli.settings.nats.allow_old_server,
        auth: cli::credentials(&cli.settings.nats.auth),
        // The coordinator runs by the hub, whose own JetStream holds the streams.
        domain: None,
    };
    let client = flotilla_bus::connect(&options)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    Ok((client, subjects))
}

async fn open_store(
    client: &async_nats::Client,
    subjects: &Subjects,
) -> Result<Store, CommandError> {
    Store::open(&jetstream::new(client.clone()), subjects)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))
}

/// A connection, the run store and one run loaded from it.
type Loaded = (async_nats::Client, Subjects, Store, RunRecord, Revisions);

/// Connects, opens the store and loads the run named `run` (or the latest); `drive` when an
/// engine will take the run over (the streams must be there), else only to read it.
async fn load_run(cli: &Cli, run: Option<&str>, drive: bool) -> Result<Loaded, CommandError> {
    let (client, subjects) = if drive {
        connect(cli).await?
    } else {
        connect_reader(cli).await?
    };
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
        OutputFormat::Json => print_json(&report),
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
fn check_report_files(files: &ReportFiles) -> Result<(), CommandError> {
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

/// `flotilla runs`: newest first, at most `limit`, only those with a status in `statuses` (all
/// when empty).
async fn runs(cli: &Cli, limit: Option<usize>, statuses: &[RunStatus]) -> Outcome {
    let (client, subjects) = connect_reader(cli).await?;
    let store = open_store(&client, &subjects).await?;
    let listing = match store.list().await {
        Ok(listing) => listing,
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    warn_unreadable(&listing.unreadable);
    // Headers: a report of one has no services; the header counts them.
    let (reports, counts): (Vec<RunReport>, Vec<usize>) = listing
        .runs
        .iter()
        .rev()
        .filter(|r| statuses.is_empty() || statuses.contains(&r.status))
        .take(limit.unwrap_or(usize::MAX))
        .map(|r| (RunReport::from_record(r), r.target_total()))
        .unzip();
    match cli.output {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = reports
                .iter()
                .zip(&counts)
                .map(|(r, services)| {
                    let started_at = r
                        .started_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    serde_json::json!({
                        "run_id": r.run_id,
                        "plan": r.plan,
                        "status": r.status,
                        "stage": r.stage,
                        "rehearsal": r.rehearsal,
                        "started_at": started_at,
                        "duration_ms": r.duration_ms,
                        "services": services,
                        "coordinator": r.coordinator,
                    })
                })
                .chain(
                    listing
                        .unreadable
                        .iter()
                        .map(|u| serde_json::json!({ "key": u.key, "unreadable": u.reason })),
                )
                .collect();
            print_json(&rows);
        }
        OutputFormat::Text => {
            println!(
                "{:36}  {:20}  {:23}  {:>8}  {:>8}  PLAN",
                "RUN", "STARTED", "STATUS", "SERVICES", "TIME"
            );
            for (r, services) in reports.iter().zip(&counts) {
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
                    status_name(r.status),
                    services,
                    format!("{:.1}s", r.duration_ms as f64 / 1000.0),
                    one_line(&r.plan)
                );
            }
            eprintln!("{} run(s)", reports.len());
            for r in &reports {
                if let Some(next) = r.next_step() {
                    eprintln!("{}: {next}", status_name(r.status).replace('_', " "));
                }
            }
        }
    }
    Ok(exit::OK)
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

async fn status(cli: &Cli, run: Option<&str>) -> Outcome {
    let (client, subjects, store, mut record, mut revisions) = load_run(cli, run, false).await?;
    file_late_results(&client, &subjects, &store, &mut record, &mut revisions).await;
    Ok(emit(cli, &record, &ReportFiles::default()))
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

async fn verify(cli: &Cli, run: Option<&str>) -> Outcome {
    let (client, subjects, _store, record, _) = load_run(cli, run, false).await?;
    let Some(trace_id) = record
        .trace_parent
        .as_deref()
        .and_then(crate::verify::trace_id_of)
    else {
        return Err(fail(
            exit::FAILED,
            format!(
                "run {} recorded no trace (it predates tracing)",
                record.run_id
            ),
        ));
    };
    let expected: Vec<(String, String)> = record
        .targets
        .iter()
        .map(|t| (t.service.to_string(), t.instance.to_string()))
        .collect();
    let report = match crate::verify::verify_run(
        &client,
        subjects.prefix(),
        &cli.settings.trace_backend,
        trace_id,
        &record.run_id.to_string(),
        &expected,
        cli.settings.verify_wait,
    )
    .await
    {
        Ok(report) => report,
        Err(e) => {
            return Err(fail(
                exit::BUS,
                format!("cannot read trace {trace_id}: {e}"),
            ));
        }
    };
    match cli.output {
        OutputFormat::Json => print_json(&report),
        // Service names, span and log problems come from the tracing backend: data.
        OutputFormat::Text => print!("{}", multi_line(&crate::verify::to_text(&report))),
    }
    Ok(if report.ok { exit::OK } else { exit::FAILED })
}

async fn report(cli: &Cli, run: Option<&str>, format: ReportFormat) -> Outcome {
    let (client, subjects, store, mut record, mut revisions) = load_run(cli, run, false).await?;
    file_late_results(&client, &subjects, &store, &mut record, &mut revisions).await;
    let report = RunReport::from_record(&record);
    match format {
        ReportFormat::Html => print!("{}", html::render(cli, &client, &subjects, &record).await),
        ReportFormat::Text => print!("{}", report.to_text()),
        ReportFormat::Json => print_json(&report),
        ReportFormat::Md => print!("{}", report.to_markdown()),
        ReportFormat::Junit => print!("{}", report.to_junit()),
    }
    Ok(exit::OK)
}

async fn cancel(cli: &Cli, run: &str) -> Outcome {
    let (_client, _subjects, store, record, _) = load_run(cli, Some(run), false).await?;
    able_to_go_on(&record, "there is nothing to cancel")?;
    if let Err(e) = store.request_cancel(&record.run_id).await {
        return Err(fail(exit::BUS, error_chain(&e)));
    }
    match cli.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "run_id": record.run_id,
            "cancel_requested": true,
            "status": record.status,
            "stage": record.stage.as_str(),
        })),
        OutputFormat::Text => eprintln!(
            "cancel requested for run {}: its coordinator stops dispatching before the next command; `flotilla resume {}` finishes it",
            record.run_id, record.run_id
        ),
    }
    Ok(exit::OK)
}

async fn resume(cli: &Cli, run: &str, files: &ReportFiles, shutdown: CancellationToken) -> Outcome {
    check_report_files(files)?;
    let (client, subjects, store, record, revisions) = load_run(cli, Some(run), true).await?;
    let shows_it = format!("`flotilla status {}` shows it", record.run_id);
    able_to_go_on(&record, &shows_it)?;
    if cli.output == OutputFormat::Text {
        eprintln!(
            "resuming run {} ({}) at stage {:?}",
            record.run_id,
            one_line(&record.plan_name),
            record.stage
        );
    }
    let loaded = (client, subjects, store, record, revisions);
    take_over(cli, loaded, Takeover::Resume, files, shutdown).await
}

/// `resume` and `cancel` act only on a run that can go on: not one that waits for its operator's
/// decision, nor one that has ended (`if_ended` says what to do instead).
fn able_to_go_on(record: &RunRecord, if_ended: &str) -> Result<(), CommandError> {
    let run = record.run_id;
    if record.status == RunStatus::AwaitingFinalize {
        return Err(fail(
            exit::USAGE,
            format!(
                "run {run} is migrated and proven, and awaits a decision, not a coordinator: `flotilla finalize {run}` drops the backups, `flotilla rollback {run}` restores the fleet"
            ),
        ));
    }
    if record.status == RunStatus::Paused {
        return Err(fail(
            exit::USAGE,
            format!(
                "run {run} is paused after a wave, and awaits a decision, not a coordinator: `flotilla promote {run}` starts the next wave, `flotilla rollback {run}` restores the fleet"
            ),
        ));
    }
    if !record.resumable() {
        return Err(fail(
            exit::USAGE,
            format!("run {run} has ended ({:?}); {if_ended}", record.status),
        ));
    }
    Ok(())
}

/// `flotilla finalize RUN`: the decision to keep a run that awaits it.
async fn finalize(
    cli: &Cli,
    run: &str,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> Outcome {
    check_report_files(files)?;
    let (client, subjects, store, record, revisions) = load_run(cli, Some(run), true).await?;
    if record.status != RunStatus::AwaitingFinalize {
        return Err(fail(
            exit::USAGE,
            format!(
                "run {} is not awaiting finalize (it is {}); only a run migrated with --no-finalize (or finalize = \"manual\") waits for one",
                record.run_id,
                status_name(record.status)
            ),
        ));
    }
    let loaded = (client, subjects, store, record, revisions);
    take_over(cli, loaded, Takeover::Finalize, files, shutdown).await
}

/// `flotilla promote RUN`: ends the pause after a wave. A run `paused` is taken over here; a
/// bake is ended by the coordinator waiting on it, which this asks through the run store.
async fn promote(
    cli: &Cli,
    run: &str,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> Outcome {
    check_report_files(files)?;
    let (client, subjects, store, record, revisions) = load_run(cli, Some(run), true).await?;
    let Some(w) = record
        .open_pause()
        .filter(|_| record.stage != crate::store::Stage::Done)
    else {
        return Err(fail(
            exit::USAGE,
            format!(
                "run {} is not in a pause (it is {}); only a run baking or paused after a wave with `pause` can be promoted",
                record.run_id,
                status_name(record.status)
            ),
        ));
    };
    if record.status == RunStatus::Paused {
        let loaded = (client, subjects, store, record, revisions);
        return take_over(cli, loaded, Takeover::Promote, files, shutdown).await;
    }
    if let Err(e) = store.request_promote(&record.run_id, w).await {
        return Err(fail(exit::BUS, error_chain(&e)));
    }
    let wave = &record.waves[w].name;
    match cli.output {
        OutputFormat::Json => print_json(&serde_json::json!({
            "run_id": record.run_id,
            "promote_requested": true,
            "wave": wave,
            "status": record.status,
        })),
        OutputFormat::Text => eprintln!(
            "promote requested for run {}: its coordinator ends the bake after wave {} and starts the next wave (a run whose coordinator is gone goes on at `flotilla resume {}`)",
            record.run_id,
            one_line(wave),
            record.run_id
        ),
    }
    Ok(exit::OK)
}

/// What a new engine does with a recorded run.
enum Takeover {
    Resume,
    Promote,
    Rollback(Option<ServiceName>),
    Finalize,
}

/// Takes a recorded run over with an engine of this process, carries out `what`, and reports how
/// the run ended.
async fn take_over(
    cli: &Cli,
    (client, subjects, store, record, revisions): Loaded,
    what: Takeover,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> Outcome {
    let mut plan = match Plan::parse_named(&record.plan_text, &record.plan_path) {
        Ok(plan) => plan,
        Err(e) => return Err(fail(exit::USAGE, e)),
    };
    // The files as the run shipped them (the bucket holds them), not as the disk has them now.
    if let Err(e) = crate::plan_files::bind(&mut plan, &record.plan_files) {
        return Err(fail(exit::USAGE, e));
    }
    let parts = engine_parts(cli, &client, &subjects, store, shutdown)?;
    let result = match Engine::attach(parts, plan, record, revisions).await {
        Ok(engine) => match what {
            Takeover::Resume => engine.drive().await,
            Takeover::Promote => engine.promote().await,
            Takeover::Rollback(only) => engine.roll_back(only).await,
            Takeover::Finalize => engine.finalize().await,
        },
        Err(e) => Err(e),
    };
    finish(cli, &client, result, files).await
}

/// A run status as written in reports (`awaiting_finalize`).
fn status_name(status: RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

async fn rollback(
    cli: &Cli,
    run: &str,
    service: Option<&str>,
    files: &ReportFiles,
    shutdown: CancellationToken,
) -> Outcome {
    check_report_files(files)?;
    let only = match service.map(ServiceName::parse).transpose() {
        Ok(only) => only,
        Err(e) => return Err(fail(exit::USAGE, format!("--service: {e}"))),
    };
    let (client, subjects, store, record, revisions) = load_run(cli, Some(run), true).await?;
    if let Some(only) = &only
        && !record.targets.iter().any(|t| &t.service == only)
    {
        return Err(fail(
            exit::USAGE,
            format!("service {only} is not part of run {}", record.run_id),
        ));
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
        return Err(fail(
            exit::USAGE,
            format!(
                "run {} was finalized for {}: their backups are gone, nothing to roll back to",
                record.run_id,
                finalized.join(", ")
            ),
        ));
    }
    let loaded = (client, subjects, store, record, revisions);
    take_over(cli, loaded, Takeover::Rollback(only), files, shutdown).await
}

/// Reports how an engine run ended.
async fn finish(
    cli: &Cli,
    client: &async_nats::Client,
    result: Result<RunRecord, rollout::RolloutError>,
    files: &ReportFiles,
) -> Outcome {
    let _ = client.flush().await;
    match result {
        Ok(record) => {
            let code = emit(cli, &record, files);
            // The run's own code stands; a report file that cannot be written adds a failure.
            match html::write_file(cli, client, &record, files).await {
                Ok(()) => Ok(code),
                Err(error) => Ok(code.max(error.report())),
            }
        }
        Err(e) => Err(fail(exit::BUS, error_chain(&e))),
    }
}
