//! Taking the command consumer over from a previous incarnation of the agent.
//!
//! Only this agent pulls its durable consumer. A previous incarnation whose connection the
//! server still believes open (a frozen process, a host gone without a TCP reset, a partition)
//! leaves its pull request registered, and the server hands it the next command first: that
//! command comes back only after the consumer's `ack_wait` (30 s). So pull requests waiting
//! before this agent has pulled, and deliveries nobody acked, are a dead incarnation's: the
//! consumer is deleted and created again with the same configuration, which drops them, and the
//! unacked commands are delivered again at once (the journal answers any command it already has). A clean exit
//! leaves neither, and then nothing is done: idle agents cost the broker nothing more.

use async_nats::jetstream::consumer::{self, FromConsumer, PullConsumer};
use async_nats::jetstream::stream::Stream;
use flotilla_telemetry::error_chain;
use tokio_util::sync::CancellationToken;

/// Why the consumer could not be taken over; the agent carries on with the consumer it has.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("cannot read the consumer {name}")]
    Info {
        name: String,
        #[source]
        source: async_nats::jetstream::context::ConsumerInfoError,
    },
    #[error("the consumer {name} has a configuration a pull consumer cannot have")]
    Config {
        name: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("cannot delete the consumer {name} (does the agent's identity allow CONSUMER.DELETE?)")]
    Delete {
        name: String,
        #[source]
        source: async_nats::jetstream::stream::ConsumerError,
    },
}

/// Replaces `consumer` by a fresh one when a previous incarnation still holds
/// pull requests or deliveries on it. Once the old consumer is deleted, creation is retried
/// until the server takes it or `shutdown` is cancelled (the commands wait in the stream).
pub async fn take_over(
    stream: &Stream,
    consumer: &mut PullConsumer,
    name: &str,
    shutdown: &CancellationToken,
) -> Result<(), TakeoverError> {
    let info = consumer
        .info()
        .await
        .map_err(|source| TakeoverError::Info {
            name: name.to_owned(),
            source,
        })?
        .clone();
    if info.num_waiting == 0 && info.num_ack_pending == 0 {
        return Ok(());
    }
    // The same configuration: on the work-queue commands stream an acked command is gone, so
    // a new consumer that delivers all starts at the oldest unacked one.
    let config = consumer::pull::Config::try_from_consumer_config(info.config.clone()).map_err(
        |source| TakeoverError::Config {
            name: name.to_owned(),
            source,
        },
    )?;
    tracing::info!(
        consumer = %name,
        waiting = info.num_waiting,
        ack_pending = info.num_ack_pending,
        "a previous incarnation still holds pull requests or commands; recreating the consumer"
    );
    stream
        .delete_consumer(name)
        .await
        .map_err(|source| TakeoverError::Delete {
            name: name.to_owned(),
            source,
        })?;
    let recreated = crate::retry::steadily(
        std::time::Duration::from_secs(2),
        shutdown,
        || stream.create_consumer(config.clone()),
        |e| {
            tracing::warn!(
                consumer = %name,
                error = %error_chain(e),
                "cannot recreate the command consumer yet; retrying"
            );
            true
        },
    )
    .await;
    if let Some(Ok(fresh)) = recreated {
        *consumer = fresh;
    }
    Ok(())
}
