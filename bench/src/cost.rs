//! What a run asks of the broker, read from nats-server's monitoring endpoint before and after
//! it: messages in and out, JetStream API calls, messages stored per stream, consumers alive,
//! and (optionally, under strace) fsyncs. Divided by the agents, this is the cost model of
//! `docs/performance.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use flotilla_testkit::monitoring::get_json_within;

/// How long a busy server may take to answer `/jsz` with every stream's details.
const MONITOR_TIMEOUT: Duration = Duration::from_secs(20);

/// The broker's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    in_msgs: u64,
    out_msgs: u64,
    api_calls: u64,
    consumers: u64,
    /// Each stream's last sequence: messages ever stored, including those a work queue removed.
    stored: BTreeMap<String, u64>,
}

impl Snapshot {
    /// Reads `/varz` and `/jsz` on `port`.
    pub fn take(port: u16) -> anyhow::Result<Self> {
        let varz = get_json_within(port, "/varz", MONITOR_TIMEOUT).context("reading /varz")?;
        let jsz =
            get_json_within(port, "/jsz?streams=true", MONITOR_TIMEOUT).context("reading /jsz")?;
        let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        let mut stored = BTreeMap::new();
        for account in jsz["account_details"].as_array().into_iter().flatten() {
            for stream in account["stream_detail"].as_array().into_iter().flatten() {
                let name = stream["name"].as_str().unwrap_or("?").to_owned();
                stored.insert(name, number(&stream["state"]["last_seq"]));
            }
        }
        Ok(Self {
            in_msgs: number(&varz["in_msgs"]),
            out_msgs: number(&varz["out_msgs"]),
            api_calls: number(&jsz["api"]["total"]),
            consumers: number(&jsz["consumers"]),
            stored,
        })
    }
}

/// What one run cost the broker, per agent.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub in_msgs: f64,
    pub out_msgs: f64,
    pub api_calls: f64,
    /// Consumers alive after the run, per agent (server state that stays).
    pub consumers: f64,
    pub stored: BTreeMap<String, f64>,
    /// nats-server's fsync-family calls, when counted.
    pub fsyncs: Option<f64>,
}

impl Cost {
    /// The difference `after - before`, divided by `agents`.
    pub fn between(before: &Snapshot, after: &Snapshot, agents: usize) -> Self {
        let n = agents.max(1) as f64;
        let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n;
        let stored = after
            .stored
            .iter()
            .map(|(name, &last)| {
                let was = before.stored.get(name).copied().unwrap_or(0);
                (name.clone(), per(last, was))
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        Self {
            in_msgs: per(after.in_msgs, before.in_msgs),
            out_msgs: per(after.out_msgs, before.out_msgs),
            api_calls: per(after.api_calls, before.api_calls),
            consumers: after.consumers as f64 / n,
            stored,
            fsyncs: None,
        }
    }

    /// Stored messages per agent, all streams together.
    pub fn stored_total(&self) -> f64 {
        self.stored.values().sum()
    }

    /// The stored messages as `STREAM n, …`.
    pub fn stored_by_stream(&self) -> String {
        self.stored
            .iter()
            .map(|(name, v)| format!("{name} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// strace counting one process's fsync-family calls, on every thread, until [`Fsyncs::stop`].
pub struct Fsyncs {
    child: Child,
    output: PathBuf,
}

impl Fsyncs {
    /// Attaches to `pid` and returns once every thread of it is traced.
    pub fn attach(pid: &str, dir: &Path) -> anyhow::Result<Self> {
        let output = dir.join(format!("strace-{pid}.txt"));
        let child = Command::new("strace")
            .args(["-f", "-qq", "-c", "-e", "trace=fsync,fdatasync,syncfs"])
            .arg("-o")
            .arg(&output)
            .args(["-p", pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting strace (apt install strace)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all_threads_traced(pid) {
            if Instant::now() > deadline {
                bail!("strace did not attach to every thread of {pid} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self { child, output })
    }

    /// Detaches and returns the number of calls counted.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).context("strace pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)?;
        self.child.wait()?;
        let summary = std::fs::read_to_string(&self.output)?;
        Ok(calls_in(&summary))
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_threads_traced(pid: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .map(|v| v.trim() != "0")
            })
            .unwrap_or(false)
    })
}

/// The total of the `calls` column of an `strace -c` summary.
fn calls_in(summary: &str) -> u64 {
    summary
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            if !matches!(name, "fsync" | "fdatasync" | "syncfs") {
                return None;
            }
            fields.get(3)?.parse::<u64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_strace_summary_is_summed_over_the_fsync_family() {
        let summary = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 90.00    0.090000         100       900           fdatasync
 10.00    0.010000         100       100           fsync
------ ----------- ----------- --------- --------- ----------------
100.00    0.100000         100      1000           total
";
        assert_eq!(calls_in(summary), 1000);
    }
}
