//! NATS plumbing that the coordinator and the agent share: connecting with a server version
//! floor, and the JetStream streams both sides rely on, declared once.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use flotilla_schemas::subjects::Subjects;

/// The oldest nats-server Flotilla runs against. Older servers lack `sync_interval` (acked
/// messages can be lost on power failure), carry known security advisories fixed in 2025–2026,
/// and answer JetStream API calls in a shape async-nats cannot parse.
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 7);

/// Why the bus could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error(
        "nats-server {found} at {url} is older than the supported minimum {}.{}.{} (known advisories, no fsync control); set allow_old_server to override",
        MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1, MIN_SERVER_VERSION.2
    )]
    OldServer { url: String, found: String },
    #[error(
        "nats-server at {url} has JetStream disabled; Flotilla needs it (run with -js or a jetstream {{}} block)"
    )]
    NoJetStream { url: String },
    #[error("cannot create or open the JetStream stream {name}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct BusOptions {
    pub url: String,
    pub name: String,
    pub connect_timeout: Duration,
    pub allow_old_server: bool,
}

/// Connects once, failing fast (no retry), and checks the server.
pub async fn connect(options: &BusOptions) -> Result<async_nats::Client, BusError> {
    let client = async_nats::ConnectOptions::new()
        .name(&options.name)
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .connect(&options.url)
        .await
        .map_err(|source| BusError::Connect {
            url: options.url.clone(),
            source,
        })?;
    let info = client.server_info();
    if !options.allow_old_server && !version_supported(&info.version) {
        return Err(BusError::OldServer {
            url: options.url.clone(),
            found: info.version,
        });
    }
    if !info.jetstream {
        return Err(BusError::NoJetStream {
            url: options.url.clone(),
        });
    }
    Ok(client)
}

/// True when `version` (e.g. `2.15.1`, `2.12.7-RC.1`) is at least [`MIN_SERVER_VERSION`].
pub fn version_supported(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    match (
        parts.next().flatten(),
        parts.next().flatten(),
        parts.next().flatten(),
    ) {
        (Some(a), Some(b), Some(c)) => (a, b, c) >= MIN_SERVER_VERSION,
        _ => false,
    }
}

/// The commands stream: a work queue, so a command is removed once its agent has acked it
/// (the agent's journal, not the broker, remembers it from then on). `Nats-Msg-Id` dedupes
/// re-sends by the coordinator within the window.
pub async fn commands_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, BusError> {
    let name = subjects.commands_stream();
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        description: Some("Flotilla commands, one subject per agent; removed once acked".into()),
        subjects: vec![subjects.all_commands()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|source| BusError::Stream { name, source })
}

/// The events stream: progress and results of every run, kept as the audit log from which a
/// coordinator (this one after a crash, or another machine's) reads a run back.
pub async fn events_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, BusError> {
    let name = subjects.events_stream();
    js.get_or_create_stream(stream::Config {
        name: name.clone(),
        description: Some("Flotilla progress and results: the audit log of every run".into()),
        subjects: vec![subjects.all_events()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 1 << 30,
        ..Default::default()
    })
    .await
    .map_err(|source| BusError::Stream { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_floor() {
        assert!(version_supported("2.12.7"));
        assert!(version_supported("2.15.1"));
        assert!(version_supported("3.0.0"));
        assert!(!version_supported("2.12.6"));
        assert!(!version_supported("2.9.10"));
        assert!(!version_supported("2.12.7-RC.1") || version_supported("2.12.7"));
        assert!(!version_supported("garbage"));
    }
}
