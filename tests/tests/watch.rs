//! `flotilla watch`: a second `flotilla` process follows a run that another one drives, from
//! the run's events and its record only. Real binaries, real sample services, real nats-server.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_tests::{Fleet, NatsServer, ROLES, json_stdout, repo_root, wait_for};
use serde_json::Value;

/// The phases every migration goes through, in order.
const MIGRATION_PHASES: [&str; 5] = ["precheck", "backup", "apply", "restart", "validate"];

/// A running `flotilla watch` whose output lines are collected as they come.
struct Watcher {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn spawn(fleet: &Fleet, args: &[&str]) -> Self {
        let mut child = fleet.spawn_flotilla(args);
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    fn stderr_has(&self, text: &str) -> bool {
        self.stderr.lock().unwrap().iter().any(|l| l.contains(text))
    }

    /// Waits (bounded) for the watcher to exit; returns its exit code and its stdout lines.
    fn wait(mut self, timeout: Duration) -> (i32, Vec<String>) {
        let mut code = None;
        let waited = wait_for("flotilla watch to exit", timeout, || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        if waited.is_err() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "watch did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.stderr.lock().unwrap().join("\n")
            );
        }
        // The reader threads see end-of-file once the process is gone.
        std::thread::sleep(Duration::from_millis(100));
        let lines = self.stdout.lock().unwrap().clone();
        (code.unwrap(), lines)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON lines of `--output json`.
fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The phases `role`'s agent started, in the order watch printed them.
fn started_phases(events: &[Value], role: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "progress" && e["service"] == role && e["status"] == "started")
        .map(|e| e["phase"].as_str().unwrap().to_owned())
        .collect()
}

/// True when `needles` occur in `hay` in this order (not necessarily next to each other).
fn in_order(hay: &[String], needles: &[&str]) -> bool {
    let mut rest = hay.iter();
    needles.iter().all(|n| rest.any(|h| h == n))
}

#[test]
fn watch_follows_a_run_started_elsewhere_phase_by_phase_and_exits_with_it() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::start(nats.url(), &ROLES).unwrap();
    let watcher = Watcher::spawn(&fleet, &["watch", "--wait", "60s", "--output", "json"]);
    wait_for("watch to wait for a run", Duration::from_secs(20), || {
        watcher.stderr_has("waiting up to")
    })
    .unwrap();

    let plan = repo_root().join("deploy/demo/plan.toml");
    let out = fleet.flotilla(&["migrate", plan.to_str().unwrap(), "--output", "json"]);
    let report = json_stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{report:#}");
    let run_id = report["run_id"].as_str().unwrap();

    let (code, lines) = watcher.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let events = json_lines(&lines);
    assert_eq!(events[0]["type"], "run", "{:#}", events[0]);
    assert_eq!(events[0]["run_id"], run_id);
    for role in ROLES {
        let phases = started_phases(&events, role);
        assert!(
            in_order(&phases, &MIGRATION_PHASES),
            "{role}: phases {phases:?}"
        );
        // Finalize comes after validation: the run was followed to its very end.
        assert!(
            in_order(&phases, &["validate", "finalize"]),
            "{role}: {phases:?}"
        );
        let outcomes: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e["type"] == "result" && e["service"] == role)
            .map(|e| {
                (
                    e["command"].as_str().unwrap(),
                    e["outcome"].as_str().unwrap(),
                )
            })
            .filter(|(command, _)| *command != "inspect")
            .collect();
        assert_eq!(
            outcomes,
            [("migrate", "succeeded"), ("finalize", "finalized")],
            "{role}"
        );
    }
    let end = events.last().unwrap();
    assert_eq!(end["type"], "end", "{end:#}");
    assert_eq!(end["status"], "succeeded");
    assert_eq!(end["stage"], "done");
    assert_eq!(end["exit_code"], 0);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "wave" && e["status"] == "done"),
        "no wave finished in {events:#?}"
    );

    // A finished run named by a prefix of its ID: plain lines (stdout is not a terminal), the
    // same phases, the summary table, and the run's exit code.
    let out = fleet.flotilla(&["watch", &run_id[..13]]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("watching run {run_id}")), "{text}");
    for role in ROLES {
        let target = format!("{role}/a ");
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.ends_with(" started"))
            .filter_map(|l| l.split_once(&target))
            .map(|(_, rest)| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert!(
            in_order(&lines, &MIGRATION_PHASES),
            "{role}: {lines:?}\n{text}"
        );
        assert!(text.contains(&format!("{role}/a => succeeded")), "{text}");
    }
    assert!(
        text.contains("succeeded, 5 service(s) migrated and finalized"),
        "{text}"
    );
}

/// A `[[service]]` whose migration takes `sleep` seconds.
fn slow_service(name: &str, sleep: u32) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\n[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep {sleep}\"]\n"
    )
}

#[test]
fn watch_stays_with_a_run_through_a_coordinator_kill_and_its_resume() {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest", "training"];
    let fleet = Fleet::start(nats.url(), &roles).unwrap();
    let mut plan = "name = \"slow\"\ncommand_timeout = \"60s\"\n[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n".to_owned();
    for role in roles {
        plan.push_str(&slow_service(role, 1));
    }
    let plan = fleet.write_plan("slow.toml", &plan);
    let watcher = Watcher::spawn(&fleet, &["watch", "--wait", "60s", "--output", "json"]);
    wait_for("watch to wait for a run", Duration::from_secs(20), || {
        watcher.stderr_has("waiting up to")
    })
    .unwrap();
    let mut coordinator = fleet.spawn_flotilla(&["migrate", plan.to_str().unwrap()]);
    // Kill the coordinator once watch has seen wave 2 begin.
    wait_for("wave 2 to start", Duration::from_secs(30), || {
        watcher.stdout.lock().unwrap().iter().any(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|e| {
                e["type"] == "progress" && e["service"] != "inference" && e["phase"] == "apply"
            })
        })
    })
    .unwrap();
    coordinator.kill().unwrap(); // SIGKILL
    coordinator.wait().unwrap();
    let run = {
        let runs = json_stdout(&fleet.flotilla(&["runs", "--output", "json"]));
        runs[0]["run_id"].as_str().unwrap().to_owned()
    };
    wait_for("the agents to go idle", Duration::from_secs(30), || {
        fleet
            .agents()
            .is_ok_and(|a| a.iter().all(|a| a["state"] == "idle"))
    })
    .unwrap();
    let out = fleet.flotilla(&["resume", &run, "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:#}", json_stdout(&out));

    let (code, lines) = watcher.wait(Duration::from_secs(30));
    assert_eq!(code, 0, "{}", lines.join("\n"));
    let events = json_lines(&lines);
    for role in roles {
        let phases = started_phases(&events, role);
        assert!(in_order(&phases, &MIGRATION_PHASES), "{role}: {phases:?}");
        assert!(
            events.iter().any(|e| e["type"] == "result"
                && e["service"] == role
                && e["outcome"] == "finalized"),
            "{role} was not finalized in {lines:#?}"
        );
    }
    let end = events.last().unwrap();
    assert_eq!(end["type"], "end", "{end:#}");
    assert_eq!(end["run_id"], run.as_str());
    assert_eq!(end["status"], "succeeded");
}
