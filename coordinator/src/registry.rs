//! Reading the agent registry (`flotilla_bus::registry`): every agent's latest entry with the
//! time the broker stored it, and forgetting the entries of decommissioned agents.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use flotilla_schemas::subjects::Subjects;
use flotilla_schemas::{Registration, decode};
use futures::StreamExt;
use time::OffsetDateTime;

/// One entry of the registry.
#[derive(Debug, Clone)]
pub struct Registered {
    /// `<service>.<instance>`.
    pub key: String,
    /// What the agent wrote; `None` when this coordinator cannot read it (another schema).
    pub entry: Option<Registration>,
    /// When the broker stored it: the agent's last refresh, by the broker's clock.
    pub stored_at: OffsetDateTime,
}

impl Registered {
    /// Whether its agent refreshed it within `inactive_after` of `now`.
    pub fn active(&self, now: OffsetDateTime, inactive_after: Duration) -> bool {
        now - self.stored_at <= inactive_after
    }
}

/// What the registry holds, and whether it is complete: not while the bucket is younger than
/// `settling` (agents that waited for it may not have written theirs yet).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub entries: Vec<Registered>,
    pub settled: bool,
}

/// The least time one read of the whole registry is given before discovery goes on without it
/// (a longer discovery window gives it the whole window). Without the registry, discovery stops
/// at the first pause in the answers; at 50,000 agents, whose answers arrive on the same
/// connection during the read, one run found a quarter of the fleet, likely so.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the registry could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot open the agent registry {bucket}")]
    Open {
        bucket: String,
        #[source]
        source: jetstream::context::KeyValueError,
    },
    #[error("cannot forget {key} in the agent registry")]
    Purge {
        key: String,
        #[source]
        source: jetstream::kv::PurgeError,
    },
}

/// Every agent's latest entry (an empty, unsettled snapshot when the bucket cannot be read
/// `within` that time, e.g. it does not exist yet): one ordered consumer delivering the last
/// message per key.
pub async fn read(
    js: &jetstream::Context,
    subjects: &Subjects,
    settling: Duration,
    within: Duration,
) -> Snapshot {
    match tokio::time::timeout(within, read_all(js, subjects, settling)).await {
        Ok(Ok(snapshot)) => snapshot,
        Ok(Err(e)) => {
            tracing::debug!(error = %flotilla_telemetry::error_chain(e.as_ref()), "agent registry unreadable");
            Snapshot::default()
        }
        Err(_) => {
            tracing::warn!(
                "the agent registry did not answer in time; discovery goes on without it"
            );
            Snapshot::default()
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn read_all(
    js: &jetstream::Context,
    subjects: &Subjects,
    settling: Duration,
) -> Result<Snapshot, BoxError> {
    let bucket = subjects.agents_bucket();
    let mut stream = js.get_stream(format!("KV_{bucket}")).await?;
    let created = stream.info().await?.created;
    let settled = OffsetDateTime::now_utc() - created >= settling;
    let prefix = format!("$KV.{bucket}.");
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: format!("{prefix}>"),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await?;
    let mut entries = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(Snapshot { entries, settled });
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message.info()?;
        let (pending, stored_at) = (info.pending, info.published);
        let removed = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        if !removed && let Some(key) = message.subject.strip_prefix(prefix.as_str()) {
            entries.push(Registered {
                key: key.to_owned(),
                entry: decode::<Registration>(&message.payload).ok(),
                stored_at,
            });
        }
        if pending == 0 {
            break;
        }
    }
    Ok(Snapshot { entries, settled })
}

/// Removes `keys` from the registry (their history too); a key not there is no error.
pub async fn forget(
    js: &jetstream::Context,
    subjects: &Subjects,
    keys: &[String],
) -> Result<(), RegistryError> {
    let bucket = subjects.agents_bucket();
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|source| RegistryError::Open { bucket, source })?;
    for key in keys {
        kv.purge(key).await.map_err(|source| RegistryError::Purge {
            key: key.clone(),
            source,
        })?;
    }
    Ok(())
}
