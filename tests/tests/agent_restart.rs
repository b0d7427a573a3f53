//! An agent that comes back serves its next command at once, however its previous incarnation
//! went (SIGTERM, kill -9), and a command sent while it was down is handled once when it is
//! back. One whose previous incarnation is frozen with its connection still open (what the
//! broker sees of a hung process, a host gone without a TCP reset, or a partition) shares its
//! queue group: a command is handled by one of the two, never both. (With v1's durable
//! consumer, the next command went to the dead incarnation's pull request and came back only
//! after the 30 s ack wait; with per-agent delivery there is no request to leave behind.)

use std::time::{Duration, Instant};

use flotilla_tests::faults::{command_json, new_id, publish_command, results_of};
use flotilla_tests::{Fleet, NatsServer, wait_for};
use serde_json::json;
use time::OffsetDateTime;

const ROLE: &str = "inference";

/// The stall was the 30 s ack wait; a busy 2-core machine needs well under 5 s.
const PROMPT: Duration = Duration::from_secs(5);

/// Sends a command that changes nothing (an empty inspect); returns its run and command IDs.
fn send_inspect(fleet: &Fleet) -> (String, String) {
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
    publish_command(
        fleet.nats_url(),
        ROLE,
        serde_json::to_vec(&command).unwrap(),
        Some(&fleet.signing_key()),
        &new_id(),
    )
    .unwrap();
    (run, id)
}

/// Sends an empty inspect and returns the time from its dispatch to its answer: the agent's
/// handling of it is a few milliseconds of that.
fn answer_time(fleet: &Fleet) -> Duration {
    let dispatched = Instant::now();
    let (run, id) = send_inspect(fleet);
    let answers = results_of(fleet.nats_url(), &run, &id, 1, Duration::from_secs(60)).unwrap();
    let elapsed = dispatched.elapsed();
    assert_eq!(answers.len(), 1, "no answer to {id} within 60 s");
    assert_eq!(answers[0]["outcome"], "succeeded", "{:#}", answers[0]);
    elapsed
}

/// Starts the agent again and waits until it answers presence (it subscribes first).
fn restart_and_wait(fleet: &mut Fleet) {
    fleet.start_agent(ROLE).unwrap();
    fleet.wait_ready(Duration::from_secs(30)).unwrap();
}

/// Every answer to `id` the events stream holds, replays included (once no agent runs, the
/// stream can hold no more).
fn every_answer(fleet: &Fleet, run: &str, id: &str) -> Vec<serde_json::Value> {
    results_of(fleet.nats_url(), run, id, 2, Duration::from_secs(2)).unwrap()
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
    restart_and_wait(&mut fleet);
    assert_prompt("after SIGTERM", before, answer_time(&fleet));

    fleet.kill_agent(ROLE);
    restart_and_wait(&mut fleet);
    assert_prompt("after kill -9", before, answer_time(&fleet));
}

/// A command sent while the agent is down (no subscriber: only the stream has it) is caught up
/// at the next start and handled once; the agent starting again after that does not answer it
/// again (its journal has it: the catch-up finds it handled, and says nothing).
#[test]
fn a_command_sent_while_the_agent_was_down_is_handled_once_when_it_is_back() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &[ROLE]).unwrap();
    fleet.kill_agent(ROLE);
    let (run, id) = send_inspect(&fleet);
    restart_and_wait(&mut fleet);
    let answers = results_of(fleet.nats_url(), &run, &id, 1, Duration::from_secs(30)).unwrap();
    assert_eq!(
        answers.len(),
        1,
        "the command sent while down was not caught up"
    );
    assert_eq!(answers[0]["outcome"], "succeeded", "{:#}", answers[0]);
    let log = || std::fs::read_to_string(fleet.agent_log(ROLE)).unwrap_or_default();
    assert_eq!(
        log()
            .matches("caught up on a command sent while this agent was away")
            .count(),
        1,
        "{}",
        log()
    );

    fleet.stop_agent(ROLE);
    restart_and_wait(&mut fleet);
    // A command sent after the restart is answered: the catch-up read at that start, which
    // comes before the first live command, has happened.
    answer_time(&fleet);
    fleet.stop_agent(ROLE);
    let answers = every_answer(&fleet, &run, &id);
    assert_eq!(
        answers.len(),
        1,
        "answered again after a restart: {answers:#?}"
    );
}

/// The previous agent is frozen (SIGSTOP): to the broker its connection and its subscription
/// are alive. The new agent joins the same queue group, so the broker hands each command to one
/// of the two: a command sent then is handled once (by the frozen one after it wakes, if the
/// broker chose it), never by both, even though each has its own journal (a copy, as on
/// another host). Once the frozen one is killed, the new agent serves the next command at once.
#[test]
fn a_restarted_agent_and_its_frozen_predecessor_never_both_handle_a_command() {
    let nats = NatsServer::start().unwrap();
    let mut fleet = Fleet::start(nats.url(), &[ROLE]).unwrap();
    let before = answer_time(&fleet);
    let frozen = fleet.agent_pid(ROLE).expect("the agent runs");
    assert!(fleet.signal_agent(ROLE, "STOP"));
    // The frozen agent's child handle is replaced, not reaped: it is signalled by PID below. It
    // still holds its state directory: the new one runs on a copy, as on another host.
    fleet.start_replacement_agent(ROLE).unwrap();
    fleet.wait_ready(Duration::from_secs(30)).unwrap();
    let sent: Vec<(String, String)> = (0..4).map(|_| send_inspect(&fleet)).collect();
    let signal = |which: &str| {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{which}"))
            .arg(frozen.to_string())
            .status();
    };
    signal("CONT");
    for (run, id) in &sent {
        let answers = results_of(fleet.nats_url(), run, id, 1, Duration::from_secs(60)).unwrap();
        assert_eq!(answers.len(), 1, "no answer to {id}");
    }
    signal("KILL");
    // Its connection closes with it (a command sent before the broker notices would go to it,
    // and die with it unjournalled: the next start of that incarnation would catch it up, not
    // the other one).
    wait_for(
        "the frozen agent's connection to close",
        Duration::from_secs(10),
        || {
            nats.connections()
                .iter()
                .filter(|c| c["name"] == format!("flotilla-agent {ROLE}/a"))
                .count()
                == 1
        },
    )
    .unwrap();
    assert_prompt(
        "after the frozen agent is killed",
        before,
        answer_time(&fleet),
    );
    fleet.stop_agent(ROLE);
    for (run, id) in &sent {
        let answers = every_answer(&fleet, run, id);
        assert_eq!(answers.len(), 1, "{id} was handled twice: {answers:#?}");
        assert_ne!(answers[0]["replayed"], true, "{:#}", answers[0]);
    }
}
