//! Supervision of the service process: spawn, stop, restart, and the time it takes to start
//! serving (answer HTTP at all), which is the startup figure the regression gate compares.
//! Whether it is *healthy* is the validate phase's question, not the supervisor's.
//!
//! With `supervisor = "external"` another supervisor (systemd, a container runtime) owns the
//! process: the agent restarts it through `restart_command`, stops it through `stop_command`, and
//! finds its PID through `pid_file` or `process_match` to measure its memory.
//!
//! A service the agent runs itself outlives the agent: it is spawned in its own process group and
//! never killed when the agent exits (kill -9, an error, or SIGTERM, unless
//! `agent.stop_service_on_exit`). The agent records it in `<state_dir>/service.pid` (PID, start
//! time, startup time); the next agent adopts it when that process is still the one it started
//! (same PID, same start time, same program) and healthy, and restarts it only when it is dead,
//! unhealthy, or when recovery changed the files under it.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use crate::children::Launcher;
use crate::config::{ServiceConfig, SupervisorKind};
use crate::health::{self, HealthError};
use crate::steps;

/// Why the service could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("cannot open the service output log {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the service exited with {status} before it served{output}")]
    Exited { status: String, output: String },
    #[error("the service did not start serving: {0}")]
    Unhealthy(#[source] HealthError),
    #[error("{what} failed: {reason}")]
    External { what: &'static str, reason: String },
}

/// Owns the service process.
pub struct Supervisor {
    service: ServiceConfig,
    output_log: PathBuf,
    http: reqwest::Client,
    child: Option<Child>,
    /// A service started by an earlier agent, found alive and healthy, and kept running.
    adopted: Option<i32>,
    last_startup: Option<Duration>,
    pid_file: PathBuf,
    stop_on_exit: bool,
    /// The environment of the service and of the external supervisor's commands (before
    /// `service.env`); its commands are not contained, they leave the service running.
    launcher: Launcher,
}

/// How long a service left running by an earlier agent may take to answer before the agent
/// restarts it instead of adopting it (at most the startup timeout).
const ADOPT_WAIT: Duration = Duration::from_secs(3);

/// What `service.pid` says: `<pid> <start time in clock ticks> <startup ms>` (older agents
/// wrote the PID alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PidRecord {
    pid: i32,
    start_time: Option<u64>,
    startup_ms: Option<u64>,
}

impl PidRecord {
    fn parse(text: &str) -> Option<Self> {
        let mut fields = text.split_whitespace();
        let pid = fields.next()?.parse().ok()?;
        let start_time = fields.next().and_then(|f| f.parse().ok());
        let startup_ms = fields.next().and_then(|f| f.parse().ok());
        Some(Self {
            pid,
            start_time,
            startup_ms,
        })
    }

    fn text(&self) -> String {
        let mut text = self.pid.to_string();
        if let Some(start) = self.start_time {
            text.push_str(&format!(" {start}"));
            if let Some(ms) = self.startup_ms {
                text.push_str(&format!(" {ms}"));
            }
        }
        text.push('\n');
        text
    }
}

/// The start time of process `pid` (clock ticks since boot, `/proc/<pid>/stat` field 22), and
/// whether it is a zombie.
pub(crate) fn process_start(pid: i32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let zombie = fields.first().is_some_and(|state| *state == "Z");
    // `rest` starts at field 3 (the state): field 22 is at index 19.
    let start = fields.get(19)?.parse().ok()?;
    Some((start, zombie))
}

/// Whether `record` still names a live process running `program`, started when it says: the
/// PID file is trusted only then (a PID may have been reused by anything since).
fn still_ours(record: &PidRecord, program: &str) -> bool {
    let Some((start, zombie)) = process_start(record.pid) else {
        return false;
    };
    if zombie || record.start_time.is_some_and(|recorded| recorded != start) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", record.pid)).unwrap_or_default();
    cmdline.split(|b| *b == 0).next() == Some(program.as_bytes())
}

impl Supervisor {
    /// A supervisor for `service`; its stdout and stderr go to `output_log`.
    /// The PID file (beside `output_log`) lets a restarted agent find a service that outlived it.
    pub fn new(service: ServiceConfig, output_log: PathBuf, http: reqwest::Client) -> Self {
        let pid_file = output_log.with_file_name("service.pid");
        Self {
            service,
            output_log,
            http,
            child: None,
            adopted: None,
            last_startup: None,
            pid_file,
            stop_on_exit: false,
            launcher: Launcher::default(),
        }
    }

    /// The service and the external supervisor's commands start with `env` (the agent's
    /// environment without its secrets), plus `service.env` for the service.
    pub fn inherited_env(self, env: std::collections::BTreeMap<String, String>) -> Self {
        Self {
            launcher: Launcher {
                env,
                ..Launcher::default()
            },
            ..self
        }
    }

    /// Stops the service when the agent shuts down (`agent.stop_service_on_exit`); by default
    /// it is left running for the next agent to adopt.
    pub fn stop_on_exit(self, stop: bool) -> Self {
        Self {
            stop_on_exit: stop,
            ..self
        }
    }

    fn program(&self) -> &str {
        self.service
            .command
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn recorded(&self) -> Option<PidRecord> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| PidRecord::parse(&t))
    }

    /// `none` behaves as an external supervisor without commands: no process to run or measure.
    fn external(&self) -> bool {
        matches!(
            self.service.supervisor,
            SupervisorKind::External | SupervisorKind::Noop
        )
    }

    /// The running service's PID.
    pub fn pid(&self) -> Option<u32> {
        if !self.external() {
            return self
                .child
                .as_ref()
                .and_then(Child::id)
                .or(self.adopted.map(|pid| pid as u32));
        }
        if let Some(path) = &self.service.pid_file {
            return std::fs::read_to_string(path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
        }
        let pattern = self.service.process_match.as_deref()?;
        let own = std::process::id();
        std::fs::read_dir("/proc")
            .ok()?
            .filter_map(Result::ok)
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                (pid != own && cmdline.contains(pattern)).then_some(pid)
            })
    }

    /// At the agent's start: a supervised service left running by the previous agent is adopted
    /// when `adopt` (nothing was recovered under it), it is still the process that agent started,
    /// and it answers `health_url`; otherwise it is (re)started. An external one is only waited
    /// for (another supervisor already runs it). Returns the startup time of a new start.
    pub async fn boot(&mut self, adopt: bool) -> Result<Option<Duration>, SupervisorError> {
        if self.external() {
            self.wait_serving(Instant::now()).await?;
            return Ok(None);
        }
        if adopt && self.adopt().await {
            return Ok(None);
        }
        self.start().await.map(Some)
    }

    /// Takes over the service the previous agent left running, if it is ours and healthy.
    async fn adopt(&mut self) -> bool {
        let Some(record) = self.recorded() else {
            return false;
        };
        if !still_ours(&record, self.program()) {
            return false;
        }
        let deadline = Instant::now() + ADOPT_WAIT.min(self.service.startup_timeout);
        loop {
            if !still_ours(&record, self.program()) {
                return false;
            }
            match health::probe(&self.http, &self.service.health_url, None, None, None).await {
                Ok(()) => break,
                Err(e) if Instant::now() >= deadline => {
                    tracing::warn!(
                        pid = record.pid,
                        error = %e,
                        "the service left running by the previous agent does not answer: restarting it"
                    );
                    return false;
                }
                Err(_) => tokio::time::sleep(health::POLL_INTERVAL).await,
            }
        }
        tracing::info!(
            pid = record.pid,
            "adopted the service left running by the previous agent"
        );
        self.adopted = Some(record.pid);
        // Its startup time, as measured when it was started: the startup gate's baseline.
        self.last_startup = record.startup_ms.map(Duration::from_millis);
        true
    }

    async fn run_external(
        &self,
        what: &'static str,
        argv: &[String],
    ) -> Result<(), SupervisorError> {
        let Some((program, args)) = argv.split_first() else {
            return Ok(());
        };
        let output = steps::run_program(
            &self.service.root,
            program,
            args,
            &Default::default(),
            self.service.startup_timeout,
            &self.launcher,
        )
        .await
        .map_err(|e| SupervisorError::External {
            what,
            reason: e.to_string(),
        })?;
        if output.status.success() {
            return Ok(());
        }
        let reason = format!(
            "{} exited with {}{}",
            program,
            output.status,
            steps::last_line(&output.stderr)
        );
        Err(SupervisorError::External { what, reason })
    }

    /// How long the last start took to become healthy.
    pub fn last_startup(&self) -> Option<Duration> {
        self.last_startup
    }

    /// Starts the service and waits until it serves; returns the time that took.
    pub async fn start(&mut self) -> Result<Duration, SupervisorError> {
        if self.external() {
            let started = Instant::now();
            self.run_external("restart_command", &self.service.restart_command.clone())
                .await?;
            let elapsed = self.wait_serving(started).await?;
            self.last_startup = Some(elapsed);
            return Ok(elapsed);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output_log)
            .map_err(|source| SupervisorError::Log {
                path: self.output_log.clone(),
                source,
            })?;
        let err_log = log.try_clone().map_err(|source| SupervisorError::Log {
            path: self.output_log.clone(),
            source,
        })?;
        let (program, args) = self
            .service
            .command
            .split_first()
            .map(|(program, args)| (program.clone(), args.to_vec()))
            .expect("config check: command is not empty");
        self.stop_orphan(&program).await;
        let started = Instant::now();
        // Its own process group, and not killed with the agent: the service outlives an agent
        // that exits, however it exits (a Ctrl-C to the agent's terminal included).
        let child = Command::new(&program)
            .args(args)
            .env_clear()
            .envs(&self.launcher.env)
            .envs(&self.service.env)
            .current_dir(&self.service.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SupervisorError::Spawn {
                program: program.clone(),
                source,
            })?;
        tracing::info!(pid = child.id(), %program, "service started");
        let mut record = child.id().map(|pid| PidRecord {
            pid: pid as i32,
            start_time: process_start(pid as i32).map(|(start, _)| start),
            startup_ms: None,
        });
        if let Some(record) = &record {
            let _ = std::fs::write(&self.pid_file, record.text());
        }
        self.child = Some(child);
        let elapsed = self.wait_serving(started).await?;
        self.last_startup = Some(elapsed);
        if let Some(record) = &mut record {
            record.startup_ms = Some(elapsed.as_millis() as u64);
            let _ = std::fs::write(&self.pid_file, record.text());
        }
        Ok(elapsed)
    }

    async fn wait_serving(&mut self, started: Instant) -> Result<Duration, SupervisorError> {
        let deadline = started + self.service.startup_timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(SupervisorError::Exited {
                    status: status.to_string(),
                    output: self.last_output_line(),
                });
            }
            match health::probe(&self.http, &self.service.health_url, None, None, None).await {
                Ok(()) => return Ok(started.elapsed()),
                Err(e) if Instant::now() >= deadline => return Err(SupervisorError::Unhealthy(e)),
                Err(_) => tokio::time::sleep(health::POLL_INTERVAL).await,
            }
        }
    }

    fn last_output_line(&self) -> String {
        let text = std::fs::read_to_string(&self.output_log).unwrap_or_default();
        match text.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(line) => format!(": {}", line.chars().take(300).collect::<String>()),
            None => String::new(),
        }
    }

    /// A service left running by an earlier agent and not adopted (unhealthy, or recovery
    /// changed its files) still holds its port and runs the old files: stop it before starting a
    /// new one. The PID file is trusted only while that process is still the one started.
    async fn stop_orphan(&mut self, program: &str) {
        if let Some(pid) = self.adopted.take() {
            self.stop_pid(pid, program, None).await;
            return;
        }
        let Some(record) = self.recorded() else {
            return;
        };
        if self.child.as_ref().and_then(Child::id) == Some(record.pid as u32)
            || !still_ours(&record, program)
        {
            return;
        }
        tracing::warn!(
            pid = record.pid,
            "stopping a service left running by a previous agent"
        );
        self.stop_pid(record.pid, program, record.start_time).await;
    }

    /// Stops a service process that is not the agent's child: SIGTERM, then SIGKILL after the
    /// stop timeout; waits until it is gone.
    async fn stop_pid(&self, pid: i32, program: &str, start_time: Option<u64>) {
        let record = PidRecord {
            pid,
            start_time: start_time.or(process_start(pid).map(|(start, _)| start)),
            startup_ms: None,
        };
        let running = || still_ours(&record, program);
        let Some(target) = Pid::from_raw(pid) else {
            return;
        };
        let _ = kill_process(target, Signal::TERM);
        let deadline = Instant::now() + self.service.stop_timeout;
        while running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if running() {
            tracing::warn!(
                pid,
                timeout = ?self.service.stop_timeout,
                "service ignored SIGTERM, killing it"
            );
            let _ = kill_process(target, Signal::KILL);
            while running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stops the service: SIGTERM, then SIGKILL after the stop timeout; an external one through
    /// its `stop_command`, when it has one.
    pub async fn stop(&mut self) {
        if self.external() {
            if let Err(e) = self
                .run_external("stop_command", &self.service.stop_command.clone())
                .await
            {
                tracing::warn!(error = %e, "external stop failed");
            }
            return;
        }
        if let Some(pid) = self.adopted.take() {
            let _ = std::fs::remove_file(&self.pid_file);
            let program = self.program().to_owned();
            self.stop_pid(pid, &program, None).await;
            tracing::info!("service stopped");
            return;
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(pid) = child.id().and_then(|id| Pid::from_raw(id as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        match tokio::time::timeout(self.service.stop_timeout, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.service.stop_timeout,
                    "service ignored SIGTERM, killing it"
                );
                let _ = child.kill().await;
            }
        }
        tracing::info!("service stopped");
    }

    /// Stops and starts the service (an external one: its restart command); returns the time
    /// until it serves.
    pub async fn restart(&mut self) -> Result<Duration, SupervisorError> {
        if !self.external() {
            self.stop().await;
        }
        self.start().await
    }

    /// What the agent does with its service when it shuts down: by default nothing, the service
    /// keeps serving and the next agent adopts it; with `agent.stop_service_on_exit` a
    /// supervised service is stopped. An external one is always left to its supervisor.
    pub async fn shutdown(&mut self) {
        if self.external() {
            return;
        }
        if self.stop_on_exit {
            self.stop().await;
        } else if let Some(pid) = self.pid() {
            tracing::info!(pid, "leaving the service running; the next agent adopts it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_file_reads_old_and_new_forms() {
        assert_eq!(
            PidRecord::parse("123\n"),
            Some(PidRecord {
                pid: 123,
                start_time: None,
                startup_ms: None
            })
        );
        let record = PidRecord {
            pid: 7,
            start_time: Some(4242),
            startup_ms: Some(35),
        };
        assert_eq!(PidRecord::parse(&record.text()), Some(record));
        assert_eq!(PidRecord::parse("not a pid"), None);
    }

    /// A PID file is trusted only for the very process it recorded: same program, same start
    /// time; not a reused PID, not another program, not a zombie or a dead process.
    #[test]
    fn only_the_process_that_was_started_is_ours() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Until it has exec'd, the child runs this test's program.
        let exec_deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.starts_with(b"sleep"))
            && Instant::now() < exec_deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (start, zombie) = process_start(pid).unwrap();
        assert!(!zombie);
        let record = PidRecord {
            pid,
            start_time: Some(start),
            startup_ms: None,
        };
        assert!(still_ours(&record, "sleep"));
        // An older PID file without the start time: the program alone decides.
        assert!(still_ours(
            &PidRecord {
                start_time: None,
                ..record
            },
            "sleep"
        ));
        assert!(!still_ours(&record, "flotilla-sample"));
        assert!(!still_ours(
            &PidRecord {
                start_time: Some(start + 1),
                ..record
            },
            "sleep"
        ));
        child.kill().unwrap();
        // Killed, not yet reaped: a zombie is not a running service.
        let dead_deadline = Instant::now() + Duration::from_secs(5);
        while process_start(pid).is_some_and(|(_, zombie)| !zombie)
            && Instant::now() < dead_deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(process_start(pid).unwrap().1, "not a zombie yet");
        assert!(!still_ours(&record, "sleep"));
        child.wait().unwrap();
        assert!(!still_ours(&record, "sleep"));
    }
}
