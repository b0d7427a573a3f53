//! F4: network cuts through a userspace TCP proxy (the CI kernel has no netem), between an
//! agent and the broker and between the coordinator and the broker, shorter and longer than
//! the consumers' ack wait (preset to 2 s here, so "longer" costs seconds, not minutes), plus
//! a connection reset and a slow link. Every run ends with the invariant check.

use std::time::{Duration, Instant};

use flotilla_tests::faults::preset_ack_wait;
use flotilla_tests::invariants::{drive_to_end, wait_in_flight};
use flotilla_tests::{Evidence, Fleet, NatsServer, Proxy, Scenario};

const ACK_WAIT: Duration = Duration::from_secs(2);
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
/// recorded, so the command reaches a cut-off agent). Returns the evidence's verdict details
/// for the caller's own assertions.
fn cut(name: &str, path: Path, before_dispatch: bool, fault: impl FnOnce(&Proxy)) -> Evidence {
    let nats = NatsServer::start().unwrap();
    let roles = ["inference", "ingest"];
    preset_ack_wait(nats.url(), &roles, ACK_WAIT).unwrap();
    let proxy = Proxy::start(nats.url()).unwrap();
    let agents_url = if path == Path::Agent {
        proxy.url()
    } else {
        nats.url().to_owned()
    };
    let fleet = Fleet::start(&agents_url, &roles).unwrap();
    let scenario = Scenario::with_ack_wait(&fleet, &roles, COMMAND_TIMEOUT, ACK_WAIT);
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
    fault(&proxy);
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
    evidence
}

#[test]
fn an_agent_cut_shorter_than_the_ack_wait_mid_step_loses_nothing() {
    cut("agent-short", Path::Agent, false, |p| {
        p.cut_for(ACK_WAIT / 2)
    });
}

#[test]
fn an_agent_cut_longer_than_the_ack_wait_mid_step_then_reset_loses_nothing() {
    cut("agent-long", Path::Agent, false, |p| {
        p.cut_for(ACK_WAIT * 2 + Duration::from_millis(500));
        p.reset();
    });
}

/// The agent is cut off before its command arrives and stays cut longer than the ack wait:
/// the broker redelivers the unacked command, and both copies reach the agent once healed.
/// The journal answers the second copy; the step runs once.
#[test]
fn an_agent_cut_off_before_its_command_arrives_runs_a_redelivered_command_once() {
    let evidence = cut("agent-redelivered", Path::Agent, true, |p| {
        p.blackhole();
        std::thread::sleep(ACK_WAIT * 3);
    });
    let replays = evidence
        .events
        .iter()
        .filter(|e| e["replayed"] == true)
        .count();
    eprintln!("agent-redelivered: {replays} replayed result(s)");
}

#[test]
fn a_coordinator_cut_shorter_than_the_ack_wait_loses_nothing() {
    cut("coordinator-short", Path::Coordinator, false, |p| {
        p.cut_for(ACK_WAIT / 2)
    });
}

#[test]
fn a_coordinator_cut_longer_than_the_ack_wait_then_reset_loses_nothing() {
    cut("coordinator-long", Path::Coordinator, false, |p| {
        p.cut_for(ACK_WAIT * 2 + Duration::from_millis(500));
        p.reset();
    });
}

#[test]
fn a_slow_link_to_the_agents_loses_nothing() {
    cut("agent-slow", Path::Agent, false, |p| {
        p.delay(Duration::from_millis(300));
        std::thread::sleep(Duration::from_secs(3));
    });
}
