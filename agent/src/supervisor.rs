//! Supervision of the service process: spawn, stop, restart, and the time it takes to start
//! serving (answer HTTP at all), which is the startup figure the regression gate compares.
//! Whether it is *healthy* is the validate phase's question, not the supervisor's.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tokio::process::{Child, Command};

use crate::config::ServiceConfig;
use crate::health::{self, HealthError};

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
}

/// Owns the service process.
pub struct Supervisor {
    service: ServiceConfig,
    output_log: PathBuf,
    http: reqwest::Client,
    child: Option<Child>,
    last_startup: Option<Duration>,
}

impl Supervisor {
    /// A supervisor for `service`; its stdout and stderr go to `output_log`.
    pub fn new(service: ServiceConfig, output_log: PathBuf, http: reqwest::Client) -> Self {
        Self {
            service,
            output_log,
            http,
            child: None,
            last_startup: None,
        }
    }

    /// The running service's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// How long the last start took to become healthy.
    pub fn last_startup(&self) -> Option<Duration> {
        self.last_startup
    }

    /// Starts the service and waits until it serves; returns the time that took.
    pub async fn start(&mut self) -> Result<Duration, SupervisorError> {
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

    /// Stops the service: SIGTERM, then SIGKILL after the stop timeout.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
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

    /// Stops and starts the service; returns the time to healthy.
    pub async fn restart(&mut self) -> Result<Duration, SupervisorError> {
        self.stop().await;
        self.start().await
    }
}
