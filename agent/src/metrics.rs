//! Resident memory of the service, for the memory regression gate.
//!
//! Linux lists every thread of a process as a task carrying the whole process's resident set, so
//! a sum over tasks counts a process once per thread and moves when a thread pool grows. The
//! figure here counts each process once, from the best source there is:
//! 1. the working set of the service's own cgroup (v2), when it has one;
//! 2. for a single process, its resident set size (`VmRSS`, what `ps` and `top` show), which
//!    counts nothing twice and does not move when a neighbour mapping the same files comes or goes;
//! 3. for several processes, the sum of their proportional set sizes, so that the pages they
//!    share are split among them instead of counted in each;
//! 4. the sum of their resident set sizes when PSS cannot be read.

mod cgroup;

use std::collections::HashMap;

use flotilla_schemas::MemorySource;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// A memory figure and where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    pub source: MemorySource,
}

/// The service's processes (not threads): the root first, then its descendants, and the root's
/// ancestors apart.
struct ProcessTree {
    processes: Vec<(Pid, u64)>,
    ancestors: Vec<Pid>,
}

/// The memory of the service whose main process is `pid`, or `None` when it is gone. With `like`,
/// only that source is read (a figure after the change compares with a baseline from the same
/// source, or not at all); without, the best one available.
pub fn service_memory(pid: u32, like: Option<MemorySource>) -> Option<Memory> {
    let tree = ProcessTree::of(Pid::from_u32(pid))?;
    let preferred = [
        MemorySource::Cgroup,
        if tree.processes.len() == 1 {
            MemorySource::Rss
        } else {
            MemorySource::Pss
        },
        MemorySource::Rss,
    ];
    let sources = match like {
        Some(source) => vec![source],
        None => preferred.to_vec(),
    };
    sources.into_iter().find_map(|source| {
        let bytes = match source {
            MemorySource::Cgroup => cgroup::working_set(pid, &tree.members()),
            MemorySource::Pss => tree.pss(),
            MemorySource::Rss => Some(tree.rss()),
            MemorySource::Other => None,
        }?;
        Some(Memory { bytes, source })
    })
}

// === impl ProcessTree ===

impl ProcessTree {
    fn of(root: Pid) -> Option<Self> {
        let mut system = System::new().ok()?;
        // Processes only: without tasks, sysinfo lists no thread as a process of its own.
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().without_tasks().with_memory(),
        );
        let root_process = system.process(root)?;
        let mut children: HashMap<Pid, Vec<Pid>> = HashMap::new();
        for p in system.processes().values() {
            if p.thread_kind().is_some() {
                continue;
            }
            if let Some(parent) = p.parent() {
                children.entry(parent).or_default().push(p.pid());
            }
        }
        let mut processes = vec![(root, root_process.memory())];
        let mut next = 0;
        while let Some(&(pid, _)) = processes.get(next) {
            next += 1;
            for child in children.get(&pid).into_iter().flatten() {
                if let Some(p) = system.process(*child) {
                    processes.push((*child, p.memory()));
                }
            }
        }
        let mut ancestors = Vec::new();
        let mut at = root_process.parent();
        while let Some(pid) = at.filter(|_| ancestors.len() < 64) {
            ancestors.push(pid);
            at = system.process(pid).and_then(|p| p.parent());
        }
        Some(Self {
            processes,
            ancestors,
        })
    }

    /// Every PID of the tree and of the root's ancestors.
    fn members(&self) -> Vec<u32> {
        let tree = self.processes.iter().map(|(pid, _)| *pid);
        tree.chain(self.ancestors.iter().copied())
            .map(Pid::as_u32)
            .collect()
    }

    fn rss(&self) -> u64 {
        self.processes.iter().map(|(_, rss)| rss).sum()
    }

    /// The sum of the processes' PSS; `None` when the root's cannot be read. A descendant that
    /// exited since the tree was listed counts for nothing.
    fn pss(&self) -> Option<u64> {
        let (root, rest) = self.processes.split_first()?;
        let root = pss(root.0)?;
        Some(root + rest.iter().filter_map(|(pid, _)| pss(*pid)).sum::<u64>())
    }
}

/// The proportional set size of process `pid`, from `/proc/<pid>/smaps_rollup`.
fn pss(pid: Pid) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    kib_field(&text, "Pss:")
}

/// The value of a `Name:   123 kB` line, in bytes.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

#[cfg(test)]
mod tests;
