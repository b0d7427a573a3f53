//! NATS plumbing that the coordinator and the agent share: connecting with a server version
//! floor, and the JetStream streams both sides rely on, declared once.

pub mod outage;
pub mod plan_files;
mod probe;
pub mod provision;
pub mod registry;
pub mod replication;
mod servers;
pub mod signing;

pub use servers::{ServerList, reconnect_delay};

/// The defaults of the `[nats]` section, which the agent's and the coordinator's configurations
/// spell alike: one place, so the two cannot drift apart.
pub mod nats_defaults {
    use std::time::Duration;

    pub fn prefix() -> String {
        flotilla_schemas::subjects::DEFAULT_PREFIX.to_owned()
    }

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

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
    #[error("{}", no_jetstream(url, domain.as_deref()))]
    NoJetStream { url: String, domain: Option<String> },
    #[error("cannot read NATS credentials from {path}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the TLS file {path}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a TLS client certificate needs both tls_cert_file and tls_key_file; only {given} is set"
    )]
    HalfCertificate { given: &'static str },
    #[error("cannot look up the JetStream stream {name}")]
    Inspect {
        name: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot create or open the JetStream stream {name}")]
    Stream {
        name: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    #[error("cannot change the replicas of the JetStream stream {name}")]
    Update {
        name: String,
        #[source]
        source: jetstream::context::UpdateStreamError,
    },
    #[error("{}", too_many_replicas(*wanted, *nodes, cluster.as_deref()))]
    TooManyReplicas {
        wanted: usize,
        nodes: usize,
        cluster: Option<String>,
    },
    #[error(
        "replicas = {wanted} is out of range: JetStream keeps 1 to {} copies of a stream",
        replication::MAX_REPLICAS
    )]
    ReplicasOutOfRange { wanted: usize },
}

fn no_jetstream(url: &str, domain: Option<&str>) -> String {
    match domain {
        None => format!(
            "nats-server at {url} has JetStream disabled; Flotilla needs it (run with -js or a \
             jetstream {{}} block; on a leaf node, set nats.domain to the hub's domain)"
        ),
        Some(domain) => format!(
            "no JetStream answers in domain {domain} through nats-server at {url}; Flotilla \
             needs it (is the leaf node connected to its hub, and is the hub's domain {domain}?)"
        ),
    }
}

fn too_many_replicas(wanted: usize, nodes: usize, cluster: Option<&str>) -> String {
    match cluster {
        Some(cluster) => format!(
            "{wanted} replicas asked, but the NATS cluster {cluster} cannot place them (no \
             suitable peers; it announces {nodes} node(s) up): set replicas to at most its \
             nodes (nats.replicas, --replicas), or bring its nodes up"
        ),
        None => format!(
            "{wanted} replicas asked, but the NATS server is not clustered and keeps 1: set \
             replicas to 1 (nats.replicas, --replicas), or run a cluster (docs/deployment.md)"
        ),
    }
}

impl BusError {
    /// Whether waiting may cure it: the server is down, unreachable, still starting or slow
    /// (refused, DNS, timeout, I/O). A configuration mistake (a credentials or TLS file missing
    /// or unreadable, a malformed URL or seed, a TLS setup the server refuses, credentials the
    /// server rejects, a server too old) needs an operator, and retrying it only hides it.
    pub fn is_transient(&self) -> bool {
        use async_nats::ConnectErrorKind as Kind;
        match self {
            BusError::Connect { source, .. } => match source.kind() {
                Kind::Dns | Kind::TimedOut | Kind::Io | Kind::MaxReconnects => true,
                Kind::ServerParse
                | Kind::Authentication
                | Kind::AuthorizationViolation
                | Kind::Tls => false,
            },
            BusError::NoJetStream { .. } | BusError::Stream { .. } | BusError::Inspect { .. } => {
                true
            }
            BusError::Update { .. } => true,
            BusError::OldServer { .. }
            | BusError::TooManyReplicas { .. }
            | BusError::ReplicasOutOfRange { .. }
            | BusError::Credentials { .. }
            | BusError::TlsFile { .. }
            | BusError::HalfCertificate { .. } => false,
        }
    }
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// Every node the client may use; all are tried at start, in random order.
    pub servers: ServerList,
    pub name: String,
    pub connect_timeout: Duration,
    pub allow_old_server: bool,
    pub auth: Credentials,
    /// The JetStream domain that holds the streams (`[nats] domain`), for a client of a leaf
    /// node whose hub has one; `None`: the connected server's own JetStream.
    pub domain: Option<String>,
}

/// The JetStream API of `client`, in `domain` when one is given.
pub fn jetstream(client: async_nats::Client, domain: Option<&str>) -> jetstream::Context {
    match domain {
        Some(domain) => jetstream::with_domain(client, domain),
        None => jetstream::new(client),
    }
}

/// Who the client is to the server, and how the connection is protected. Secrets are read from
/// files, never taken from the command line.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name, with `password` or `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// A file holding an nkey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed_file: Option<std::path::PathBuf>,
    /// A `.creds` file (JWT and seed), for operator/JWT deployments.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// CA certificate that signs the server's certificate; setting it requires TLS.
    #[serde(default)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key, for mutual TLS.
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// A private reply-inbox prefix (e.g. `_INBOX_agent-inference-a`), so that the server can
    /// keep every identity's replies to itself.
    #[serde(default)]
    pub inbox_prefix: Option<String>,
}

impl Credentials {
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|source| BusError::Credentials {
                    path: path.display().to_string(),
                    source,
                })
        };
        if let Some(user) = &self.user {
            let password = match (&self.password, &self.password_file) {
                (_, Some(file)) => read(file)?,
                (Some(password), None) => password.clone(),
                (None, None) => String::new(),
            };
            options = options.user_and_password(user.clone(), password);
        }
        if let Some(file) = &self.nkey_seed_file {
            options = options.nkey(read(file)?);
        }
        if let Some(file) = &self.credentials_file {
            options =
                options
                    .credentials_file(file)
                    .await
                    .map_err(|source| BusError::Credentials {
                        path: file.display().to_string(),
                        source,
                    })?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            // Half a certificate would fail later, at the server, as "certificate required".
            (Some(_), None) => {
                return Err(BusError::HalfCertificate {
                    given: "tls_cert_file",
                });
            }
            (None, Some(_)) => {
                return Err(BusError::HalfCertificate {
                    given: "tls_key_file",
                });
            }
            (None, None) => {}
        }
        // async-nats reads these only once connected, and reports a missing one as a TLS error.
        for file in [&self.tls_ca_file, &self.tls_cert_file, &self.tls_key_file]
            .into_iter()
            .flatten()
        {
            std::fs::File::open(file).map_err(|source| BusError::TlsFile {
                path: file.display().to_string(),
                source,
            })?;
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// Connects once to the first node of `options.servers` that answers (each is tried once,
/// failing fast when none does), and checks the server. Once connected, the client reconnects
/// by itself to any node it knows (those given and those the cluster announces), with
/// [`reconnect_delay`] between attempts.
pub async fn connect(options: &BusOptions) -> Result<async_nats::Client, BusError> {
    connect_notifying(options, None).await
}

/// [`connect`], and `reconnected` is notified whenever the client (re)connects or the server
/// dropped messages for it (a slow consumer): the moments when core NATS messages may have been
/// missed. By then the client has sent its subscriptions again, ahead of anything it sends next.
pub async fn connect_notifying(
    options: &BusOptions,
    reconnected: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> Result<async_nats::Client, BusError> {
    let mut connect = options
        .auth
        .apply(async_nats::ConnectOptions::new())
        .await?;
    if let Some(notify) = reconnected {
        connect = connect.event_callback(move |event| {
            let notify = notify.clone();
            async move {
                if matches!(
                    event,
                    async_nats::Event::Connected | async_nats::Event::SlowConsumer(_)
                ) {
                    notify.notify_one();
                }
            }
        });
    }
    let client = connect
        .name(&options.name)
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connect(options.servers.as_slice())
        .await
        .map_err(|source| BusError::Connect {
            url: options.servers.to_string(),
            source,
        })?;
    let info = client.server_info();
    if !options.allow_old_server && !version_supported(&info.version) {
        return Err(BusError::OldServer {
            url: options.servers.to_string(),
            found: info.version,
        });
    }
    if probe::jetstream(&client, options.domain.as_deref()).await == probe::Probe::Nobody {
        tracing::debug!(jetstream_in_info = info.jetstream, "no JetStream answers");
        return Err(BusError::NoJetStream {
            url: options.servers.to_string(),
            domain: options.domain.clone(),
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

/// The commands stream: the last command of each agent, under limits retention
/// (`flotilla.command.v2`). The stream republishes every command it stores to the agent's
/// delivery subject, where the agent takes it live through a core subscription (so a command the
/// stream refused reaches nobody); after every (re)connect the agent reads the one stored here
/// with a direct get of the last message on its subject: the server keeps no consumer, no pull request and no ack state per
/// agent, only that one message, which the next command replaces. The agent's journal, not the
/// broker, remembers what was handled. `Nats-Msg-Id` dedupes re-sends by the coordinator
/// within the window.
pub fn commands_stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.commands_stream(),
        description: Some(
            "Flotilla commands, one subject per agent; the last command of each agent kept".into(),
        ),
        subjects: vec![subjects.all_commands()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(120),
        // The agents' catch-up read, which permissions can grant per agent subject.
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subjects.all_commands(),
            destination: subjects.all_command_deliveries(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// The events stream: progress and results of every run, kept as the audit log from which a
/// coordinator (this one after a crash, or another machine's) reads a run back.
pub fn events_stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.events_stream(),
        description: Some("Flotilla progress and results: the audit log of every run".into()),
        subjects: vec![subjects.all_events()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(30 * 24 * 3600),
        max_bytes: 1 << 30,
        ..Default::default()
    }
}

/// Creates or opens the commands stream ([`commands_stream_config`]).
pub async fn commands_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, BusError> {
    get_or_create(js, commands_stream_config(subjects)).await
}

/// Creates or opens the events stream ([`events_stream_config`]).
pub async fn events_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, BusError> {
    get_or_create(js, events_stream_config(subjects)).await
}

async fn get_or_create(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, BusError> {
    let name = config.name.clone();
    let what = format!("opening the stream {name}");
    let deadline = tokio::time::Instant::now() + outage::OUTAGE_TOLERANCE;
    // A cluster electing the stream's leader (or the meta leader) does not answer for seconds.
    let attempt = || js.get_or_create_stream(config.clone());
    outage::retry_until(&what, deadline, attempt, |e| {
        !matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(api) if !provision::electing(api.error_code()))
    })
    .await
    .map_err(|source| BusError::Stream { name, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn half_a_client_certificate_is_refused_before_connecting() {
        let cert_only = Credentials {
            tls_cert_file: Some("client.pem".into()),
            ..Default::default()
        };
        let key_only = Credentials {
            tls_key_file: Some("client-key.pem".into()),
            ..Default::default()
        };
        for (credentials, given) in [(cert_only, "tls_cert_file"), (key_only, "tls_key_file")] {
            let Err(error) = credentials.apply(async_nats::ConnectOptions::new()).await else {
                panic!("half a certificate ({given}) was accepted");
            };
            assert!(
                matches!(error, BusError::HalfCertificate { given: g } if g == given),
                "{error}"
            );
        }
    }

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
