//! `flotilla watch` on a real terminal (tmux, 120×40) over a run of 200 agents: the view fits
//! the terminal, its counters add up, the rows that do not fit are counted in a `+N more` line,
//! and a failed service is shown first. The agents are the benchmark's fleet simulator
//! (`flotilla-bench sim-worker`: the real agent library, simulated services).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_tests::{Fleet, NatsServer, Plan, Service, binary, wait_for};

/// Agents in the run.
const AGENTS: usize = 200;
/// The terminal's size.
const WIDTH: u16 = 120;
const HEIGHT: u16 = 40;
/// The agent whose migration is made to fail.
const FAILING: &str = "i00150";

/// A tmux server of its own (its socket in a temp dir), killed on drop.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts `command` in a detached session of `WIDTH`×`HEIGHT`.
    fn start(dir: &Path, command: &str) -> Self {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
        };
        let size = [WIDTH.to_string(), HEIGHT.to_string()];
        let status = tmux
            .command(&["new-session", "-d", "-x", &size[0], "-y", &size[1], command])
            .status()
            .expect("tmux runs (apt-get install tmux; scripts/prerequisites.sh does)");
        assert!(status.success(), "tmux new-session failed");
        tmux
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("tmux");
        command
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null");
        command.args(args);
        command
    }

    /// The visible screen, line by line.
    fn screen(&self) -> Vec<String> {
        self.capture(&["capture-pane", "-p"])
    }

    /// The scrollback and the screen.
    fn history(&self) -> Vec<String> {
        self.capture(&["capture-pane", "-p", "-S", "-"])
    }

    fn capture(&self, args: &[&str]) -> Vec<String> {
        let out = self.command(args).output().expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]).status();
    }
}

/// The simulator process; closing its stdin stops its agents.
struct Simulator(Child);

impl Drop for Simulator {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let stopped = wait_for("the simulator to stop", Duration::from_secs(30), || {
            self.0.try_wait().ok().flatten().is_some()
        });
        if stopped.is_err() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The counts of a counters line, `200 service(s): 3 succeeded, 0 failed, 20 in flight, …`:
/// succeeded, failed, in flight, pending, rolled back.
fn counters(line: &str) -> Option<[usize; 5]> {
    let rest = line
        .trim()
        .strip_prefix(&format!("{AGENTS} service(s): "))?;
    let mut counts = [0; 5];
    let names = ["succeeded", "failed", "in flight", "pending", "rolled back"];
    let parts: Vec<&str> = rest.split(", ").collect();
    if parts.len() != names.len() {
        return None;
    }
    for ((part, name), count) in parts.iter().zip(names).zip(&mut counts) {
        *count = part.strip_suffix(name)?.trim().parse().ok()?;
    }
    Some(counts)
}

/// The `+N more (…)` line's N.
fn more(line: &str) -> Option<usize> {
    let rest = line.trim().strip_prefix('+')?;
    rest.split_once(" more (")?.0.parse().ok()
}

/// Where the counters line and the `+N more` line of the view are in `lines` (the last view).
fn view(lines: &[String]) -> Option<(usize, [usize; 5], usize, usize)> {
    let (at, counts) = lines
        .iter()
        .enumerate()
        .rev()
        .find_map(|(i, l)| counters(l).map(|c| (i, c)))?;
    let (more_at, hidden) = lines[at..]
        .iter()
        .enumerate()
        .find_map(|(i, l)| more(l).map(|n| (at + i, n)))?;
    Some((at, counts, more_at, hidden))
}

fn start_simulator(fleet: &Fleet, nats_url: &str) -> Simulator {
    let dir = fleet.dir().join("sim");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(fleet.dir().join("sim.log")).unwrap();
    let child = Command::new(binary("flotilla-bench"))
        .args(["sim-worker", "--nats", nats_url, "--service", "noop"])
        .args(["--first", "1", "--count", &AGENTS.to_string()])
        .args(["--trusted", &fleet.signing_key().public_key_text()])
        .arg("--dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .env("OTEL_SDK_DISABLED", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("flotilla-bench starts (cargo build -p flotilla-bench)");
    Simulator(child)
}

#[test]
fn watch_fits_a_200_agent_run_in_the_terminal_with_counters_and_failures_first() {
    let nats = NatsServer::start().unwrap();
    let fleet = Fleet::empty(nats.url(), Vec::new()).unwrap();
    let setup = fleet.flotilla(&["setup"]);
    assert!(setup.status.success(), "{setup:?}");
    let _simulator = start_simulator(&fleet, nats.url());
    wait_for("200 agents to answer", Duration::from_secs(180), || {
        fleet.agents().is_ok_and(|a| a.len() == AGENTS)
    })
    .unwrap();
    // A directory where the plan writes a file: that agent's apply fails, it rolls back.
    std::fs::create_dir_all(
        fleet
            .dir()
            .join("sim/root")
            .join(FAILING)
            .join("config/bench.toml"),
    )
    .unwrap();

    let command = format!(
        "env NO_COLOR=1 FLOTILLA_NATS__URL={} OTEL_SDK_DISABLED=true {} watch --wait 120s; \
         echo \"watch exited $?\"; exec cat",
        nats.url(),
        binary("flotilla").display()
    );
    let tmux = Tmux::start(fleet.dir(), &command);
    wait_for("watch to wait for a run", Duration::from_secs(20), || {
        tmux.screen().iter().any(|l| l.contains("waiting up to"))
    })
    .unwrap();

    let plan = Plan::new("watch-200")
        .set("command_timeout", "600s")
        .set("on_failure", "continue")
        .raw("failure_budget = \"100%\"")
        // A few at a time: 200 health checks at once on a loaded machine time out.
        .raw("max_parallel = 25")
        .service(Service::new("noop"))
        .table("[gates]\nstartup_slack_ms = 60000\n")
        .table("[[step]]\naction = \"write_file\"\npath = \"config/bench.toml\"\ncontent = \"noop = true\\n\"\n");
    let plan = fleet.write_plan("plan.toml", &plan.to_string());
    let mut migrate = fleet
        .flotilla_command(&[
            "migrate",
            plan.to_str().unwrap(),
            "--no-verify",
            "-o",
            "json",
        ])
        .env("OTEL_SDK_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Mid-run: the whole view is on the screen, its counters add up, the rest is counted. The
    // screen is read while watch writes it, so one read may catch a frame half drawn: the wait
    // is for a whole one, and times out (with the last read) if none ever adds up.
    let mut seen = Vec::new();
    wait_for(
        "a whole view of the running run whose rows and counters add up to 200",
        Duration::from_secs(120),
        || {
            seen = tmux.screen();
            view(&seen).is_some_and(|(at, c, more_at, hidden)| {
                c[2] + c[3] > 0
                    && c.iter().sum::<usize>() == AGENTS
                    // The wave's line sits between the counters and the rows.
                    && (more_at - at).checked_sub(2).is_some_and(|rows| rows + hidden == AGENTS)
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}:\n{}", seen.join("\n")));
    // Kept for people (docs/operations.md shows one) under target/tmp.
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("watch-200.txt");
    let _ = std::fs::write(keep, seen.join("\n"));
    let (at, ..) = view(&seen).unwrap();
    assert!(
        seen[at - 1].contains("watch-200: running"),
        "the header is on screen:\n{}",
        seen.join("\n")
    );

    let status = wait_for("the run to end", Duration::from_secs(300), || {
        migrate.try_wait().unwrap().is_some()
    });
    status.unwrap();
    let mut history = Vec::new();
    wait_for("watch to exit", Duration::from_secs(60), || {
        history = tmux.history();
        history.iter().any(|l| l.starts_with("watch exited"))
    })
    .unwrap_or_else(|e| panic!("{e}:\n{}", history.join("\n")));
    // A service failed: exit 1, as `migrate`'s.
    let migrate_code = migrate.wait().unwrap().code();
    assert_eq!(migrate_code, Some(1));
    assert!(
        history.iter().any(|l| l == "watch exited 1"),
        "{}",
        history.join("\n")
    );

    // The last view: every service accounted for, the failed one first.
    let end = history
        .iter()
        .position(|l| l.starts_with("run ") && l.contains("watch-200"))
        .unwrap_or(history.len());
    let last = &history[..end];
    let (at, counts, more_at, hidden) =
        view(last).unwrap_or_else(|| panic!("no final view:\n{}", last.join("\n")));
    let shown = &last[at + 2..more_at];
    let [succeeded, failed, in_flight, pending, rolled_back] = counts;
    assert_eq!(succeeded + failed, AGENTS, "{}", last.join("\n"));
    assert_eq!([in_flight, pending, rolled_back], [0, 0, 0]);
    assert_eq!(hidden, AGENTS - shown.len());
    // Failures first: every failed row (this one is certain; a health check that timed out on
    // a loaded machine makes more) comes before any succeeded one.
    let failed_rows: Vec<&String> = shown
        .iter()
        .take_while(|l| !(l.contains(" succeeded") || l.contains(" finalized")))
        .collect();
    assert_eq!(
        failed_rows.len(),
        failed.min(shown.len()),
        "{}",
        shown.join("\n")
    );
    assert!(
        failed_rows
            .iter()
            .any(|l| l.contains(&format!("noop/{FAILING}"))),
        "the failure first:\n{}",
        shown.join("\n")
    );
    if failed < shown.len() {
        assert!(
            last[more_at].contains(&format!("({hidden} succeeded)")),
            "{}",
            last[more_at]
        );
    }
}
