//! How the agent's commands reach it (`flotilla.command.v2`), with no state on the server for
//! it but the last command on its subject.
//!
//! - **Live**: a core NATS subscription on the agent's own delivery subject, where the commands
//!   stream republishes each command it stored for it, in the queue group [`COMMAND_QUEUE`]: of
//!   two live incarnations of one agent, only one receives each command. (From the stream, not
//!   from the publish: a command the stream refused reaches no agent.)
//! - **Catch-up**: the coordinator publishes every command into the commands stream, which
//!   keeps the last one per subject. At the start, after every reconnect, and whenever the
//!   server dropped messages for this client, the agent reads that one with a direct get of the
//!   last message on its subject. A command published while the agent was away, or delivered into
//!   a connection that then died, or received by an agent that crashed before journalling it, is
//!   found there. The subscription is (re)made before the read, on the same connection, so a
//!   command comes one way or the other, or both: the journal (by command ID) makes the second
//!   a no-op.

use std::sync::Arc;

use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use flotilla_schemas::subjects::COMMAND_QUEUE;
use futures::StreamExt;
use tokio::sync::Notify;

use super::SessionError;

/// One message that may carry a command, however it came.
pub(super) struct Delivered {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    /// Read back from the stream rather than received live.
    pub caught_up: bool,
}

/// The agent's two ways of receiving its commands.
pub(super) struct Delivery {
    live: Subscriber,
    stream: Stream,
    /// Where the commands are stored (the catch-up read's subject).
    stored: String,
    reconnected: Arc<Notify>,
    /// A catch-up read is owed: at the start, after a reconnect, or after one that failed.
    owed: bool,
}

/// What a catch-up read found.
pub(super) enum CaughtUp {
    /// The last command on the subject (perhaps one already handled).
    Found(Delivered),
    /// Nothing stored for this agent.
    Nothing,
    /// The read failed (the stream unreachable, a leader election); tried again later.
    Failed,
}

impl Delivery {
    /// Subscribes to `subject`; the catch-up of what was published before is owed.
    pub(super) async fn subscribe(
        client: &async_nats::Client,
        stream: Stream,
        subject: String,
        stored: String,
        reconnected: Arc<Notify>,
    ) -> Result<Self, SessionError> {
        let live = client
            .queue_subscribe(subject.clone(), COMMAND_QUEUE.to_owned())
            .await
            .map_err(|source| SessionError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
        Ok(Self {
            live,
            stream,
            stored,
            reconnected,
            owed: true,
        })
    }

    /// The next live message; `None` when the subscription ended.
    pub(super) async fn next_live(&mut self) -> Option<Delivered> {
        let message = self.live.next().await?;
        Some(Delivered {
            subject: message.subject.to_string(),
            headers: message.headers,
            payload: message.payload,
            caught_up: false,
        })
    }

    /// What wakes at each reconnect (then a catch-up read is owed: [`Delivery::owe`]).
    pub(super) fn reconnected(&self) -> Arc<Notify> {
        self.reconnected.clone()
    }

    /// A catch-up read is owed (a reconnect happened).
    pub(super) fn owe(&mut self) {
        self.owed = true;
    }

    /// Whether a catch-up read is owed now.
    pub(super) fn owed(&self) -> bool {
        self.owed
    }

    /// Reads the last command stored for this agent; a failed read stays owed (the caller
    /// tries again on its retry tick).
    pub(super) async fn catch_up(&mut self) -> CaughtUp {
        match self.stream.direct_get_last_for_subject(&self.stored).await {
            Ok(message) => {
                self.owed = false;
                CaughtUp::Found(Delivered {
                    subject: message.subject.to_string(),
                    headers: Some(message.headers),
                    payload: message.payload,
                    caught_up: true,
                })
            }
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                self.owed = false;
                CaughtUp::Nothing
            }
            Err(e) => {
                tracing::warn!(error = %e, subject = %self.stored, "cannot read the last command yet; trying again");
                self.owed = true;
                CaughtUp::Failed
            }
        }
    }

    /// Stops receiving: a command sent from now on waits in the stream for the next incarnation.
    pub(super) async fn close(mut self) {
        let _ = self.live.unsubscribe().await;
    }
}
