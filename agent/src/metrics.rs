//! Resident memory of the service's process tree, for the memory regression gate.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Resident bytes of `pid` and all its descendants, or `None` when it is gone.
pub fn tree_rss(pid: u32) -> Option<u64> {
    let mut system = System::new().ok()?;
    system.refresh_processes_specifics(
        ProcessesToUpdate::All,
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    let root = Pid::from_u32(pid);
    system.process(root)?;
    let total = system
        .processes()
        .values()
        .filter(|p| descends_from(&system, p.pid(), root))
        .map(|p| p.memory())
        .sum();
    Some(total)
}

fn descends_from(system: &System, mut pid: Pid, root: Pid) -> bool {
    for _ in 0..64 {
        if pid == root {
            return true;
        }
        match system.process(pid).and_then(|p| p.parent()) {
            Some(parent) => pid = parent,
            None => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_this_process() {
        let rss = super::tree_rss(std::process::id()).unwrap();
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
