//! Riding out a broker that cannot answer for a while: a JetStream leader election (seconds on a
//! cluster, 4–8 s measured), a node restart, a network cut. Every operation whose effect must
//! not be lost (a command published, a run-store write, telemetry stored) is tried again with
//! backoff and jitter until its own deadline, and only then given up on. That is safe because
//! each is idempotent: a command carries `Nats-Msg-Id`, a store write is a compare-and-set.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

/// How long an operation with no deadline of its own (a run-store write, a read) keeps trying:
/// well past the 15 s a cluster's leader election may take.
pub const OUTAGE_TOLERANCE: Duration = Duration::from_secs(30);

/// The pauses between tries: from 50 ms doubling to 2 s, each plus up to as much again at random,
/// so a fleet of writers that failed together does not retry in step.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .without_max_times()
}

/// Tries `attempt` until it succeeds, fails in a way `transient` says waiting cannot cure, or
/// the next try would start after `deadline`; returns the last failure then. Each failure that
/// is tried again is logged at debug with `what`, the first one at warn.
pub async fn retry_until<T, E, F, Fut>(
    what: &str,
    deadline: Instant,
    mut attempt: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = backoff().build();
    let mut tries = 0u32;
    loop {
        let error = match attempt().await {
            Ok(value) => {
                if tries > 0 {
                    tracing::info!(tries = tries + 1, "{what}: done after retrying");
                }
                return Ok(value);
            }
            Err(error) => error,
        };
        tries += 1;
        let pause = pauses.next().unwrap_or(Duration::from_secs(2));
        if !transient(&error) || Instant::now() + pause >= deadline {
            return Err(error);
        }
        if tries == 1 {
            tracing::warn!(%error, "{what}: the broker did not take it; retrying until its deadline");
        } else {
            tracing::debug!(%error, tries, "{what}: still retrying");
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn retries_a_transient_failure_until_it_succeeds() {
        let tries = AtomicU32::new(0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let out = retry_until(
            "test",
            deadline,
            || async {
                match tries.fetch_add(1, Ordering::SeqCst) {
                    0..=2 => Err("no leader"),
                    n => Ok(n),
                }
            },
            |_| true,
        )
        .await;
        assert_eq!(out, Ok(3));
    }

    #[tokio::test]
    async fn gives_up_on_a_lasting_failure_at_once_and_on_a_transient_one_at_the_deadline() {
        let tries = AtomicU32::new(0);
        let far = Instant::now() + Duration::from_secs(60);
        let lasting = retry_until(
            "test",
            far,
            || async {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("too big")
            },
            |_| false,
        );
        assert_eq!(lasting.await, Err("too big"));
        assert_eq!(tries.load(Ordering::SeqCst), 1);

        let started = Instant::now();
        let near = started + Duration::from_millis(300);
        let transient = retry_until(
            "test",
            near,
            || async { Err::<(), _>("no leader") },
            |_| true,
        );
        assert_eq!(transient.await, Err("no leader"));
        assert!(Instant::now() < near + Duration::from_millis(100));
    }
}
