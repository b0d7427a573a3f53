//! `flotilla-agent`: the sidecar that migrates one service safely.
//!
//! On start it recovers whatever a crash interrupted (from its journal), compacts the journal,
//! starts the service (or adopts the one the previous agent left running), connects to NATS and
//! serves commands until shut down.

pub mod backup;
mod checks;
mod child_env;
mod children;
pub mod config;
mod confine;
pub mod crashpoint;
mod events;
mod expand;
mod health;
mod inspect;
pub mod job;
pub mod journal;
mod lifecycle;
mod metrics;
pub mod ops;
mod plan_files;
mod preview;
pub mod redact;
mod registry;
mod retry;
mod run_context;
mod run_vars;
mod session;
mod state_lock;
pub mod steps;
mod supervisor;
mod template;
pub mod tree;
mod workload;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_bus::BusOptions;
use flotilla_schemas::AgentState;
use flotilla_schemas::subjects::Subjects;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use flotilla_telemetry::error_chain;

/// The file in the state directory that receives the service's (or the job's) stdout and
/// stderr.
pub const SERVICE_OUTPUT_LOG: &str = "service-output.log";

use crate::backup::BackupStore;
use crate::journal::Journal;
use crate::lifecycle::Lifecycle;
use crate::redact::Redactor;
use crate::session::Status;
use crate::supervisor::Supervisor;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Lock(#[from] state_lock::LockError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Session(#[from] session::SessionError),
    #[error("cannot build the HTTP client for health checks")]
    Http(#[source] reqwest::Error),
    #[error(
        "cannot connect to NATS, and waiting will not help: check [nats] and [nats.auth] in the agent configuration"
    )]
    NatsConfig(#[source] flotilla_bus::BusError),
    #[error("invalid subject prefix")]
    Prefix(#[source] flotilla_schemas::IdError),
    #[error(transparent)]
    Secret(#[from] redact::TooShort),
    #[error(transparent)]
    Ops(#[from] ops::OpsError),
}

/// Runs the agent until `shutdown` is cancelled. The service it supervises keeps running
/// (unless `agent.stop_service_on_exit`), whether the agent stops cleanly or on an error.
pub async fn run(
    config: AgentConfig,
    telemetry: &flotilla_telemetry::TelemetryGuard,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let redactor = Redactor::from_sources(&config.secrets)?;
    run_with(config, redactor, telemetry, shutdown).await
}

/// [`run`] with the redactor the binary also gave its telemetry (so that logs are scrubbed of
/// the same values as events and the journal).
pub async fn run_with(
    config: AgentConfig,
    redactor: Redactor,
    telemetry: &flotilla_telemetry::TelemetryGuard,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let subjects = Subjects::new(&config.nats.prefix).map_err(AgentError::Prefix)?;
    let _lock = state_lock::StateLock::acquire(&config.agent.state_dir)?;
    // Up before recovery, so that probes and metrics see the agent start; it stops with
    // whichever ends first, the agent's shutdown or this function.
    let ops_stop = shutdown.child_token();
    let _ops_stop = ops_stop.clone().drop_guard();
    let ops = ops::Ops::new(config.service.name.as_str(), config.agent.instance.as_str());
    ops.start(&config.http, &ops_stop)?;
    let mut lifecycle = assemble(config, redactor, ops.clone())?;
    recover_and_boot(&mut lifecycle).await?;
    ops.booted();
    let status = Arc::new(Mutex::new(Status {
        state: AgentState::Idle,
        current_run: None,
        service_pid: lifecycle.supervisor.pid(),
    }));

    // Woken at each reconnect: core NATS delivery may have missed a command then.
    let reconnected = Arc::new(tokio::sync::Notify::new());
    let client = match connect(&lifecycle.config, reconnected.clone(), &shutdown).await {
        Some(Ok(client)) => client,
        Some(Err(e)) => {
            lifecycle.supervisor.shutdown().await;
            return Err(AgentError::NatsConfig(e));
        }
        None => {
            lifecycle.supervisor.shutdown().await;
            return Ok(());
        }
    };

    ops.connected(&client);
    telemetry
        .attach_nats_in(
            client.clone(),
            subjects.prefix(),
            lifecycle.config.nats.domain.as_deref(),
        )
        .await;
    let served = session::serve(
        client.clone(),
        reconnected,
        subjects,
        lifecycle,
        status,
        telemetry,
        shutdown,
    )
    .await;
    let _ = client.drain().await;
    let mut lifecycle = served?;
    lifecycle.supervisor.shutdown().await;
    tracing::info!("agent stopped");
    Ok(())
}

/// Opens the journal and builds the supervisor, the launcher and the backup store the agent
/// works with. Reaps what a previous agent started first: nothing of it may still be writing
/// into the service root when recovery restores it.
fn assemble(
    config: AgentConfig,
    redactor: Redactor,
    ops: ops::Ops,
) -> Result<Lifecycle, AgentError> {
    let children = children::registry(&config.agent.state_dir);
    children::reap_orphans(&children);
    let mut journal = Journal::open(&config.agent.state_dir)?;
    journal.redact_with(redactor.clone());
    ops.journal_bytes(journal.bytes());
    let inherited = child_env::inherited(&config.secrets.env_prefix, &config.service.inherit_env);
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(AgentError::Http)?;
    let supervisor = Supervisor::new(
        config.service.clone(),
        config.agent.state_dir.join(SERVICE_OUTPUT_LOG),
        http.clone(),
    )
    .stop_on_exit(config.agent.stop_service_on_exit)
    .inherited_env(inherited.clone());
    let launcher = children::Launcher {
        run_as: config.commands.run_as,
        env: inherited,
        contain: true,
        registry: Some(children),
    };
    let backups = match &config.agent.backup_dir {
        Some(dir) => BackupStore::in_dir(dir),
        None => BackupStore::new(&config.agent.state_dir),
    }
    .with_limit(config.agent.max_backup_bytes)
    .with_crash_points(&config.agent.state_dir);
    Ok(Lifecycle {
        config,
        journal,
        backups,
        supervisor,
        http,
        launcher,
        redactor,
        swapped_out: Vec::new(),
        plan_files: None,
        ops,
    })
}

/// Finishes what a crash interrupted, compacts the journal, removes swapped-out trees, then
/// starts the service (or adopts the one left running).
async fn recover_and_boot(lifecycle: &mut Lifecycle) -> Result<(), AgentError> {
    let recovered = lifecycle.recover()?;
    lifecycle.compact_journal(true)?;
    // Trees swapped out by restores, this recovery's and any a crash kept from removal.
    lifecycle.swapped_out = lifecycle.backups.sweep();
    lifecycle.remove_swapped_out();
    if !recovered.is_empty() {
        tracing::warn!(
            count = recovered.len(),
            "recovered interrupted commands; their results go out once connected"
        );
    }
    // A service the previous agent left running is adopted, unless recovery just changed the
    // files under it (then it must restart on them).
    if let Err(e) = lifecycle.supervisor.boot(recovered.is_empty()).await {
        // The agent stays up: a broken service is exactly when an operator needs it reachable.
        tracing::error!(error = %error_chain(&e), "the service did not start healthy");
    }
    Ok(())
}

/// Connects to NATS, retrying every second while the failure is transient. `None` when
/// `shutdown` came first; an error when waiting would not help.
async fn connect(
    config: &AgentConfig,
    reconnected: Arc<tokio::sync::Notify>,
    shutdown: &CancellationToken,
) -> Option<Result<async_nats::Client, flotilla_bus::BusError>> {
    let options = BusOptions {
        servers: config.nats.url.clone(),
        name: format!(
            "flotilla-agent {}/{}",
            config.service.name, config.agent.instance
        ),
        connect_timeout: config.nats.connect_timeout,
        allow_old_server: false,
        auth: config.nats.auth.clone(),
        domain: config.nats.domain.clone(),
    };
    retry::steadily(
        Duration::from_secs(1),
        shutdown,
        || flotilla_bus::connect_notifying(&options, Some(reconnected.clone())),
        |e| {
            if e.is_transient() {
                tracing::warn!(error = %error_chain(e), "NATS not reachable yet, retrying");
            }
            e.is_transient()
        },
    )
    .await
}
