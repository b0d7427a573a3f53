//! The agent registry: a key-value bucket with one small entry per agent (`<service>.<instance>`,
//! a [`flotilla_schemas::Registration`]), which the agent writes when it starts and refreshes
//! every [`REFRESH`]. Discovery waits only for the agents whose entry the broker stored within
//! the coordinator's inactivity threshold ([`INACTIVE_AFTER`] by default); an entry nobody
//! refreshed for [`EXPIRES`] is dropped by the bucket itself. So the broker keeps one message per
//! agent, an idle fleet costs it one write per agent per [`REFRESH`] whatever its age, and a
//! decommissioned agent is neither waited for forever nor kept forever.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use flotilla_schemas::subjects::Subjects;

/// How often an agent writes its entry again.
pub const REFRESH: Duration = Duration::from_secs(10 * 60);

/// An entry stored longer ago than this is inactive (three refreshes missed): discovery does
/// not wait for its agent and `flotilla agents` shows it as inactive. The coordinator's
/// `agent_inactive_after` changes it.
pub const INACTIVE_AFTER: Duration = Duration::from_secs(30 * 60);

/// An entry not refreshed for this long expires (the bucket's `max_age`).
pub const EXPIRES: Duration = Duration::from_secs(7 * 24 * 3600);

/// The registry bucket as Flotilla wants it: the latest entry per agent only, expiring.
pub fn bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.agents_bucket(),
        description: "Flotilla agent registry: one entry per agent, refreshed rarely".into(),
        history: 1,
        max_age: EXPIRES,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// The subject an agent writes its entry on (`$KV.<bucket>.<service>.<instance>`): a plain
/// JetStream publish, so that an agent needs no permission but this subject. A site's agent
/// (a JetStream domain) prefixes it with the domain's API, `$JS.<domain>.API.`, as key-value
/// puts into another domain go.
pub fn entry_subject(
    subjects: &Subjects,
    service: &flotilla_schemas::ServiceName,
    instance: &flotilla_schemas::InstanceId,
) -> String {
    format!(
        "$KV.{}.{}",
        subjects.agents_bucket(),
        subjects.agent_key(service, instance)
    )
}
