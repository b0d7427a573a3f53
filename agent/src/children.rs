//! The programs `run_command` steps, `command` checks and job workloads start: each runs in its
//! own process group, which is killed when the program ends or times out, and which the next
//! agent kills at start when this one died (kill -9) before it could.
//!
//! Linux's `PR_SET_PDEATHSIG` would kill the program with the agent itself, but it can only be
//! set between fork and exec (`pre_exec`, unsafe, and the workspace forbids unsafe code) and
//! reaches only the group leader, not what it spawned. Instead each group is recorded in
//! `<state_dir>/children/<pgid>` (with its leader's start time) before the agent waits on it, and
//! [`reap_orphans`] kills the recorded groups before recovery restores the service root, so that
//! nothing writes into the tree recovery restores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::config::RunAs;

/// How the agent starts programs: as whom, with which inherited environment, and where it
/// records their process groups.
#[derive(Debug, Clone, Default)]
pub struct Launcher {
    /// Run as this less privileged user and group instead of as the agent.
    pub run_as: Option<RunAs>,
    /// The environment every program starts with (before its own `env`).
    pub env: BTreeMap<String, String>,
    /// Run each program in its own process group, killed when the program ends. Off for an
    /// external supervisor's commands, which leave the service they start running.
    pub contain: bool,
    /// Where running process groups are recorded; none: not recorded (unit tests).
    pub registry: Option<PathBuf>,
}

/// The directory of `state_dir` where running process groups are recorded.
pub fn registry(state_dir: &Path) -> PathBuf {
    state_dir.join("children")
}

/// A started program's process group, killed (with whatever it spawned) when dropped: when the
/// program ended, timed out, or its step was abandoned.
pub struct Group {
    pgid: i32,
    record: Option<PathBuf>,
}

impl Group {
    /// Records the group led by `pid` under `registry`, before anyone waits on it.
    pub fn record(pid: u32, registry: Option<&Path>) -> Self {
        let pgid = pid as i32;
        let record = registry.and_then(|dir| {
            let path = dir.join(pgid.to_string());
            let start = crate::supervisor::process_start(pgid).map(|(start, _)| start)?;
            let written = std::fs::create_dir_all(dir).and_then(|()| {
                std::fs::write(&path, start.to_string())?;
                // The record is what lets the next agent kill the group: it must be on disk.
                std::fs::File::open(dir)?.sync_all()
            });
            match written {
                Ok(()) => Some(path),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        path = %path.display(),
                        "cannot record a child's process group"
                    );
                    None
                }
            }
        });
        Self { pgid, record }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.pgid);
        if let Some(path) = &self.record {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn kill_group(pgid: i32) {
    if let Some(pid) = Pid::from_raw(pgid) {
        // ESRCH: the group is already empty.
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// Kills the process groups a previous agent recorded and did not end (it died first), and
/// forgets them. A group whose leader's PID now names another process (a later start time) is
/// long gone: a PID is not reused while its process group lives.
pub fn reap_orphans(registry: &Path) {
    let Ok(entries) = std::fs::read_dir(registry) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(pgid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let recorded: Option<u64> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        let reused = match (crate::supervisor::process_start(pgid), recorded) {
            (Some((start, _)), Some(recorded)) => start != recorded,
            _ => false,
        };
        if !reused {
            tracing::warn!(
                pgid,
                "killing the process group of a step or check the previous agent left running"
            );
            kill_group(pgid);
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    /// Gone, or a zombie waiting for a reaper that this container may not have.
    fn dead(pid: i32) -> bool {
        crate::supervisor::process_start(pid).is_none_or(|(_, zombie)| zombie)
    }

    #[tokio::test]
    async fn what_a_program_leaves_in_the_background_dies_when_it_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = tmp.path().join("children");
        let launcher = Launcher {
            contain: true,
            registry: Some(registry.clone()),
            ..Default::default()
        };
        let output = crate::steps::run_program(
            tmp.path(),
            "sh",
            &["-c".into(), "sleep 30 >/dev/null 2>&1 & echo $!".into()],
            &Default::default(),
            Duration::from_secs(5),
            &launcher,
        )
        .await
        .unwrap();
        let background: i32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is sent, not yet delivered: give it a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !dead(background) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            dead(background),
            "the background sleep {background} survived"
        );
        assert_eq!(
            std::fs::read_dir(&registry).unwrap().count(),
            0,
            "record removed"
        );
    }

    #[test]
    fn orphans_recorded_by_a_dead_agent_are_killed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        // Recorded as run_program does, then forgotten as by an agent killed with -9.
        std::mem::forget(Group::record(orphan.id(), Some(tmp.path())));
        reap_orphans(tmp.path());
        assert!(
            orphan.wait().unwrap().code().is_none(),
            "killed by a signal"
        );
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
