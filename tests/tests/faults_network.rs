//! F4: network cuts through a userspace TCP proxy (the CI kernel has no netem), between an
//! agent and the broker and between the coordinator and the broker, short and long, some ending
//! in a connection reset (which loses what the broker had sent into the dead connection: the
//! agent's catch-up read at the reconnect finds the command), plus a slow link. Every run ends
//! with the invariant check.

use std::time::{Duration, Instant};

use flotilla_tests::faults::{create_streams, last_command};
use flotilla_tests::invariants::{drive_to_end, wait_in_flight};
use flotilla_tests::{Evidence, Fleet, NatsServer, Proxy, Scenario};

/// The length of a cut: long against a round trip, short against the command timeout.
const CUT: Duration = Duration::from_secs(2);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const SLOW: &str =
    "[[service.step]]\naction = \"run_command\"\nprogram = \"sh\"\nargs = [\"-c\", \"sleep 2\"]\n";

/// Where the cut is.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Agent,
    Coordinator,
}

/// A fleet of two, with `path` going through a proxy, and a run during which `fault` acts on
/// the proxy once a migration is in flight (or, with `before_dispatch`, as soon as the run is
/// recorded, so the command reaches a cut-off agent; it is given the broker's own URL). Returns
/// the evidence, and the log of `ingest`'s agent, for the caller's own assertions.
fn cut(
    name: &str,
    path: Path,
    before_dispatch: bool,
    fault: impl FnOnce(&Proxy, &str),
) -> (Evidence, String) {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest"];
    create_streams(nats.url()).unwrap();
    let proxy = Proxy::start(nats.url()).unwrap();
    // Before dispatch, only the second wave's agent is behind the proxy: the canary must get
    // through, or the second wave's command is never sent.
    let agents_url = if path == Path::Agent && !before_dispatch {
        proxy.url()
    } else {
        nats.url().to_owned()
    };
    let mut fleet = Fleet::start(&agents_url, &roles).unwrap();
    if path == Path::Agent && before_dispatch {
        fleet.stop_agent("ingest");
        fleet.set_agent_env("ingest", "FLOTILLA_NATS__URL", &proxy.url());
        fleet.start_agent("ingest").unwrap();
        fleet.wait_ready(Duration::from_secs(30)).unwrap();
    }
    let scenario = Scenario::new(&fleet, &roles, COMMAND_TIMEOUT);
    let header = if before_dispatch {
        // The canary keeps the coordinator busy while the second wave's agent is cut off.
        "[[wave]]\nname = \"canary\"\nservices = [\"inference\"]\n[[wave]]\nname = \"rest\"\n"
    } else {
        ""
    };
    let plan = fleet.write_plan("plan.toml", &scenario.plan(&fleet, name, header, SLOW));
    let coordinator_url = if path == Path::Coordinator {
        proxy.url()
    } else {
        nats.url().to_owned()
    };
    let env = [("FLOTILLA_NATS__URL", coordinator_url.as_str())];
    let direct = [("FLOTILLA_NATS__URL", nats.url())];
    let mut coordinator = fleet.spawn_flotilla_with_env(
        &["migrate", plan.to_str().unwrap(), "--output", "json"],
        &env,
    );
    // Status is read directly from the broker, never through the cut path.
    let status_env = direct;
    let run = {
        let mut id = None;
        flotilla_tests::wait_for("the run", Duration::from_secs(20), || {
            let out = fleet.flotilla_with_env(&["runs", "--output", "json"], &status_env);
            id = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v[0]["run_id"].as_str().map(str::to_owned));
            id.is_some()
        })
        .unwrap();
        id.unwrap()
    };
    if !before_dispatch && path == Path::Coordinator {
        wait_in_flight(&fleet, &run, Duration::from_secs(20)).unwrap();
    } else if !before_dispatch {
        // The agents' path is the fleet's URL: wait for in-flight before cutting it.
        wait_in_flight(&fleet, &run, Duration::from_secs(20)).unwrap();
    }
    fault(&proxy, nats.url());
    proxy.heal();
    let healed = Instant::now();
    let (code, resumed) =
        drive_to_end(&fleet, &mut coordinator, &run, COMMAND_TIMEOUT * 2, &direct);
    eprintln!(
        "{name}: coordinator exit {code:?}, resume {resumed:?}, proxy connections {}",
        proxy.connections()
    );
    let took = scenario.wait_terminal(&fleet, &run, healed).unwrap();
    let evidence = Evidence::collect(&fleet, &scenario, &run).unwrap();
    scenario.check(&evidence, Some(took)).assert_ok(name);
    for role in roles {
        assert_eq!(
            scenario.count(role, name),
            1,
            "{name}: {role} ran its step once"
        );
    }
    let log = std::fs::read_to_string(fleet.agent_log("ingest")).unwrap_or_default();
    (evidence, log)
}

#[test]
fn a_short_agent_cut_mid_step_loses_nothing() {
    cut("agent-short", Path::Agent, false, |p, _| p.cut_for(CUT / 2));
}

#[test]
fn a_long_agent_cut_mid_step_then_reset_loses_nothing() {
    cut("agent-long", Path::Agent, false, |p, _| {
        p.cut_for(CUT * 2 + Duration::from_millis(500));
        p.reset();
    });
}

/// The agent is cut off before its command arrives: the broker sends the command into the
/// connection, where the cut holds it, and the link heals with the connection alive. The held
/// command arrives live; the step runs once.
#[test]
fn an_agent_cut_off_before_its_command_arrives_runs_it_once() {
    cut("agent-held", Path::Agent, true, |p, nats| {
        p.blackhole();
        wait_for_command(nats);
    });
}

/// The agent is cut off before its command arrives, and its connection then dies with the
/// command still in it (a reset: what the broker sent is lost). No broker redelivers it: the
/// agent's catch-up read at its reconnect finds it in the stream, and the step runs once.
#[test]
fn a_command_lost_in_a_dead_connection_is_caught_up_at_the_reconnect_and_runs_once() {
    let (_, log) = cut("agent-lost", Path::Agent, true, |p, nats| {
        p.blackhole();
        wait_for_command(nats);
        p.reset();
    });
    assert!(
        log.contains("caught up on a command sent while this agent was away"),
        "the command did not come by the catch-up read:\n{log}"
    );
}

/// Waits until the coordinator has stored `ingest`'s migrate command (published it to the agent
/// too, into the cut connection).
fn wait_for_command(nats: &str) {
    flotilla_tests::wait_for("ingest's migrate command", COMMAND_TIMEOUT, || {
        last_command(nats, "ingest").is_some_and(|c| c["action"]["kind"] == "migrate")
    })
    .unwrap();
}

#[test]
fn a_short_coordinator_cut_loses_nothing() {
    cut("coordinator-short", Path::Coordinator, false, |p, _| {
        p.cut_for(CUT / 2)
    });
}

#[test]
fn a_long_coordinator_cut_then_reset_loses_nothing() {
    cut("coordinator-long", Path::Coordinator, false, |p, _| {
        p.cut_for(CUT * 2 + Duration::from_millis(500));
        p.reset();
    });
}

#[test]
fn a_slow_link_to_the_agents_loses_nothing() {
    cut("agent-slow", Path::Agent, false, |p, _| {
        p.delay(Duration::from_millis(300));
        std::thread::sleep(Duration::from_secs(3));
    });
}
