//! Finding the live agents: one presence request, every agent answers.

use std::time::Duration;

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

/// Asks every agent to report and gathers the answers for at most `window`; stops earlier once
/// answers have stopped coming for a short while.
pub async fn discover(
    client: &async_nats::Client,
    subjects: &Subjects,
    window: Duration,
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
    loop {
        let wait_until = if found.is_empty() {
            deadline
        } else {
            deadline.min(Instant::now() + QUIET)
        };
        match tokio::time::timeout_at(wait_until, answers.next()).await {
            // A status message ("no responders" when no agent listens) is not an answer.
            Ok(Some(message)) if message.status.is_some() => {}
            Ok(Some(message)) => match decode::<Presence>(&message.payload) {
                Ok(presence) => found.push(presence),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed presence answer"),
            },
            Ok(None) | Err(_) => break,
        }
    }
    found.sort_by(|a, b| (&a.service, &a.instance).cmp(&(&b.service, &b.instance)));
    found.dedup_by(|a, b| a.service == b.service && a.instance == b.instance);
    Ok(found)
}
