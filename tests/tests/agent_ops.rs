//! The agent's operations endpoint (`[http]`) and its systemd notifications, on real agents:
//! `/readyz` follows the NATS connection and the command subscription, `/metrics` counts a real
//! migration and is scraped by a real Prometheus, the endpoint is off by default and on loopback
//! unless told otherwise, and READY=1 reaches a real notify socket once the agent is connected.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use flotilla_tests::{
    Fleet, NatsServer, Prometheus, demo_plan_text, free_port, http_get, wait_for,
};

const ROLE: &str = "inference";

/// The agent's environment that turns the endpoint on at `listen`.
fn listen_env(listen: &str) -> Vec<(String, String)> {
    vec![("FLOTILLA_HTTP__LISTEN".to_owned(), listen.to_owned())]
}

/// `/readyz`'s status and body, once the endpoint answers at all.
fn ready(port: u16) -> Option<(u16, String)> {
    http_get(port, "/readyz")
}

/// The value of one sample line of the exposition (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn metrics(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("/metrics answers");
    assert_eq!(status, 200, "{body}");
    body
}

/// `flotilla-agent probe` of the agent's `/readyz` (what the compose healthcheck runs): its exit
/// code, and its stdout then stderr.
fn probe(port: u16) -> (Option<i32>, String) {
    let out = std::process::Command::new(flotilla_tests::binary("flotilla-agent"))
        .args(["probe", &format!("http://127.0.0.1:{port}/readyz")])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("flotilla-agent runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// The TCP addresses process `pid` listens on (its sockets' inodes, found in /proc/net/tcp*).
fn listening(pid: u32) -> Vec<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    Some(
                        target
                            .strip_prefix("socket:[")?
                            .strip_suffix(']')?
                            .to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A: LISTEN; the address is little-endian hex, the port big-endian.
            if fields.get(3) != Some(&"0A")
                || !inodes.iter().any(|i| Some(&i.as_str()) == fields.get(9))
            {
                return None;
            }
            let (ip, port) = fields[1].split_once(':')?;
            let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        })
        .collect()
}

/// Started before its NATS server is up, the agent is alive but not ready, and says why; once
/// the server is up it is connected but still not ready until the streams exist and it has
/// subscribed; then `/readyz` answers 200.
#[test]
fn readyz_is_503_until_the_agent_is_connected_and_subscribed() {
    let mut nats = NatsServer::start().unwrap();
    nats.kill();
    let http = free_port();
    let mut fleet = Fleet::empty(nats.url(), Vec::new()).unwrap();
    fleet
        .add_and_start(&[ROLE], &|_| listen_env(&format!("127.0.0.1:{http}")))
        .unwrap();

    wait_for("/readyz to answer", Duration::from_secs(30), || {
        ready(http).is_some()
    })
    .unwrap();
    let (status, body) = ready(http).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not connected to NATS"), "{body}");
    assert_eq!(http_get(http, "/healthz").unwrap().0, 200);
    let (code, said) = probe(http);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("503") && said.contains("not connected to NATS"),
        "{said}"
    );
    assert_eq!(
        sample(&metrics(http), "flotilla_agent_nats_connected"),
        Some(0.0)
    );

    nats.restart().unwrap();
    let mut last = None;
    wait_for("the agent to connect", Duration::from_secs(30), || {
        last = ready(http);
        last.as_ref()
            .is_some_and(|(_, body)| body.contains("not subscribed"))
    })
    .unwrap_or_else(|e| panic!("{e}: last answer {last:?}"));
    assert_eq!(last.as_ref().unwrap().0, 503);
    assert_eq!(
        sample(&metrics(http), "flotilla_agent_nats_connected"),
        Some(1.0)
    );

    let out = fleet.flotilla(&["setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("/readyz to answer 200", Duration::from_secs(30), || {
        last = ready(http);
        last.as_ref().is_some_and(|(status, _)| *status == 200)
    })
    .unwrap_or_else(|e| panic!("{e}: last answer {last:?}"));
    assert_eq!(sample(&metrics(http), "flotilla_agent_ready"), Some(1.0));
    assert_eq!(probe(http), (Some(0), "ready\n".to_owned()));

    // The server goes away: the agent is no longer ready, and says so.
    nats.kill();
    wait_for(
        "/readyz to answer 503 again",
        Duration::from_secs(30),
        || {
            last = ready(http);
            last.as_ref()
                .is_some_and(|(status, body)| *status == 503 && body.contains("disconnected"))
        },
    )
    .unwrap_or_else(|e| panic!("{e}: last answer {last:?}"));
}

/// A migration shows in the metrics: the migrate/succeeded counter goes from 0 to 1, each phase
/// is observed once, the backup's bytes and the journal's size are there. No run or command ID
/// and no secret is in the exposition. A real Prometheus scraping the agent sees the same.
#[test]
fn metrics_count_a_migration_and_prometheus_scrapes_them() {
    let nats = NatsServer::start().unwrap();
    let http = free_port();
    let target = format!("127.0.0.1:{http}");
    let fleet =
        Fleet::start_with(nats.url(), &[ROLE], &|_| listen_env(&target), Vec::new()).unwrap();
    let succeeded = "flotilla_agent_commands_total{kind=\"migrate\",outcome=\"succeeded\"}";
    let before = metrics(http);
    assert_eq!(sample(&before, succeeded), Some(0.0), "{before}");
    assert!(before.contains("flotilla_agent_build_info{"), "{before}");

    let (code, report) = fleet.migrate(demo_plan_text(&[ROLE]));
    assert_eq!(code, Some(0), "{report:#}");
    let after = metrics(http);
    assert_eq!(sample(&after, succeeded), Some(1.0), "{after}");
    for phase in ["precheck", "backup", "apply", "restart", "validate"] {
        let count = format!(
            "flotilla_agent_phase_duration_seconds_count{{phase=\"{phase}\",status=\"succeeded\"}}"
        );
        assert_eq!(sample(&after, &count), Some(1.0), "{count} in\n{after}");
    }
    assert!(
        sample(&after, "flotilla_agent_backup_bytes_total").unwrap() > 0.0,
        "{after}"
    );
    assert!(
        sample(&after, "flotilla_agent_journal_size_bytes").unwrap() > 0.0,
        "{after}"
    );
    assert!(sample(&after, "flotilla_agent_last_command_timestamp_seconds").unwrap() > 1.6e9);
    let run_id = report["run_id"].as_str().expect("the report names its run");
    assert!(
        !after.contains(run_id),
        "the run ID leaks into the metrics:\n{after}"
    );
    assert!(
        !after.contains("demo-inference-key"),
        "a secret leaks into the metrics"
    );

    let prometheus = Prometheus::start(&[("flotilla-agent", &target)]).unwrap();
    let series = prometheus
        .wait_for(&format!("{succeeded} == 1"), Duration::from_secs(60))
        .unwrap();
    assert_eq!(series[0]["metric"]["job"], "flotilla-agent", "{series:?}");
    let info = prometheus
        .wait_for("flotilla_agent_build_info", Duration::from_secs(30))
        .unwrap();
    assert_eq!(info[0]["metric"]["service"], ROLE, "{info:?}");
    let up = prometheus.wait_for("up{job=\"flotilla-agent\"} == 1", Duration::from_secs(30));
    assert!(up.is_ok(), "{}", prometheus.targets());
}

/// Without `[http]` the agent listens on no TCP port at all; with a port alone it listens on
/// loopback only; only an address written in full makes it listen on every interface.
#[test]
fn the_endpoint_is_off_by_default_and_on_loopback_unless_told() {
    let nats = NatsServer::start().unwrap();
    let (loopback, any) = (free_port(), free_port());
    let fleet = Fleet::start_with(
        nats.url(),
        &["inference", "training", "ingest"],
        &|role| match role {
            "training" => listen_env(&loopback.to_string()),
            "ingest" => listen_env(&format!("0.0.0.0:{any}")),
            _ => Vec::new(),
        },
        Vec::new(),
    )
    .unwrap();
    let pid = |role| fleet.agent_pid(role).expect("the agent runs");
    assert_eq!(listening(pid("inference")), Vec::<SocketAddr>::new());
    assert_eq!(
        listening(pid("training")),
        vec![SocketAddr::from((Ipv4Addr::LOCALHOST, loopback))]
    );
    assert_eq!(
        listening(pid("ingest")),
        vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, any))]
    );
    assert_eq!(ready(loopback).unwrap().0, 200);
}

/// Under systemd (`NOTIFY_SOCKET` set), the agent sends READY=1 only once it is connected and
/// subscribed: nothing while its server is down, READY=1 once it is up, when the server lists
/// the agent's connection; and WATCHDOG=1 pings, at half of `WATCHDOG_USEC`.
#[test]
fn ready_reaches_the_notify_socket_once_connected() {
    let mut nats = NatsServer::start().unwrap();
    nats.kill();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let http = free_port();
    let mut fleet = Fleet::empty(nats.url(), Vec::new()).unwrap();
    let notify = path.display().to_string();
    fleet
        .add_and_start(&[ROLE], &|_| {
            let mut env = listen_env(&format!("127.0.0.1:{http}"));
            env.push(("NOTIFY_SOCKET".to_owned(), notify.clone()));
            env.push(("WATCHDOG_USEC".to_owned(), "1000000".to_owned()));
            env
        })
        .unwrap();
    let mut messages = Vec::new();
    // Alive and pinging the watchdog, not ready: the server is down.
    wait_for("a watchdog ping", Duration::from_secs(30), || {
        receive(&socket, &mut messages)
            .iter()
            .any(|m| m.contains("WATCHDOG=1"))
    })
    .unwrap();
    assert!(ready(http).is_some_and(|(status, _)| status == 503));
    assert!(
        !receive(&socket, &mut messages)
            .iter()
            .any(|m| m.contains("READY=1"))
    );

    nats.restart().unwrap();
    let out = fleet.flotilla(&["setup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("READY=1", Duration::from_secs(30), || {
        receive(&socket, &mut messages)
            .iter()
            .any(|m| m.contains("READY=1"))
    })
    .unwrap_or_else(|e| panic!("{e}: {messages:?}"));
    let names: Vec<String> = nats
        .connections()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert!(
        names.iter().any(|n| n == "flotilla-agent inference/a"),
        "READY=1 came while the agent was not connected: {names:?}"
    );
    assert_eq!(ready(http).unwrap().0, 200);
}

/// Adds what arrived on `socket` (waiting 100 ms at most) to `messages`; returns them all.
fn receive<'a>(socket: &UnixDatagram, messages: &'a mut Vec<String>) -> &'a [String] {
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    if let Ok(n) = socket.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    messages
}

/// A listen address already taken fails the agent's start at once (exit 1), naming the address
/// and the key, instead of an agent that runs without the endpoint its probes expect.
#[test]
fn a_listen_address_in_use_fails_the_start_naming_the_key() {
    let nats = NatsServer::start().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let mut fleet = Fleet::empty(nats.url(), Vec::new()).unwrap();
    fleet
        .add_and_start(&[ROLE], &|_| listen_env(&address))
        .unwrap();
    let mut exit = None;
    wait_for("the agent to exit", Duration::from_secs(30), || {
        exit = fleet.agent_exit(ROLE);
        exit.is_some()
    })
    .unwrap();
    assert_eq!(exit.unwrap().code(), Some(1));
    let log = std::fs::read_to_string(fleet.agent_log(ROLE)).unwrap();
    assert!(
        log.contains(&format!("cannot listen on {address} (http.listen)")),
        "{log}"
    );
}
