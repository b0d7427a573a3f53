//! Filing results under the commands they answer.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{CommandId, Outcome, Progress, RunResult};
use time::OffsetDateTime;

use super::follower::Follower;
use super::{Engine, ProgressSink, RolloutError};
use crate::store::{CommandRecord, Revisions, RunRecord, RunStatus, Store};

impl<'a, P: ProgressSink> Engine<'a, P> {
    /// Files results under the commands they answer, in one round of writes; the first answer
    /// to a command wins (a replayed one carries the same outcome). A result that comes after
    /// the coordinator gave up on its command (`timed_out`) is filed too: the agent's journal is
    /// the truth, and the record follows it.
    pub(super) async fn apply(&mut self, results: Vec<RunResult>) -> Result<(), RolloutError> {
        self.take_ignored();
        let before = self.record.notes.len();
        let sink = &mut self.sink;
        let touched = file_results(&mut self.record, &self.index, results, &mut |r| {
            sink.result(r)
        });
        for note in &self.record.notes[before..] {
            self.sink.note(note);
        }
        self.save_targets(&touched).await?;
        if self.record.notes.len() != before {
            self.save().await?;
        }
        Ok(())
    }

    /// Moves the follower's notes of forged events it ignored into the record, and shows them.
    pub(super) fn take_ignored(&mut self) {
        for note in self.follower.take_ignored() {
            self.sink.note(&note);
            self.record.notes.push(note);
        }
    }

    /// Files what the run's events already hold (a resumed or rolled-back run: results
    /// published while no coordinator listened, or after it gave up on a command).
    pub(super) async fn catch_up(&mut self) -> Result<(), RolloutError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let results = self.follower.catch_up(CATCH_UP_LIMIT, &mut self.sink).await;
        self.apply(results).await
    }
}

/// Files `results` under the commands they answer; returns the targets that changed. The first
/// answer to a command wins (a replayed one carries the same outcome). A result that comes
/// after the coordinator gave up on its command (`timed_out`) is filed too, with a note: the
/// agent's journal is the truth, and the record follows it. `filed` sees each result filed, and
/// only those: what live progress shows is what the record holds.
fn file_results(
    record: &mut RunRecord,
    index: &HashMap<CommandId, usize>,
    results: Vec<RunResult>,
    filed: &mut dyn FnMut(&RunResult),
) -> Vec<usize> {
    let mut touched = Vec::new();
    for result in results {
        let Some(&t) = index.get(&result.command_id) else {
            continue;
        };
        let target = &mut record.targets[t];
        if target.service != result.service || target.instance != result.instance {
            tracing::warn!(
                command_id = %result.command_id,
                "ignoring a result from another agent than the command's"
            );
            continue;
        }
        let signing_agent = !target.agent_keys.is_empty();
        let Some(command) = target
            .commands_mut()
            .find(|c| c.command.command_id == result.command_id)
        else {
            continue;
        };
        if command.result.is_some() {
            continue;
        }
        if let Some(why) = answers_another_copy(command, &result, signing_agent) {
            let note = format!(
                "ignored 1 forged result for {}/{}: {why}",
                result.service, result.instance
            );
            tracing::warn!(command_id = %result.command_id, "{note}");
            record.notes.push(note);
            continue;
        }
        if command.timed_out || command.not_delivered.is_some() {
            let note = format!(
                "{}/{}: a late result ({}) came after the coordinator gave up on the command, and was filed",
                result.service,
                result.instance,
                result.outcome.as_str()
            );
            tracing::warn!(command_id = %result.command_id, "{note}");
            record.notes.push(note);
        }
        filed(&result);
        command.result = Some(result);
        touched.push(t);
    }
    touched
}

/// Why the engine does not file `result` although `record` holds its command: it names another
/// agent than the command's, or answers a copy of the command the coordinator did not send.
/// `None` when it would be filed, or when the record does not know the command. `watch` shows
/// no result that this refuses.
pub fn not_filed(record: &RunRecord, result: &RunResult) -> Option<&'static str> {
    let target = &record.targets[record.find_target(result.command_id)?];
    if target.service != result.service || target.instance != result.instance {
        return Some("it answers another agent's command");
    }
    let command = target
        .commands()
        .find(|c| c.command.command_id == result.command_id)?;
    answers_another_copy(command, result, !target.agent_keys.is_empty())
}

/// Why `result` does not answer `command` as the coordinator signed and sent it, if it does
/// not: its digest names other bytes or another signature (a copy replayed unsigned, or
/// altered), or it is a refusal from a signing agent that names no digest at all. Agents older
/// than signed results (`signing_agent` false) name none and are not held to it.
fn answers_another_copy(
    command: &CommandRecord,
    result: &RunResult,
    signing_agent: bool,
) -> Option<&'static str> {
    let sent = command.digest.as_deref()?;
    match result.command_digest.as_deref() {
        Some(received) if received != sent => Some(
            "it answers a copy of the command that the coordinator did not send (replayed unsigned, or altered)",
        ),
        None if signing_agent && result.outcome == Outcome::Refused => {
            Some("a refusal that does not name the digest of the command it refuses")
        }
        _ => None,
    }
}

/// For a run that no coordinator drives (ended or cancelled): files the results that reached
/// the events stream after its coordinator gave up on their commands or stopped, so that
/// `status`, `report` and `rollback` tell what the agents' journals say. Returns how many were
/// filed. Does nothing for a running run: its coordinator files its own results.
pub async fn file_late_results(
    client: &async_nats::Client,
    subjects: &Subjects,
    store: &Store,
    record: &mut RunRecord,
    revisions: &mut Revisions,
) -> Result<usize, RolloutError> {
    let unanswered = |c: &CommandRecord| c.result.is_none() && c.sent_at.is_some();
    let waiting = record.commands().any(unanswered);
    if record.status == RunStatus::Running || !waiting {
        return Ok(0);
    }
    let js = jetstream::new(client.clone());
    let events = flotilla_bus::events_stream(&js, subjects).await?;
    let mut follower = Follower::new(&events, subjects, record).await?;
    let results = follower.catch_up(CATCH_UP_LIMIT, &mut Quiet).await;
    let index = command_index(record);
    let ignored = follower.take_ignored();
    let noted = !ignored.is_empty();
    record.notes.extend(ignored);
    let touched = file_results(record, &index, results, &mut |_| {});
    if !touched.is_empty() || noted {
        store.save_targets(record, &touched, revisions).await?;
        record.updated_at = OffsetDateTime::now_utc();
        store.save_header(record, revisions).await?;
    }
    Ok(touched.len())
}

/// A progress sink that shows nothing.
pub(super) struct Quiet;

impl ProgressSink for Quiet {
    fn progress(&mut self, _progress: &Progress) {}
    fn shows_progress(&self) -> bool {
        false
    }
    fn result(&mut self, _result: &RunResult) {}
}

/// How long reading a run's past events may take.
pub(super) const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// Which target each recorded command went to.
pub(super) fn command_index(record: &RunRecord) -> HashMap<CommandId, usize> {
    let mut index = HashMap::new();
    for (t, target) in record.targets.iter().enumerate() {
        for command in target.commands() {
            index.insert(command.command.command_id, t);
        }
    }
    index
}
