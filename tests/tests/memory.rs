//! The memory gate on a service we did not shape for Flotilla (Python's standard-library HTTP
//! server, `tests/fixtures/memory_service.py`): its figure is the service's real resident memory,
//! whatever its thread count, and a real growth trips the gate.

use flotilla_tests::{Fleet, NatsServer, free_port, http_get, json_stdout, repo_root};
use serde_json::Value;

const SERVICE: &str = "quotes";

/// The Python service with `threads` idle threads and `ballast_mb` of touched memory.
fn start(nats: &NatsServer, threads: u32, ballast_mb: u32) -> (Fleet, u16) {
    let port = free_port();
    let script = repo_root().join("tests/fixtures/memory_service.py");
    let conf = format!("port={port}\nthreads={threads}\nballast_mb={ballast_mb}\n");
    let fleet = Fleet::start_foreign(
        nats.url(),
        SERVICE,
        &["python3", script.to_str().unwrap()],
        port,
        &[("service.conf", &conf)],
    )
    .unwrap();
    (fleet, port)
}

/// A plan that changes one line of the service's configuration (then the agent restarts it).
fn plan(fleet: &Fleet, find: &str, replace: &str) -> String {
    let plan = format!(
        "name = \"memory\"\n[[service]]\nname = \"{SERVICE}\"\n[[service.step]]\n\
         action = \"replace_text\"\npath = \"service.conf\"\nfind = \"{find}\"\nreplace = \"{replace}\"\n"
    );
    let path = fleet.write_plan("memory.toml", &plan);
    path.to_str().unwrap().to_owned()
}

/// What the service says about itself on /health.
fn health(port: u16) -> Value {
    let (status, body) = http_get(port, "/health").expect("the service answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `Name:` of `/proc/<pid>/status`, as a number (`VmRSS` in bytes).
fn proc_status(pid: u64, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("{name} in {status}"));
    let number: u64 = value.split_whitespace().next().unwrap().parse().unwrap();
    if value.trim_end().ends_with("kB") {
        number * 1024
    } else {
        number
    }
}

/// The service's memory figures, before and after, from a report's service entry.
fn figures(service: &Value) -> (u64, u64) {
    let m = &service["measurements"];
    (
        m["rss_bytes_before"].as_u64().unwrap(),
        m["rss_bytes_after"].as_u64().unwrap(),
    )
}

fn assert_near_vm_rss(what: &str, figure: u64, vm_rss: u64) {
    assert!(
        figure.abs_diff(vm_rss) * 10 <= vm_rss,
        "{what}: {figure} is not within 10 % of VmRSS {vm_rss}"
    );
}

fn only_service(report: &Value) -> &Value {
    let services = report["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{report:#}");
    &services[0]
}

#[test]
fn a_thread_pool_that_grows_leaves_the_memory_figure_alone() {
    let nats = NatsServer::start().unwrap();
    let (fleet, port) = start(&nats, 2, 0);
    let before = health(port);
    let pid_before = before["pid"].as_u64().unwrap();
    let threads_before = proc_status(pid_before, "Threads:");
    let rss_before = proc_status(pid_before, "VmRSS:");

    let plan = plan(&fleet, "threads=2", "threads=16");
    let out = fleet.flotilla(&["migrate", &plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");

    let after = health(port);
    let pid_after = after["pid"].as_u64().unwrap();
    assert_ne!(pid_before, pid_after, "the migration restarts the service");
    let threads_after = proc_status(pid_after, "Threads:");
    assert_eq!((threads_before, threads_after), (3, 17), "{before} {after}");
    let rss_after = proc_status(pid_after, "VmRSS:");

    let service = only_service(&report);
    assert_eq!(service["status"], "succeeded", "{service:#}");
    assert_eq!(
        service["measurements"]["memory_source"], "rss",
        "{service:#}"
    );
    let (figure_before, figure_after) = figures(service);
    assert_near_vm_rss("before", figure_before, rss_before);
    assert_near_vm_rss("after", figure_after, rss_after);
    let gate = service["gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["gate"] == "memory_bytes")
        .unwrap_or_else(|| panic!("no memory gate: {service:#}"));
    assert_eq!(gate["passed"], true, "{service:#}");
}

#[test]
fn thirty_percent_more_memory_trips_the_gate_and_rolls_back() {
    let nats = NatsServer::start().unwrap();
    // About 21 MiB of interpreter and 48 MiB of ballast; 69 MiB after is 30 % more.
    let (fleet, port) = start(&nats, 2, 48);
    let pid_before = health(port)["pid"].as_u64().unwrap();
    let rss_before = proc_status(pid_before, "VmRSS:");

    let plan = plan(&fleet, "ballast_mb=48", "ballast_mb=69");
    let out = fleet.flotilla(&["migrate", &plan, "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{report:#}");

    let service = only_service(&report);
    assert_eq!(service["status"], "rolled_back", "{service:#}");
    let reason = service["reason"].as_str().unwrap();
    assert!(
        reason.contains("memory_bytes regression") && reason.contains("(rss)"),
        "{reason}"
    );
    let (figure_before, figure_after) = figures(service);
    assert_near_vm_rss("before", figure_before, rss_before);
    assert!(
        figure_after as f64 >= 1.25 * figure_before as f64,
        "{figure_before} -> {figure_after}"
    );
    // Rolled back: the old configuration, and the service runs it again.
    let conf = std::fs::read_to_string(fleet.root(SERVICE).join("service.conf")).unwrap();
    assert!(conf.contains("ballast_mb=48"), "{conf}");
    assert_eq!(health(port)["ballast_mb"], 48);
}
