//! An agent that comes back serves its next command at once, however its previous incarnation
//! went: SIGTERM, kill -9, or frozen with its connection still open (what the broker sees of a
//! hung process, a host gone without a TCP reset, or a partition). The bug this guards against:
//! the next command went to the dead incarnation's pull request and came back only after the
//! consumer's 30 s ack wait.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, ServiceName};
use flotilla_tests::faults::{block_on, command_json, new_id, publish_command, results_of};
use flotilla_tests::{Fleet, NatsServer, wait_for};
use serde_json::json;
use time::OffsetDateTime;

const ROLE: &str = "inference";

/// The stall was the 30 s ack wait; a busy 2-core machine needs well under 5 s.
const PROMPT: Duration = Duration::from_secs(5);

/// Pull requests waiting on `ROLE`'s consumer (None while it does not exist).
fn waiting_pulls(url: &str) -> Option<usize> {
    let url = url.to_owned();
    block_on(async move {
        let client = async_nats::connect(&url).await?;
        let js = jetstream::new(client);
        let subjects = Subjects::default();
        let stream = js.get_stream(subjects.commands_stream()).await?;
        let name = subjects.agent_consumer(&ServiceName::parse(ROLE)?, &InstanceId::parse("a")?);
        let consumer: Result<jetstream::consumer::PullConsumer, _> =
            stream.get_consumer(&name).await;
        Ok(match consumer {
            Ok(mut consumer) => Some(consumer.info().await?.num_waiting),
            Err(_) => None,
        })
    })
    .unwrap()
}

/// Sends a command that changes nothing (an empty inspect) and returns the time from its
/// dispatch to its answer: the agent's handling of it is a few milliseconds of that.
fn answer_time(fleet: &Fleet) -> Duration {
    let (run, id) = (new_id(), new_id());
    let now = OffsetDateTime::now_utc();
    let command = command_json(
        ROLE,
        &run,
        &id,
        now,
        now + time::Duration::minutes(5),
        json!({"kind": "inspect"}),
    );
    let dispatched = Instant::now();
    publish_command(
        fleet.nats_url(),
        ROLE,
        serde_json::to_vec(&command).unwrap(),
        Some(&fleet.signing_key()),
        &new_id(),
    )
    .unwrap();
    let answers = results_of(fleet.nats_url(), &run, &id, 1, Duration::from_secs(60)).unwrap();
    let elapsed = dispatched.elapsed();
    assert_eq!(answers.len(), 1, "no answer to {id} within 60 s");
    assert_eq!(answers[0]["outcome"], "succeeded", "{:#}", answers[0]);
    elapsed
}

/// Starts the agent again and waits until it answers presence and its pull is registered.
fn restart_and_wait(fleet: &mut Fleet, nats: &NatsServer) {
    fleet.start_agent(ROLE).unwrap();
    wait_pulling(fleet, nats);
}

/// Waits until the agent just started answers presence and its pull is registered.
fn wait_pulling(fleet: &mut Fleet, nats: &NatsServer) {
    fleet.wait_ready(Duration::from_secs(30)).unwrap();
    wait_for("the new agent to pull", Duration::from_secs(30), || {
        waiting_pulls(nats.url()).is_some_and(|n| n >= 1)
    })
    .unwrap_or_else(|e| {
        let log = std::fs::read_to_string(fleet.agent_log(ROLE)).unwrap_or_default();
        panic!("{e}; agent log:\n{log}")
    });
}

/// How many times the agent's log says it took the consumer over.
fn takeovers(fleet: &Fleet) -> usize {
    std::fs::read_to_string(fleet.agent_log(ROLE))
        .unwrap_or_default()
        .matches("recreating the consumer")
        .count()
}

fn assert_prompt(what: &str, before: Duration, after: Duration) {
    eprintln!("dispatch to answer: {before:?} before, {after:?} {what}");
    assert!(
        after < PROMPT,
        "the first command {what} took {after:?} (before: {before:?})"
    );
}

#[test]
fn the_first_command_after_sigterm_or_kill_9_is_served_at_once() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &[ROLE]).unwrap();
    let before = answer_time(&fleet);

    fleet.stop_agent(ROLE);
    restart_and_wait(&mut fleet, &nats);
    assert_prompt("after SIGTERM", before, answer_time(&fleet));

    fleet.kill_agent(ROLE);
    restart_and_wait(&mut fleet, &nats);
    assert_prompt("after kill -9", before, answer_time(&fleet));
    // The broker dropped the closed connections' requests: nothing to take over, no cost.
    assert_eq!(takeovers(&fleet), 0);
}

/// The previous agent is frozen (SIGSTOP): to the broker its connection and its pull request
/// are alive, and the broker serves pull requests in order. The new agent takes the consumer
/// over, so the command is not handed to the frozen one; then the frozen one is killed, and
/// the new agent still serves the next command at once.
#[test]
fn the_first_command_after_the_previous_agent_froze_is_served_at_once() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &[ROLE]).unwrap();
    let before = answer_time(&fleet);
    let frozen = fleet.agent_pid(ROLE).expect("the agent runs");
    assert!(fleet.signal_agent(ROLE, "STOP"));
    // The frozen agent's child handle is replaced, not reaped: it is killed by PID below. It
    // still holds its state directory: the new one runs on a copy, as on another host.
    fleet.start_replacement_agent(ROLE).unwrap();
    wait_pulling(&mut fleet, &nats);
    let after = answer_time(&fleet);
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg(frozen.to_string())
        .status();
    assert_prompt("while the previous agent is frozen", before, after);
    assert_eq!(takeovers(&fleet), 1);
    assert_prompt(
        "after the frozen agent is killed",
        before,
        answer_time(&fleet),
    );
}
