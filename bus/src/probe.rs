//! Whether a JetStream answers through the connected server: its API, asked for the account,
//! not the server's INFO (a leaf node without JetStream of its own says `jetstream: false`
//! there, yet its hub's JetStream answers through it).

use std::time::Duration;

use async_nats::jetstream::context::AccountErrorKind;

use crate::provision::ELECTION_WAIT;

/// How long one question waits for its answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the probe found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Answered,
    /// Nothing listens on the JetStream API (no JetStream, or a leaf without its hub).
    Nobody,
}

/// Asks the JetStream API of `client` (in `domain`) for the account. A cluster that has just
/// lost its meta leader does not answer, or answers "unavailable" (503), until it elects
/// another: it is asked again for up to [`ELECTION_WAIT`]. Nobody listening is final at once.
pub(crate) async fn jetstream(client: &async_nats::Client, domain: Option<&str>) -> Probe {
    let mut js = crate::jetstream(client.clone(), domain);
    js.set_timeout(ATTEMPT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
    let mut warned = false;
    loop {
        let electing = match js.query_account().await {
            Ok(_) => return Probe::Answered,
            Err(e) => match e.kind() {
                AccountErrorKind::TimedOut => true,
                AccountErrorKind::JetStream(api) => api.code() == 503,
                AccountErrorKind::JetStreamUnavailable | AccountErrorKind::Other => false,
            },
        };
        if !electing || tokio::time::Instant::now() >= deadline {
            return Probe::Nobody;
        }
        if !warned {
            tracing::warn!("JetStream does not answer yet (a NATS node lost?), waiting");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
