//! Supervision of the service process: spawn, stop, restart, and the time it takes to start
//! serving (answer HTTP at all), which is the startup figure the regression gate compares.
//! Whether it is *healthy* is the validate phase's question, not the supervisor's.
//!
//! With `supervisor = "external"` another supervisor (systemd, a container runtime) owns the
//! process: the agent restarts it through `restart_command`, stops it through `stop_command`, and
//! finds its PID through `pid_file` or `process_match` to measure its memory.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

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
    last_startup: Option<Duration>,
    pid_file: PathBuf,
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
            last_startup: None,
            pid_file,
        }
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
            return self.child.as_ref().and_then(Child::id);
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

    /// At the agent's start: a supervised service is started; an external one is only waited
    /// for (another supervisor already runs it).
    pub async fn boot(&mut self) -> Result<Option<Duration>, SupervisorError> {
        if self.external() {
            self.wait_serving(Instant::now()).await?;
            return Ok(None);
        }
        self.start().await.map(Some)
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
            None,
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
            .expect("config check: command is not empty");
        self.stop_orphan(program).await;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .envs(&self.service.env)
            .current_dir(&self.service.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SupervisorError::Spawn {
                program: program.clone(),
                source,
            })?;
        tracing::info!(pid = child.id(), %program, "service started");
        if let Some(pid) = child.id() {
            let _ = std::fs::write(&self.pid_file, pid.to_string());
        }
        self.child = Some(child);
        let elapsed = self.wait_serving(started).await?;
        self.last_startup = Some(elapsed);
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

    /// A service started by an agent that was then killed (kill -9 leaves children running) still
    /// holds its port and runs the old files: stop it before starting a new one. The PID file is
    /// trusted only while that process still runs our program.
    async fn stop_orphan(&self, program: &str) {
        let Some(pid) = std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        else {
            return;
        };
        let running_ours = |pid: i32| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && cmdline.split(|b| *b == 0).next() == Some(program.as_bytes())
        };
        if self.child.as_ref().and_then(Child::id) == Some(pid as u32) || !running_ours(pid) {
            return;
        }
        tracing::warn!(pid, "stopping a service left running by a previous agent");
        let Some(target) = Pid::from_raw(pid) else {
            return;
        };
        let _ = kill_process(target, Signal::TERM);
        let deadline = Instant::now() + self.service.stop_timeout;
        while running_ours(pid) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if running_ours(pid) {
            let _ = kill_process(target, Signal::KILL);
            while running_ours(pid) {
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
                tracing::warn!(timeout = ?self.service.stop_timeout, "service ignored SIGTERM, killing it");
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

    /// What the agent does with its service when it shuts down: a supervised service stops with
    /// it; an external one is left to its supervisor.
    pub async fn shutdown(&mut self) {
        if !self.external() {
            self.stop().await;
        }
    }
}
