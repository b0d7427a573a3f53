//! `flotilla setup`: creates (or checks) everything the protocol needs on the server, so that
//! least-privileged agents find it from their first start. Every other command creates what is
//! missing too (the order of operations never matters); this one reports what it found.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use backon::{ExponentialBuilder, Retryable};
use flotilla_bus::BusError;
use flotilla_bus::provision::{self, Difference, Provisioned};
use flotilla_bus::replication::{self, Replication};
use flotilla_schemas::subjects::Subjects;
use flotilla_telemetry::error_chain;
use serde::Serialize;

use super::{connect_bus, fail};
use crate::cli::{Cli, CommandKind, OutputFormat};
use crate::exit::{self, CommandError, Outcome};
use crate::sanitize::one_line;
use crate::store::Store;

/// One thing on the server and what provisioning found of it.
#[derive(Debug, Serialize)]
pub(crate) struct Resource {
    kind: &'static str,
    name: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    differences: Vec<Setting>,
    /// What to do about it, for a resource Flotilla no longer uses.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct Setting {
    setting: &'static str,
    wanted: String,
    found: String,
}

impl Resource {
    fn new(kind: &'static str, name: String, provisioned: Provisioned) -> Self {
        let (status, differences) = match provisioned {
            Provisioned::Created => ("created", Vec::new()),
            Provisioned::Found => ("found", Vec::new()),
            Provisioned::Differs(d) => ("differs", d),
            Provisioned::Updated(d) => ("updated", d),
        };
        let differences = differences
            .into_iter()
            .map(
                |Difference {
                     setting,
                     wanted,
                     found,
                 }| Setting {
                    setting,
                    wanted,
                    found,
                },
            )
            .collect();
        Self {
            kind,
            name,
            status,
            differences,
            note: None,
        }
    }

    /// The v1 work-queue commands stream, when it is still there: nothing of this version reads
    /// or writes it, and its agent consumers (one per agent that ever ran, rescheduled pods
    /// included) are kept until it is removed. Left alone: agents older than v2 may still run.
    async fn obsolete_commands_stream(
        js: &jetstream::Context,
        subjects: &Subjects,
    ) -> Option<Self> {
        let name = subjects.legacy_commands_stream();
        let mut stream = js.get_stream(&name).await.ok()?;
        let consumers = stream
            .info()
            .await
            .map(|i| i.state.consumer_count)
            .unwrap_or(0);
        Some(Self {
            kind: "stream",
            status: "obsolete",
            differences: Vec::new(),
            note: Some(format!(
                "the flotilla.command.v1 work queue ({consumers} agent consumers); once every agent \
                 accepts flotilla.command.v2 (`flotilla agents`), remove it: `nats stream rm {name}`"
            )),
            name,
        })
    }

    /// `max_age: wanted 7days, found 1h; …`
    fn differences_text(&self) -> String {
        self.differences
            .iter()
            .map(|d| format!("{}: wanted {}, found {}", d.setting, d.wanted, d.found))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The replicas and placement asked for (`nats.replicas`, `[nats.placement]`), or the default
/// for the server `client` is connected to; too many for the cluster is bad input (exit 2).
pub(crate) fn replication(
    cli: &Cli,
    client: &async_nats::Client,
) -> Result<Replication, CommandError> {
    let nats = &cli.settings.nats;
    Replication::resolve(
        nats.replicas,
        nats.placement.placement(),
        &client.server_info(),
    )
    .map_err(|e| fail(exit::USAGE, error_chain(&e)))
}

/// How long provisioning waits for a cluster to place the replicas it refused: a cluster just
/// started refuses them for a moment, one too small for good (then the error says so).
const PLACEMENT_GRACE: Duration = Duration::from_secs(10);

/// Creates what is missing of the streams and the buckets, with `replication`; reports each.
/// One that exists is never changed, but with `update` its replicas and placement are made
/// `replication`'s. Refused placement is tried again, with backoff, for [`PLACEMENT_GRACE`]:
/// what was made before the refusal is found the next time.
pub(crate) async fn provision_all(
    js: &jetstream::Context,
    subjects: &Subjects,
    replication: &Replication,
    update: bool,
) -> Result<Vec<Resource>, BusError> {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .with_total_delay(Some(PLACEMENT_GRACE))
        .without_max_times();
    let mut said = false;
    (|| provision_once(js, subjects, replication, update))
        .retry(backoff)
        .when(Replication::refused_placement)
        .notify(|_, _| {
            if !std::mem::replace(&mut said, true) {
                tracing::warn!(
                    "the cluster cannot place {} replicas yet; trying again for up to {:?}",
                    replication.replicas,
                    PLACEMENT_GRACE
                );
            }
        })
        .await
}

/// [`provision_all`], tried once.
async fn provision_once(
    js: &jetstream::Context,
    subjects: &Subjects,
    replication: &Replication,
    update: bool,
) -> Result<Vec<Resource>, BusError> {
    let mut resources = Vec::new();
    for wanted in [
        flotilla_bus::commands_stream_config(subjects),
        flotilla_bus::events_stream_config(subjects),
        flotilla_telemetry::store::stream_config(subjects.prefix()),
    ] {
        let wanted = replication.stream(wanted);
        let name = wanted.name.clone();
        let provisioned = provision::provision(js, wanted.clone()).await?;
        let provisioned = update_if_asked(js, &wanted, provisioned, update).await?;
        resources.push(Resource::new("stream", name, provisioned));
    }
    let runs = replication.kv(Store::bucket_config(subjects));
    resources.push(
        provision_bucket(
            js,
            &replication.stream(bucket_as_stream(&runs)),
            runs.bucket.clone(),
            js.create_key_value(runs.clone()),
            update,
        )
        .await?,
    );
    // The agent registry, which agents write and discovery reads.
    let agents = replication.kv(flotilla_bus::registry::bucket_config(subjects));
    resources.push(
        provision_bucket(
            js,
            &replication.stream(bucket_as_stream(&agents)),
            agents.bucket.clone(),
            js.create_key_value(agents.clone()),
            update,
        )
        .await?,
    );
    // The object store bucket the plan files are shipped in.
    let files = replication.object_store(flotilla_bus::plan_files::bucket_config(subjects));
    resources.push(
        provision_bucket(
            js,
            &replication.stream(flotilla_bus::plan_files::bucket_as_stream(subjects)),
            files.bucket.clone(),
            js.create_object_store(files),
            update,
        )
        .await?,
    );
    resources.extend(Resource::obsolete_commands_stream(js, subjects).await);
    Ok(resources)
}

/// With `update`, makes the replicas and placement of a stream found differing in them
/// `wanted`'s, and reports what still differs.
async fn update_if_asked(
    js: &jetstream::Context,
    wanted: &stream::Config,
    provisioned: Provisioned,
    update: bool,
) -> Result<Provisioned, BusError> {
    match provisioned {
        Provisioned::Differs(d) if update && d.iter().any(Difference::is_replication) => {
            if !replication::update(js, wanted).await? {
                tracing::warn!(
                    name = %wanted.name,
                    "the new replicas have not caught up yet: check `nats stream info` before \
                     taking a node down"
                );
            }
            let left = provision::inspect(js, wanted).await?.unwrap_or_default();
            Ok(Provisioned::Updated(left))
        }
        other => Ok(other),
    }
}

/// A bucket, read as the stream that holds it: reported as found (with what differs), or made
/// by `create`, which only runs when the bucket is missing.
async fn provision_bucket<T, E>(
    js: &jetstream::Context,
    as_stream: &stream::Config,
    bucket: String,
    create: impl Future<Output = Result<T, E>>,
    update: bool,
) -> Result<Resource, BusError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let provisioned = match provision::inspect(js, as_stream).await? {
        Some(differences) => {
            update_if_asked(js, as_stream, provision::found(differences), update).await?
        }
        None => {
            create.await.map_err(|e| BusError::Inspect {
                name: bucket.clone(),
                source: Box::new(e),
            })?;
            Provisioned::Created
        }
    };
    Ok(Resource::new("bucket", bucket, provisioned))
}

/// The stream under the key-value bucket `config`, as the server keeps it (a key-value bucket is a
/// stream `KV_<bucket>` whose history is its per-subject limit).
fn bucket_as_stream(config: &async_nats::jetstream::kv::Config) -> stream::Config {
    stream::Config {
        name: format!("KV_{}", config.bucket),
        subjects: vec![format!("$KV.{}.>", config.bucket)],
        max_messages_per_subject: config.history,
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        storage: config.storage,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// The error of a failed provisioning: bad input (exit 2) when the cluster cannot place the
/// replicas asked, the bus's (exit 4) otherwise.
pub(crate) fn placement_failure(
    replication: &Replication,
    error: BusError,
    client: &async_nats::Client,
) -> CommandError {
    match replication.explain(error, &client.server_info()) {
        e @ BusError::TooManyReplicas { .. } => fail(exit::USAGE, error_chain(&e)),
        e => fail(exit::BUS, error_chain(&e)),
    }
}

/// Logs what differs, for commands that provision on the way (they go on regardless).
pub(crate) fn warn_differing(resources: &[Resource]) {
    for r in resources.iter().filter(|r| r.note.is_some()) {
        tracing::warn!(kind = r.kind, name = %r.name, note = r.note.as_deref(), "no longer used");
    }
    for r in resources.iter().filter(|r| !r.differences.is_empty()) {
        tracing::warn!(
            kind = r.kind,
            name = %r.name,
            differences = %r.differences_text(),
            "exists with other settings than Flotilla's (`flotilla setup` shows them)"
        );
    }
}

/// `flotilla setup` (`--update`: the replicas and placement of what exists too).
pub(super) async fn setup(cli: &Cli) -> Outcome {
    let update = matches!(cli.command, CommandKind::Setup { update: true });
    let (client, subjects) = connect_bus(cli).await?;
    let replication = replication(cli, &client)?;
    let js = jetstream::new(client);
    let resources = match provision_all(&js, &subjects, &replication, update).await {
        Ok(r) => r,
        Err(e) => return Err(placement_failure(&replication, e, &js.client())),
    };
    match cli.output {
        OutputFormat::Json => super::print_json(&serde_json::json!({ "resources": resources })),
        OutputFormat::Text => {
            for r in &resources {
                println!(
                    "{:8} {:7} {:20} {}",
                    r.status,
                    r.kind,
                    one_line(&r.name),
                    one_line(r.note.as_deref().unwrap_or(&r.differences_text()))
                );
            }
        }
    }
    if resources.iter().any(|r| !r.differences.is_empty()) {
        return Err(fail(
            exit::PREFLIGHT,
            "some of them exist with other settings than Flotilla's and were left as they are: \
             change them to the wanted values (`nats stream edit`; replicas and placement: \
             `flotilla setup --update`), or remove them and run `flotilla setup` again",
        ));
    }
    Ok(exit::OK)
}
