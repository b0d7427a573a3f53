//! Finding the live agents: a presence request, every agent answers.
//!
//! The bus knows every agent by its entry in the agent registry (`flotilla_bus::registry`),
//! which the agent writes when it starts and refreshes rarely. So the entries read right after
//! the request is published name every agent that has been up for a moment, and discovery stops
//! as soon as each *active* one (stored within `inactive_after`) has answered: a fleet that
//! answers in milliseconds is found in milliseconds. An active agent that is silent (restarting,
//! or down) is asked again until it answers or the window ends; an inactive one (decommissioned,
//! or down for long) is not waited for. An agent answers presence even while it waits for the
//! streams and the bucket (it registers once the bucket exists), so for [`SETTLING`] after the
//! bucket appears the registry may be incomplete: discovery then waits for every active agent
//! and, in addition, for answers to stop.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::StatusCode;
use backon::{BackoffBuilder, ExponentialBuilder};

use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{InstanceId, Presence, ServiceName, decode};
use futures::StreamExt;
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::registry::{self, Registered};

/// The first pause before the request goes out again while a known agent has not answered:
/// one that was restarting answers the next request, not the one sent before it listened.
const ASK_AGAIN: Duration = Duration::from_millis(250);

/// The longest pause between two requests.
const ASK_AGAIN_MAX: Duration = Duration::from_secs(2);

/// The pauses between requests: from [`ASK_AGAIN`] doubling to [`ASK_AGAIN_MAX`], with jitter.
/// Every agent answers every request: at 50,000 agents a request every 250 ms was 200,000
/// answers a second, and discovery behind leaf nodes found none of them (issue 18).
fn asking_again() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(ASK_AGAIN)
        .with_max_delay(ASK_AGAIN_MAX)
        .with_jitter()
        .without_max_times()
        .build()
}

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

/// How long after the registry bucket appears its entries are not trusted to be complete:
/// agents that waited for it write theirs at most 4 s later
/// (`flotilla_bus::provision::waiting_backoff`); this leaves room to spare.
const SETTLING: Duration = Duration::from_secs(10);

/// What discovery found: the agents that answered, and the registered agents that did not
/// (each with whether it is still active, i.e. was waited for).
#[derive(Debug, Default)]
pub struct Discovery {
    pub found: Vec<Presence>,
    pub silent: Vec<Silent>,
}

/// A registered agent that did not answer.
#[derive(Debug, Clone)]
pub struct Silent {
    pub registered: Registered,
    /// Refreshed within the inactivity threshold: waited for, to the end of the window.
    pub active: bool,
}

/// Asks every agent to report and gathers the answers for at most `window`. Stops as soon as
/// every active registered agent has answered; while one has not, asks again every
/// [`ASK_AGAIN`]. When the registry knows of none, stops [`QUIET`] after the last answer, or at
/// once when nobody listens.
pub async fn discover(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
    inactive_after: Duration,
) -> Result<Discovery, DiscoveryError> {
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
    // Read after the request went out, so that an agent whose entry is read has had the
    // request (one that answers without an entry is found all the same).
    let js = async_nats::jetstream::new(client.clone());
    let within = registry::READ_TIMEOUT.max(deadline.saturating_duration_since(Instant::now()));
    let snapshot = registry::read(&js, subjects, SETTLING, within).await;
    let now = OffsetDateTime::now_utc();
    let known: HashSet<String> = snapshot
        .entries
        .iter()
        .filter(|r| r.active(now, inactive_after))
        .map(|r| r.key.clone())
        .collect();
    let settled = snapshot.settled;
    let mut pauses = asking_again();
    let mut next_ask = Instant::now() + pauses.next().unwrap_or(ASK_AGAIN_MAX);
    let mut answered: HashSet<String> = HashSet::new();
    let mut found: Vec<Presence> = Vec::new();
    let mut last_answer: Option<Instant> = None;
    loop {
        // Every known agent is waited for (asked again while silent); when the list may be
        // incomplete (a young stream) or empty, answers must also have stopped for QUIET.
        let waiting_for_known = !known.is_subset(&answered);
        // Asked again only once answers have stopped coming: every agent answers every request,
        // and a big fleet's answers to the last one may still be on their way.
        let ask_at = last_answer.map_or(next_ask, |last| next_ask.max(last + QUIET));
        let wait_until = match last_answer {
            _ if waiting_for_known => deadline.min(ask_at),
            _ if settled && !known.is_empty() => break,
            Some(last) => deadline.min(last + QUIET),
            None => deadline,
        };
        match tokio::time::timeout_at(wait_until, answers.next()).await {
            Err(_) if waiting_for_known && Instant::now() < deadline => {
                ask().await?;
                next_ask = Instant::now() + pauses.next().unwrap_or(ASK_AGAIN_MAX);
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
                    .map(|who| answered.insert(subjects.agent_key(&who.service, &who.instance)))
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
    let mut silent: Vec<Silent> = snapshot
        .entries
        .into_iter()
        .filter(|r| !answered.contains(&r.key))
        .map(|registered| Silent {
            active: known.contains(&registered.key),
            registered,
        })
        .collect();
    silent.sort_by(|a, b| a.registered.key.cmp(&b.registered.key));
    Ok(Discovery { found, silent })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_go_out_again_ever_more_slowly_up_to_a_cap() {
        let pauses: Vec<Duration> = asking_again().take(12).collect();
        assert_eq!(pauses.len(), 12, "the pauses never run out");
        // Jitter adds up to as much again as each pause.
        assert!(
            (ASK_AGAIN..=2 * ASK_AGAIN).contains(&pauses[0]),
            "{pauses:?}"
        );
        assert!(
            pauses[6..]
                .iter()
                .all(|p| (ASK_AGAIN_MAX..=2 * ASK_AGAIN_MAX).contains(p)),
            "{pauses:?}"
        );
    }
}
