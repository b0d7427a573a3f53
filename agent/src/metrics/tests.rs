use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::*;

/// `VmRSS` of process `pid`, in bytes.
fn vm_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    kib_field(&status, "VmRSS:").unwrap()
}

/// Kills and reaps the child on drop, whatever the test's outcome.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `measure` until it holds a tree of `processes` processes (a spawned shell needs a
/// moment to start its children).
fn tree_of(pid: u32, processes: usize) -> ProcessTree {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tree = ProcessTree::of(Pid::from_u32(pid)).expect("the process runs");
        if tree.processes.len() == processes || Instant::now() > deadline {
            assert_eq!(tree.processes.len(), processes, "{:?}", tree.processes);
            return tree;
        }
        std::thread::yield_now();
    }
}

#[test]
fn threads_are_not_counted_as_processes() {
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let parked = std::sync::Arc::new(std::sync::Mutex::new(parked));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let parked = parked.clone();
            std::thread::spawn(move || {
                let _ = parked
                    .lock()
                    .map(|r| r.recv_timeout(Duration::from_secs(30)));
            })
        })
        .collect();
    let pid = std::process::id();
    let tasks = std::fs::read_dir("/proc/self/task").unwrap().count();
    assert!(tasks > 16, "{tasks} tasks");

    // The test's own allocations move VmRSS while the tree is read (by ~1 MiB in a process of
    // ~10 MiB, as under nextest): bracket the reading.
    let rss_before = vm_rss(pid);
    let tree = ProcessTree::of(Pid::from_u32(pid)).unwrap();
    let rss_after = vm_rss(pid);
    let thread_ids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|tid| *tid != pid)
        .collect();
    assert!(
        tree.processes
            .iter()
            .all(|(p, _)| !thread_ids.contains(&p.as_u32())),
        "a thread was listed as a process"
    );
    let (low, high) = (rss_before.min(rss_after), rss_before.max(rss_after));
    let root = tree.processes[0].1;
    assert!(
        root >= low - low / 10 && root <= high + high / 10,
        "{root} vs VmRSS {rss_before}..{rss_after}"
    );
    let rss = high;
    // Children that other tests spawn meanwhile are small; one count per thread would be 17x.
    let memory = service_memory(pid, None).unwrap();
    assert!(memory.bytes < 3 * rss, "{memory:?} vs VmRSS {rss}");

    drop(stop);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn one_process_is_its_resident_set() {
    let child = Reaped(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = child.0.id();
    tree_of(pid, 1);
    let memory = service_memory(pid, None).unwrap();
    assert_eq!(memory.source, MemorySource::Rss);
    let rss = vm_rss(pid);
    assert!(memory.bytes.abs_diff(rss) < rss / 10, "{memory:?} vs {rss}");
}

#[test]
fn several_processes_split_what_they_share() {
    let child = Reaped(
        Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let tree = tree_of(pid, 3);
    let memory = service_memory(pid, None).unwrap();
    assert_eq!(memory.source, MemorySource::Pss);
    let rss: u64 = tree.processes.iter().map(|(p, _)| vm_rss(p.as_u32())).sum();
    assert!(
        memory.bytes > 0 && memory.bytes < rss,
        "{memory:?} vs {rss}"
    );
    // Asked for the baseline's source, it reads that one.
    let like_rss = service_memory(pid, Some(MemorySource::Rss)).unwrap();
    assert_eq!(like_rss.source, MemorySource::Rss);
    assert!(
        like_rss.bytes.abs_diff(rss) < rss / 10,
        "{like_rss:?} vs {rss}"
    );
}

#[test]
fn a_gone_process_has_no_memory() {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    assert_eq!(service_memory(pid, None), None);
}

#[test]
fn reads_kib_fields() {
    let text = "Rss:   2048 kB\nPss:   1024 kB\n";
    assert_eq!(kib_field(text, "Pss:"), Some(1024 * 1024));
    assert_eq!(kib_field(text, "Swap:"), None);
}
