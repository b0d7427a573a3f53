//! Finding the live agents: one presence request, every agent answers.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::StatusCode;

use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Presence, decode};
use futures::StreamExt;
use tokio::time::Instant;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("cannot subscribe to the presence inbox")]
    Subscribe(#[source] async_nats::SubscribeError),
    #[error("cannot publish the presence request")]
    Publish(#[source] async_nats::PublishError),
}

/// How many agents the bus knows of: each agent keeps one durable consumer on the commands
/// stream. `None` when the stream cannot be read (e.g. it does not exist yet), or when it is
/// younger than [`SETTLING`]: agents that started before it are still creating their consumers
/// (they answer presence meanwhile), so the count would stop discovery short of them.
pub async fn known_agents(client: &async_nats::Client, subjects: &Subjects) -> Option<usize> {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(subjects.commands_stream()).await.ok()?;
    let info = stream.info().await.ok()?;
    let age = time::OffsetDateTime::now_utc() - info.created;
    (age >= SETTLING).then_some(info.state.consumer_count)
}

/// How long after the commands stream appears its consumer count is not trusted: a waiting agent
/// looks again at most 4 s later (`flotilla_bus::provision::waiting_backoff`), with room to spare.
const SETTLING: Duration = Duration::from_secs(10);

/// Asks every agent to report and gathers the answers for at most `window`; stops as soon as
/// `expected` agents have answered (see [`known_agents`]), or once answers have stopped coming
/// for a short while. The first is the common case, and saves the quiet period: an agent that
/// is known but does not answer (it is down) costs the quiet period, not the window.
pub async fn discover(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
    expected: Option<usize>,
) -> Result<Vec<Presence>, DiscoveryError> {
    const QUIET: Duration = Duration::from_millis(250);
    let inbox = client.new_inbox();
    let mut answers = client
        .subscribe(inbox.clone())
        .await
        .map_err(DiscoveryError::Subscribe)?;
    client
        .publish_with_reply(subjects.presence(), inbox, Vec::new().into())
        .await
        .map_err(DiscoveryError::Publish)?;
    let _ = client.flush().await;
    let deadline = Instant::now() + window;
    let mut found: Vec<Presence> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let wait_until = if found.is_empty() {
            deadline
        } else {
            deadline.min(Instant::now() + QUIET)
        };
        match tokio::time::timeout_at(wait_until, answers.next()).await {
            // "No responders": no agent listens at all, none will answer.
            Ok(Some(message)) if message.status == Some(StatusCode::NO_RESPONDERS) => break,
            Ok(Some(message)) if message.status.is_some() => {}
            Ok(Some(message)) => match decode::<Presence>(&message.payload) {
                Ok(presence) => {
                    if seen.insert((presence.service.clone(), presence.instance.clone())) {
                        found.push(presence);
                    }
                    if expected.is_some_and(|n| n > 0 && found.len() >= n) {
                        break;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed presence answer"),
            },
            Ok(None) | Err(_) => break,
        }
    }
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    Ok(found)
}
