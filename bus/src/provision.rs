//! Creating (or checking) what the protocol needs on the server, and waiting for what another
//! party creates: `flotilla setup` and every coordinator command create; a least-privileged agent
//! may only wait.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use backon::{BackoffBuilder, ExponentialBuilder, Retryable};

use crate::BusError;

/// What provisioning found of one stream (a key-value bucket is a stream too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provisioned {
    /// It did not exist; it was created as Flotilla wants it.
    Created,
    /// It existed as Flotilla wants it.
    Found,
    /// It existed with other settings, left as they are: an operator decides.
    Differs(Vec<Difference>),
    /// It existed with other replicas or placement, which were changed as asked (`flotilla
    /// setup --update`); what still differs is left as it is.
    Updated(Vec<Difference>),
}

/// One setting of an existing stream that is not what Flotilla wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub setting: &'static str,
    pub wanted: String,
    pub found: String,
}

impl Difference {
    /// Whether it is one that `flotilla setup --update` changes in place: the replica count
    /// or the placement.
    pub fn is_replication(&self) -> bool {
        matches!(self.setting, REPLICAS | PLACEMENT)
    }
}

const REPLICAS: &str = "replicas";
const PLACEMENT: &str = "placement";

/// How long a lookup waits for a stream that does not answer: one whose leader was on a node
/// just lost answers again once the others elect a new one (JetStream: 4 to 9 s).
pub const ELECTION_WAIT: Duration = Duration::from_secs(20);

/// How long one lookup of [`inspect`] waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Looks `wanted.name` up: `None` when the stream does not exist, else how its settings differ
/// from `wanted` (empty when they match). A stream that does not answer (no leader yet) is
/// asked again for up to [`ELECTION_WAIT`].
pub async fn inspect(
    js: &jetstream::Context,
    wanted: &stream::Config,
) -> Result<Option<Vec<Difference>>, BusError> {
    let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
    // A stream info answers in milliseconds; one that does not is asked again soon.
    let mut quick = js.clone();
    quick.set_timeout(ATTEMPT_TIMEOUT);
    let mut warned = false;
    loop {
        match inspect_once(&quick, wanted).await {
            Ok(found) => return Ok(found),
            Err(Lookup::Unanswered(e)) if tokio::time::Instant::now() < deadline => {
                if !warned {
                    tracing::warn!(stream = %wanted.name, error = %chain(e.as_ref()),
                        "the stream does not answer (a NATS node lost?), waiting for its new leader");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(Lookup::Unanswered(source) | Lookup::Failed(source)) => {
                return Err(BusError::Inspect {
                    name: wanted.name.clone(),
                    source,
                });
            }
        }
    }
}

/// Why one lookup failed: no answer in time (a leader election?), or anything else.
enum Lookup {
    Unanswered(Box<dyn std::error::Error + Send + Sync>),
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

async fn inspect_once(
    js: &jetstream::Context,
    wanted: &stream::Config,
) -> Result<Option<Vec<Difference>>, Lookup> {
    use jetstream::context::GetStreamErrorKind as Kind;
    match js.get_stream(&wanted.name).await {
        Ok(mut found) => {
            let info = found.info().await.map_err(|e| match e.kind() {
                jetstream::context::RequestErrorKind::TimedOut => Lookup::Unanswered(Box::new(e)),
                _ => Lookup::Failed(Box::new(e)),
            })?;
            Ok(Some(differences(wanted, &info.config)))
        }
        Err(e) => match e.kind() {
            // Only "stream not found" means it is missing; any other error is real.
            Kind::JetStream(api) if api.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            // A timeout, or the cluster saying it has no leader for now (503).
            Kind::Request => Err(Lookup::Unanswered(Box::new(e))),
            Kind::JetStream(api) if api.code() == 503 => Err(Lookup::Unanswered(Box::new(e))),
            _ => Err(Lookup::Failed(Box::new(e))),
        },
    }
}

/// Creates the stream when it is missing; an existing one is reported, never changed.
pub async fn provision(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<Provisioned, BusError> {
    if let Some(differences) = inspect(js, &wanted).await? {
        return Ok(found(differences));
    }
    let name = wanted.name.clone();
    js.create_stream(wanted)
        .await
        .map_err(|source| BusError::Stream { name, source })?;
    Ok(Provisioned::Created)
}

/// [`Provisioned::Found`] or [`Provisioned::Differs`].
pub fn found(differences: Vec<Difference>) -> Provisioned {
    if differences.is_empty() {
        Provisioned::Found
    } else {
        Provisioned::Differs(differences)
    }
}

/// The settings Flotilla sets, compared as the server reports them (0 and -1 both mean
/// "unlimited"; a zero duplicate window means the server's default).
pub fn differences(wanted: &stream::Config, found: &stream::Config) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut compare = |setting, wanted: String, found: String| {
        if wanted != found {
            out.push(Difference {
                setting,
                wanted,
                found,
            });
        }
    };
    let subjects = |c: &stream::Config| {
        let set: BTreeSet<_> = c.subjects.iter().cloned().collect();
        set.into_iter().collect::<Vec<_>>().join(", ")
    };
    compare("subjects", subjects(wanted), subjects(found));
    compare(
        "retention",
        lower(&wanted.retention),
        lower(&found.retention),
    );
    compare("storage", lower(&wanted.storage), lower(&found.storage));
    compare("discard", lower(&wanted.discard), lower(&found.discard));
    compare("max_age", duration(wanted.max_age), duration(found.max_age));
    compare("max_bytes", limit(wanted.max_bytes), limit(found.max_bytes));
    compare(
        "max_messages",
        limit(wanted.max_messages),
        limit(found.max_messages),
    );
    compare(
        "max_messages_per_subject",
        limit(wanted.max_messages_per_subject),
        limit(found.max_messages_per_subject),
    );
    compare(
        "max_consumers",
        limit(i64::from(wanted.max_consumers)),
        limit(i64::from(found.max_consumers)),
    );
    // 0 is what a config without a count says, and the server makes it 1.
    compare(
        REPLICAS,
        wanted.num_replicas.max(1).to_string(),
        found.num_replicas.max(1).to_string(),
    );
    if let Some(placement) = &wanted.placement {
        compare(
            PLACEMENT,
            placement_text(Some(placement)),
            placement_text(found.placement.as_ref()),
        );
    }
    if !wanted.duplicate_window.is_zero() {
        compare(
            "duplicate_window",
            duration(wanted.duplicate_window),
            duration(found.duplicate_window),
        );
    }
    // Only where Flotilla reads by direct get (the commands stream): without it, agents
    // cannot catch up.
    if let Some(republish) = &wanted.republish {
        let text = |r: Option<&stream::Republish>| {
            r.map_or("none".to_owned(), |r| {
                format!("{} -> {}", r.source, r.destination)
            })
        };
        compare(
            "republish",
            text(Some(republish)),
            text(found.republish.as_ref()),
        );
    }
    if wanted.allow_direct {
        compare(
            "allow_direct",
            wanted.allow_direct.to_string(),
            found.allow_direct.to_string(),
        );
    }
    out
}

/// `cluster east, tags ssd, fast`, or `none`.
fn placement_text(placement: Option<&stream::Placement>) -> String {
    let Some(placement) = placement else {
        return "none".into();
    };
    let mut parts = Vec::new();
    if let Some(cluster) = &placement.cluster {
        parts.push(format!("cluster {cluster}"));
    }
    if !placement.tags.is_empty() {
        let tags: BTreeSet<_> = placement.tags.iter().map(String::as_str).collect();
        parts.push(format!(
            "tags {}",
            tags.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

fn lower(value: &impl std::fmt::Debug) -> String {
    format!("{value:?}").to_lowercase()
}

fn duration(d: Duration) -> String {
    if d.is_zero() {
        "unlimited".into()
    } else {
        humantime::format_duration(d).to_string()
    }
}

fn limit(n: i64) -> String {
    if n <= 0 {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

/// How an agent waits: exponential backoff from 100 ms doubling to 2 s, each delay plus up to as
/// much again at random (a fleet started at once does not ask in step), for as long as it takes.
/// So it goes on at most 4 s after what it waits for appears.
pub fn waiting_backoff() -> impl BackoffBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// Retries `attempt` with [`waiting_backoff`] until it succeeds. The first failure logs
/// `waiting` once, with its cause; later ones log only at debug. Success after a wait logs
/// `ready`. Cancel it by dropping the future.
pub async fn wait_for<T, E, F, Fut>(waiting: &str, ready: &str, attempt: F) -> T
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut waited = false;
    let result = attempt
        .retry(waiting_backoff())
        .notify(|e: &E, delay: Duration| {
            if waited {
                tracing::debug!(error = %chain(e), ?delay, "still {waiting}");
            } else {
                tracing::warn!(error = %chain(e), "{waiting}");
                waited = true;
            }
        })
        .await;
    let Ok(value) = result else {
        unreachable!("the backoff has no maximum of tries")
    };
    if waited {
        tracing::info!("{ready}");
    }
    value
}

/// `e` and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// True for the JetStream API's answers that mean "not now": the cluster has no leader or quorum
/// for it yet.
pub fn electing(code: jetstream::ErrorCode) -> bool {
    use jetstream::ErrorCode as Code;
    [
        Code::CLUSTER_NOT_AVAILABLE,
        Code::CLUSTER_NO_PEERS,
        Code::CLUSTER_INCOMPLETE,
        Code::CLUSTER_NOT_ACTIVE,
        Code::CLUSTER_NOT_LEADER,
        Code::CLUSTER_NOT_ASSIGNED,
    ]
    .contains(&code)
}
