//! The working set of the service's own cgroup (v2), as cAdvisor and `kubectl top` report it:
//! `memory.current` less the inactive file cache the kernel reclaims first.

use std::path::Path;

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The working set of the cgroup of process `pid`, when that cgroup is the service's own: not the
/// root, not the agent's, and holding no process but `members` (the service's processes and the
/// supervisor above them). A cgroup shared with anything else would charge it to the service.
pub(super) fn working_set(pid: u32, members: &[u32]) -> Option<u64> {
    let service = v2_path(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)?;
    let agent = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| v2_path(&text));
    if service == "/" || agent.as_deref() == Some(service.as_str()) {
        return None;
    }
    read_working_set(
        &Path::new(CGROUP_ROOT).join(service.trim_start_matches('/')),
        members,
    )
}

/// The cgroup v2 path (the `0::` line) of a `/proc/<pid>/cgroup` text.
fn v2_path(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// `memory.current` less `inactive_file` of the cgroup at `dir`, when every process of it is one
/// of `members`.
fn read_working_set(dir: &Path, members: &[u32]) -> Option<u64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let procs = read("cgroup.procs")?;
    let mut procs = procs.lines().map(|l| l.trim().parse::<u32>().ok());
    if !procs.all(|p| p.is_some_and(|p| members.contains(&p))) {
        return None;
    }
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    let inactive_file = read("memory.stat")?
        .lines()
        .find_map(|line| line.strip_prefix("inactive_file "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(current.saturating_sub(inactive_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_path_among_v1_lines() {
        let text = "4:memory:/process_api/abc\n1:cpu:/\n0::/system.slice/ingest.service\n";
        assert_eq!(
            v2_path(text).as_deref(),
            Some("/system.slice/ingest.service")
        );
        assert_eq!(v2_path("4:memory:/x\n"), None);
    }

    fn cgroup(procs: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.procs"), procs).unwrap();
        std::fs::write(dir.path().join("memory.current"), "10485760\n").unwrap();
        std::fs::write(
            dir.path().join("memory.stat"),
            "anon 6291456\nfile 4194304\nactive_file 1048576\ninactive_file 3145728\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn the_working_set_leaves_out_inactive_file_cache() {
        let dir = cgroup("41\n42\n");
        assert_eq!(read_working_set(dir.path(), &[40, 41, 42]), Some(7340032));
    }

    #[test]
    fn a_cgroup_shared_with_other_processes_is_not_the_services() {
        let dir = cgroup("41\n42\n99\n");
        assert_eq!(read_working_set(dir.path(), &[41, 42]), None);
    }

    #[test]
    fn a_cgroup_v1_hierarchy_has_no_working_set() {
        let dir = cgroup("41\n");
        std::fs::remove_file(dir.path().join("memory.current")).unwrap();
        assert_eq!(read_working_set(dir.path(), &[41]), None);
    }
}
