//! The agent's durable consumer of its commands: one per agent, under a name no other agent's
//! names map to, reading this agent's subject and no other.

use async_nats::jetstream::{self, consumer};
use flotilla_schemas::subjects::Subjects;
use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

use super::SessionError;
use crate::lifecycle::Lifecycle;

/// Deletes the consumer this agent had under the name of earlier versions
/// ([`legacy_name`]), when that name differs from today's and the consumer
/// reads exactly this agent's subject: the work-queue stream refuses a second consumer on it.
/// Its unacked commands stay in the stream for the new consumer. One that reads another subject
/// is another agent's, and is left alone.
async fn drop_legacy_consumer(
    commands: &jetstream::stream::Stream,
    subjects: &Subjects,
    lifecycle: &Lifecycle,
) {
    let (service, instance) = (
        &lifecycle.config.service.name,
        &lifecycle.config.agent.instance,
    );
    let legacy = legacy_name(service, instance);
    if legacy == subjects.agent_consumer(service, instance) {
        return;
    }
    let Ok(info) = commands.consumer_info(&legacy).await else {
        return;
    };
    if info.config.filter_subject != subjects.command(service, instance) {
        return;
    }
    match commands.delete_consumer(&legacy).await {
        Ok(_) => {
            tracing::info!(consumer = %legacy, "removed this agent's consumer of an earlier version")
        }
        Err(e) => {
            tracing::warn!(consumer = %legacy, error = %e, "cannot remove this agent's consumer of an earlier version")
        }
    }
}

/// The agent's durable consumer of its commands, created if need be (after removing this
/// agent's consumer of an earlier version). A busy server may time the creation out: it keeps
/// trying, as for the streams, rather than stop the agent; `None` on shutdown. An existing
/// consumer that reads another subject than this agent's is refused: another agent's names map
/// to the same consumer name.
pub(super) async fn command_consumer(
    commands: &jetstream::stream::Stream,
    subjects: &Subjects,
    name: &str,
    lifecycle: &Lifecycle,
    shutdown: &CancellationToken,
) -> Result<Option<consumer::PullConsumer>, SessionError> {
    drop_legacy_consumer(commands, subjects, lifecycle).await;
    let (service, instance) = (
        &lifecycle.config.service.name,
        &lifecycle.config.agent.instance,
    );
    let config = consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("commands for the agent of {service}/{instance}")),
        filter_subject: subjects.command(service, instance),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let created = crate::retry::steadily(
        std::time::Duration::from_secs(2),
        shutdown,
        || async {
            let created = commands.get_or_create_consumer(name, config.clone()).await;
            created.map_err(|source| SessionError::Consumer {
                name: name.to_owned(),
                source,
            })
        },
        |e| {
            tracing::warn!(
                error = %error_chain(e),
                "cannot create the command consumer yet; retrying"
            );
            true
        },
    )
    .await;
    let Some(Ok(consumer)) = created else {
        return Ok(None);
    };
    // An existing consumer is taken as found: it must read this agent's subject and no other.
    let found = &consumer.cached_info().config.filter_subject;
    if *found != config.filter_subject {
        return Err(SessionError::ConsumerTaken {
            name: name.to_owned(),
            wanted: config.filter_subject,
            found: found.clone(),
        });
    }
    Ok(Some(consumer))
}

/// The consumer name agents used before [`Subjects::agent_consumer`] doubled `_` inside names:
/// `agent_<service>_<instance>` as is.
fn legacy_name(
    service: &flotilla_schemas::ServiceName,
    instance: &flotilla_schemas::InstanceId,
) -> String {
    format!("agent_{service}_{instance}")
}
