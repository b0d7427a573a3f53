//! One run of a job: spawned like the service (its environment, its root, its output log), in
//! its own process group that dies with the run, timed, and watched for its peak memory.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use flotilla_schemas::{JobRun, MemorySource};

use crate::children::{Group, Launcher};

/// How often the main process's high-water mark is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How often the whole process tree is summed (a heavier walk of `/proc`).
const TREE_EVERY: Duration = Duration::from_millis(200);

/// Why a run could not happen at all (a run that failed is a [`JobRun`]).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot open the job's output log {path}")]
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
    #[error("lost the job {program} while it ran")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent needs to run the job.
pub struct Invocation<'a> {
    pub root: &'a Path,
    pub command: &'a [String],
    /// The service's own variables, on top of the launcher's inherited environment.
    pub env: &'a BTreeMap<String, String>,
    pub launcher: &'a Launcher,
    /// Where its stdout and stderr are appended (the service output log).
    pub log: &'a Path,
    pub timeout: Duration,
}

/// A finished run and the last line it wrote, for reasons.
pub struct Finished {
    pub run: JobRun,
    pub last_line: String,
}

/// Runs the job once, to its end or its timeout.
pub async fn run(how: &Invocation<'_>) -> Result<Finished, RunError> {
    let log_error = |source| RunError::Log {
        path: how.log.to_owned(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(how.log)
        .map_err(log_error)?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err_log = log.try_clone().map_err(log_error)?;
    let program = how
        .command
        .first()
        .expect("config check: a job has a command");
    let started = Instant::now();
    let mut child = spawn(how, log, err_log)?;
    let pid = child.id();
    tracing::info!(pid, %program, "job started");
    // Recorded before the wait: an agent killed mid-run leaves a group the next one kills.
    let group = pid.map(|pid| Group::record(pid, how.launcher.registry.as_deref()));
    let (status, peak) = watch(&mut child, pid, started + how.timeout).await;
    let (status, timed_out) = match status {
        Some(status) => (
            status.map_err(|source| RunError::Wait {
                program: program.clone(),
                source,
            })?,
            false,
        ),
        None => {
            tracing::warn!(pid, timeout = ?how.timeout, "job ran past its timeout: killing it");
            // Its whole group, then the reaping of the leader.
            drop(group);
            let status = child.wait().await.map_err(|source| RunError::Wait {
                program: program.clone(),
                source,
            })?;
            (status, true)
        }
    };
    let run = JobRun {
        duration_ms: started.elapsed().as_millis() as u64,
        peak_memory_bytes: peak,
        exit_code: status.code(),
        signal: status.signal(),
        timed_out,
        outputs: Vec::new(),
    };
    tracing::info!(
        pid,
        duration_ms = run.duration_ms,
        peak_memory_bytes = run.peak_memory_bytes,
        exit_code = run.exit_code,
        signal = run.signal,
        timed_out,
        "job ended"
    );
    Ok(Finished {
        run,
        last_line: last_line_since(how.log, offset),
    })
}

/// Starts the job as the service would be started: its root, the launcher's environment and
/// its own, its output into the log, in a process group of its own.
fn spawn(
    how: &Invocation<'_>,
    log: std::fs::File,
    err_log: std::fs::File,
) -> Result<tokio::process::Child, RunError> {
    let (program, args) = how
        .command
        .split_first()
        .expect("config check: a job has a command");
    tokio::process::Command::new(program)
        .args(args)
        .current_dir(how.root)
        .env_clear()
        .envs(&how.launcher.env)
        .envs(how.env)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: program.clone(),
            source,
        })
}

/// Waits for the job until `deadline`, sampling its memory meanwhile: its exit status (`None`
/// past the deadline) and the peak it reached.
async fn watch(
    child: &mut tokio::process::Child,
    pid: Option<u32>,
    deadline: Instant,
) -> (
    Option<std::io::Result<std::process::ExitStatus>>,
    Option<u64>,
) {
    let mut peak: Option<u64> = None;
    let mut last_tree = None::<Instant>;
    loop {
        if let Some(pid) = pid {
            let tree_due = last_tree.is_none_or(|at| at.elapsed() >= TREE_EVERY);
            if let Some(bytes) = sample(pid, tree_due) {
                peak = Some(peak.map_or(bytes, |p| p.max(bytes)));
            }
            if tree_due {
                last_tree = Some(Instant::now());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            status = child.wait() => return (Some(status), peak),
            _ = tokio::time::sleep(SAMPLE_EVERY.min(left)) => {
                if Instant::now() >= deadline {
                    return (None, peak);
                }
            }
        }
    }
}

/// The main process's high-water mark, and with `tree` the resident sum of its process tree.
fn sample(pid: u32, tree: bool) -> Option<u64> {
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| crate::metrics::kib_field(&status, "VmHWM:"));
    let tree = tree
        .then(|| crate::metrics::service_memory(pid, Some(MemorySource::Rss)))
        .flatten()
        .map(|m| m.bytes);
    match (hwm, tree) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `": <last line>"` of what the run appended to the log after `offset`, or nothing.
fn last_line_since(log: &Path, offset: u64) -> String {
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        // The tail is enough for a reason; a job may log gigabytes.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let from = offset.max(len.saturating_sub(64 * 1024));
        if file.seek(SeekFrom::Start(from)).is_ok() {
            let _ = file.read_to_end(&mut text);
        }
    }
    crate::steps::last_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_sh(script: &str, timeout: Duration) -> (Finished, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("out.log");
        std::fs::write(&log, "an earlier run's line\n").unwrap();
        let command = ["sh".to_owned(), "-c".to_owned(), script.to_owned()];
        let finished = run(&Invocation {
            root: tmp.path(),
            command: &command,
            env: &BTreeMap::from([("GREETING".to_owned(), "hi".to_owned())]),
            launcher: &Launcher::default(),
            log: &log,
            timeout,
        })
        .await
        .unwrap();
        (finished, tmp)
    }

    #[tokio::test]
    async fn a_run_reports_its_exit_code_duration_memory_and_last_line() {
        let (ok, _tmp) = run_sh(
            "echo \"$GREETING from the job\"; sleep 0.1",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(ok.run.exit_code, Some(0));
        assert!(ok.run.exited_with(&[0]));
        assert!(ok.run.duration_ms >= 100, "{}", ok.run.duration_ms);
        assert!(ok.run.peak_memory_bytes.is_some_and(|b| b > 0));
        assert_eq!(ok.last_line, ": hi from the job");

        let (failed, _tmp) = run_sh("exit 3", Duration::from_secs(10)).await;
        assert_eq!(failed.run.exit_code, Some(3));
        assert!(!failed.run.exited_with(&[0]) && failed.run.exited_with(&[0, 3]));
        // Nothing written by this run: no line from an earlier one.
        assert_eq!(failed.last_line, "");
    }

    #[tokio::test]
    async fn a_run_past_its_timeout_is_killed_with_its_children() {
        let (late, tmp) = run_sh(
            "sleep 30 & echo $! > bg.pid; wait",
            Duration::from_millis(300),
        )
        .await;
        assert!(late.run.timed_out);
        assert!(!late.run.exited_with(&[0]));
        assert_eq!(late.run.ending(), "killed at its timeout");
        assert!(late.run.duration_ms < 10_000);
        let background: i32 = std::fs::read_to_string(tmp.path().join("bg.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while crate::supervisor::process_start(background).is_some_and(|(_, zombie)| !zombie)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            crate::supervisor::process_start(background).is_none_or(|(_, zombie)| zombie),
            "the job's background child survived"
        );
    }
}
