//! The agent's entry in the agent registry (`flotilla_bus::registry`): written when the agent
//! starts and again every `REFRESH` (give or take a tenth, so a fleet started together does
//! not write together), until shutdown. It is the only trace the broker keeps of an idle agent,
//! and discovery waits for the agents whose entry is fresh.

use std::time::Duration;

use async_nats::jetstream;
use flotilla_bus::provision::waiting_backoff;
use flotilla_bus::registry::{REFRESH, entry_subject};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Registration, encode};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::Lifecycle;
use flotilla_telemetry::error_chain;

/// Why one write of the entry failed.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("cannot publish to the agent registry")]
    Publish(#[from] jetstream::context::PublishError),
}

/// Starts keeping the agent's entry until `shutdown`: the first write now, retried with the
/// waiting backoff while the bucket is missing or the broker unreachable.
pub(crate) fn spawn(
    js: &jetstream::Context,
    subjects: &Subjects,
    lifecycle: &Lifecycle,
    key_id: &str,
    shutdown: &CancellationToken,
) {
    let config = &lifecycle.config;
    let entry = Registration {
        schema: Default::default(),
        service: config.service.name.clone(),
        instance: config.agent.instance.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        host: hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        labels: config.agent.labels.clone(),
        key_id: Some(key_id.to_owned()),
        started_at: OffsetDateTime::now_utc(),
        refreshed_at: OffsetDateTime::now_utc(),
    };
    // Labels and host are the operator's, but a secret value in them is never published.
    let entry = lifecycle.redactor.scrubbed(&entry).unwrap_or(entry);
    let mut subject = entry_subject(subjects, &config.service.name, &config.agent.instance);
    // Through a leaf node to a hub's domain, as a key-value put goes there (the hub maps its
    // domain's API prefix back).
    if let Some(domain) = &config.nats.domain {
        subject = format!("$JS.{domain}.API.{subject}");
    }
    tokio::spawn(keep(js.clone(), subject, entry, shutdown.clone()));
}

async fn keep(
    js: jetstream::Context,
    subject: String,
    mut entry: Registration,
    shutdown: CancellationToken,
) {
    use backon::BackoffBuilder;
    let mut backoff = waiting_backoff().build();
    let mut warned = false;
    loop {
        entry.refreshed_at = OffsetDateTime::now_utc();
        let wait = match register(&js, &subject, &entry).await {
            Ok(()) => {
                tracing::debug!(%subject, "registered");
                backoff = waiting_backoff().build();
                warned = false;
                jittered(REFRESH)
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %error_chain(&e),
                        "not in the agent registry yet (run `flotilla setup`); retrying");
                    warned = true;
                }
                backoff.next().unwrap_or(REFRESH)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One acknowledged write of the entry.
async fn register(
    js: &jetstream::Context,
    subject: &str,
    entry: &Registration,
) -> Result<(), RegisterError> {
    js.publish(subject.to_owned(), encode(entry).into())
        .await?
        .await?;
    Ok(())
}

/// `period` plus or minus up to a tenth of it.
fn jittered(period: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tenth = period / 10;
    // A fraction in [0, 1) from the clock's nanoseconds: spread enough across a fleet.
    let fraction = f64::from(nanos) / 1e9;
    period - tenth + tenth.mul_f64(2.0 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_stay_within_a_tenth_of_the_period() {
        for _ in 0..100 {
            let d = jittered(REFRESH);
            assert!(
                d >= REFRESH - REFRESH / 10 && d <= REFRESH + REFRESH / 10,
                "{d:?}"
            );
        }
    }
}
