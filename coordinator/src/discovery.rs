//! Finding the live agents: a presence request, every agent answers.
//!
//! The bus knows every agent by its durable consumer on the commands stream
//! (`agent_<service>_<instance>`, a `_` inside a name doubled: see `Subjects::agent_consumer`).
//! So the consumer list read right after the request is published names every agent that has
//! been up for a moment, and discovery stops as soon as each of them has answered: a fleet that
//! answers in milliseconds is found in milliseconds. An agent that is known but silent (restarting, or down) is asked again
//! until it answers or the window ends. An agent answers presence even while it waits for the
//! streams (it creates its consumer once they exist), so for [`SETTLING`] after the commands
//! stream appears its list may be incomplete: discovery then waits for every listed agent and,
//! in addition, for answers to stop.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::StatusCode;

use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, Presence, ServiceName, decode};
use futures::StreamExt;
use tokio::time::Instant;

/// How the agents' durable consumers on the commands stream are named: `agent_<service>_<instance>`.
const AGENT_CONSUMER_PREFIX: &str = "agent_";

/// How often the request goes out again while a known agent has not answered: one that was
/// restarting answers the next request, not the one sent before it listened.
const ASK_AGAIN: Duration = Duration::from_millis(250);

/// When the bus knows of no agent: stop this long after the last answer.
const QUIET: Duration = Duration::from_millis(250);

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot subscribe to the presence inbox")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot publish the presence request")]
    Publish(#[source] async_nats::PublishError),
}

/// Who answered, read even from an answer in a schema this coordinator cannot read: that agent
/// is live, and is not waited for.
#[derive(serde::Deserialize)]
struct Identity {
    service: ServiceName,
    instance: InstanceId,
}

/// How long after the commands stream appears its consumer list is not trusted: agents that
/// waited for it create their consumers at most 4 s later
/// (`flotilla_bus::provision::waiting_backoff`); this leaves room to spare.
const SETTLING: Duration = Duration::from_secs(10);

/// The agents the bus knows of: the names of the agents' durable consumers on the commands
/// stream (empty when the stream cannot be read, e.g. it does not exist yet), and whether that
/// list is complete: not while the stream is younger than [`SETTLING`] (agents that started
/// before it may still be creating theirs).
async fn known_agents(client: &async_nats::Client, subjects: &Subjects) -> (HashSet<String>, bool) {
    let js = async_nats::jetstream::new(client.clone());
    let Ok(mut stream) = js.get_stream(subjects.commands_stream()).await else {
        return (HashSet::new(), false);
    };
    let settled = match stream.info().await {
        Ok(info) => time::OffsetDateTime::now_utc() - info.created >= SETTLING,
        Err(_) => false,
    };
    let mut names = stream.consumer_names();
    let mut known = HashSet::new();
    while let Some(name) = names.next().await {
        let Ok(name) = name else {
            return (known, false);
        };
        if name.starts_with(AGENT_CONSUMER_PREFIX) {
            known.insert(name);
        }
    }
    (known, settled)
}

/// Asks every agent to report and gathers the answers for at most `window`. Stops as soon as
/// every agent the bus knows of has answered; while one has not, asks again every
/// [`ASK_AGAIN`]. When the bus knows of none, stops [`QUIET`] after the last answer, or at once
/// when nobody listens.
pub async fn discover(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
) -> Result<Vec<Presence>, DiscoveryError> {
    let deadline = Instant::now() + window;
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(DiscoveryError::Subscribe)?;
    let ask = || async {
        client
            .publish_with_reply(subjects.presence(), inbox.clone(), Vec::new().into())
            .await
            .map_err(DiscoveryError::Publish)?;
        let _ = client.flush().await;
        Ok::<_, DiscoveryError>(())
    };
    ask().await?;
    // Read after the request went out, so that an agent whose consumer is listed has had the
    // request (one that answers without being listed is found all the same).
    let (known, settled) = known_agents(client, subjects).await;
    let mut next_ask = Instant::now() + ASK_AGAIN;
    let mut answered: HashSet<String> = HashSet::new();
    let mut found: Vec<Presence> = Vec::new();
    let mut last_answer: Option<Instant> = None;
    loop {
        // Every known agent is waited for (asked again while silent); when the list may be
        // incomplete (a young stream) or empty, answers must also have stopped for QUIET.
        let waiting_for_known = !known.is_subset(&answered);
        let wait_until = match last_answer {
            _ if waiting_for_known => deadline.min(next_ask),
            _ if settled && !known.is_empty() => break,
            Some(last) => deadline.min(last + QUIET),
            None => deadline,
        };
        match tokio::time::timeout_at(wait_until, answers.next()).await {
            Err(_) if waiting_for_known && Instant::now() < deadline => {
                ask().await?;
                next_ask = Instant::now() + ASK_AGAIN;
            }
            Ok(None) | Err(_) => break,
            // "No responders": nobody listens now. When the bus knows of agents, one may be
            // coming up: keep asking until the window ends.
            Ok(Some(message)) if message.status == Some(StatusCode::NO_RESPONDERS) => {
                if known.is_empty() {
                    break;
                }
            }
            Ok(Some(message)) if message.status.is_some() => {}
            Ok(Some(message)) => {
                last_answer = Some(Instant::now());
                // Each request is answered again: take the first answer of each agent.
                let first = serde_json::from_slice::<Identity>(&message.payload)
                    .map(|who| {
                        answered.insert(subjects.agent_consumer(&who.service, &who.instance))
                    })
                    .unwrap_or(true);
                if !first {
                    continue;
                }
                match decode::<Presence>(&message.payload) {
                    Ok(presence) => found.push(presence),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed presence answer"),
                }
            }
        }
    }
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_consumers_carry_the_prefix() {
        let subjects = Subjects::default();
        let name = subjects.agent_consumer(&"inference".parse().unwrap(), &"a1".parse().unwrap());
        assert!(name.starts_with(AGENT_CONSUMER_PREFIX), "{name}");
    }
}
