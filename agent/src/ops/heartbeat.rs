//! The main loop's heartbeat: a task on the agent's runtime that stamps the time it last ran
//! (what `/healthz` judges) and pings systemd's watchdog at half its interval. Outside systemd
//! (`NOTIFY_SOCKET` unset) the notifications are no-ops.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::Ops;

/// How often the heartbeat beats, at most (more often when systemd's watchdog asks).
const BEAT: Duration = Duration::from_secs(1);

/// A heartbeat older than this, once the agent has booted, is a stuck main loop: `/healthz`
/// answers 503. Far above any step the agent runs on its runtime thread (its long work runs on
/// blocking threads), far below a human noticing.
pub const LIVENESS_STALE: Duration = Duration::from_secs(30);

pub(super) async fn run(ops: Ops, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled();
    let every = watchdog.map_or(BEAT, |usec| (usec / 2).min(BEAT));
    if let Some(usec) = watchdog {
        tracing::info!(watchdog_ms = usec.as_millis() as u64, "systemd watchdog on");
    }
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        ops.beat();
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
    }
    notify(&[NotifyState::Stopping]);
}

/// Whether systemd listens for notifications (`NOTIFY_SOCKET` is set).
pub(super) fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// READY=1: connected to NATS and subscribed for commands.
pub(super) fn notify_ready() {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status("ready for commands"),
    ]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Why the agent counts as not alive, given whether it booted and its heartbeat's age. Before
/// the boot a long recovery (a restore, re-hashing a tree) may hold the thread: not a failure.
pub(super) fn stale(booted: bool, age: Duration) -> Option<String> {
    (booted && age > LIVENESS_STALE)
        .then(|| format!("the agent's main loop has not run for {} s", age.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_heartbeat_fails_liveness_only_after_the_boot() {
        let old = LIVENESS_STALE + Duration::from_secs(1);
        assert_eq!(stale(false, old), None);
        assert_eq!(stale(true, Duration::from_secs(1)), None);
        let reason = stale(true, old).unwrap();
        assert!(reason.contains("31 s"), "{reason}");
    }
}
