//! The agent's one way of trying again what a busy or absent server refused.

use std::time::Duration;

use backon::{ConstantBuilder, Retryable};
use tokio_util::sync::CancellationToken;

/// Tries `attempt` until it succeeds, pausing `pause` between tries, for as long as it takes:
/// a sidecar has nothing better to do than wait for its server. `again` is asked after each
/// failure whether to try again (it logs why it does); a failure it refuses is returned.
/// `None` when `shutdown` is cancelled first.
pub async fn steadily<T, E, Fut>(
    pause: Duration,
    shutdown: &CancellationToken,
    attempt: impl FnMut() -> Fut,
    again: impl FnMut(&E) -> bool,
) -> Option<Result<T, E>>
where
    Fut: Future<Output = Result<T, E>>,
{
    let tries = attempt
        .retry(ConstantBuilder::new().with_delay(pause).without_max_times())
        .when(again);
    tokio::select! {
        _ = shutdown.cancelled() => None,
        outcome = tries => Some(outcome),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn tries_until_success_and_stops_on_a_failure_it_refuses_or_on_shutdown() {
        let shutdown = CancellationToken::new();
        let tries = AtomicU32::new(0);
        let attempt = || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err("busy"),
                n => Ok(n),
            }
        };
        let pause = Duration::from_millis(1);
        assert_eq!(
            steadily(pause, &shutdown, attempt, |_| true).await,
            Some(Ok(2))
        );

        let refused = steadily(
            pause,
            &shutdown,
            || async { Err::<(), _>("bad") },
            |_| false,
        );
        assert_eq!(refused.await, Some(Err("bad")));

        shutdown.cancel();
        let forever = steadily(
            pause,
            &shutdown,
            || async { Err::<(), _>("busy") },
            |_| true,
        );
        assert_eq!(forever.await, None);
    }
}
