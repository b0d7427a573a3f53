//! The agent's operations surface: an optional HTTP endpoint (`[http]`, off by default) with
//! `/healthz`, `/readyz` and `/metrics`, and systemd's readiness and watchdog notifications.
//!
//! The rest of the agent reports through an [`Ops`] handle (atomics and the metrics registry,
//! no lock held across an await); the endpoint serves on a thread of its own, so that a scrape
//! never competes with a command for the agent's one runtime thread, and so that `/healthz` can
//! still answer (503) when that thread is stuck.

mod heartbeat;
mod http;
pub mod metrics;
pub mod probe;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flotilla_schemas::{Action, Outcome, Phase, PhaseStatus};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use heartbeat::LIVENESS_STALE;

/// The port of the endpoint when `listen` names none (`listen = "127.0.0.1"`), and the one the
/// shipped deployments use.
pub const DEFAULT_PORT: u16 = 9464;

/// `[http]`: the operations endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where the endpoint listens: `"127.0.0.1:9464"`, a port alone (`"9464"`, on loopback) or
    /// an address alone (port 9464). Unset: no endpoint. Only an address written here makes it
    /// listen beyond loopback (`"0.0.0.0:9464"`, as a pod's probes need).
    #[serde(default)]
    pub listen: Option<String>,
}

impl HttpConfig {
    /// The socket address to listen on, if the endpoint is on; an error names what is wrong.
    pub fn address(&self) -> Result<Option<SocketAddr>, String> {
        let Some(listen) = self.listen.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if let Ok(port) = listen.parse::<u16>() {
            return Ok(Some((Ipv4Addr::LOCALHOST, port).into()));
        }
        if let Ok(ip) = listen.parse::<IpAddr>() {
            return Ok(Some((ip, DEFAULT_PORT).into()));
        }
        listen.parse().map(Some).map_err(|_| {
            format!("http.listen {listen:?} is not an address: write \"127.0.0.1:9464\", \"9464\" or \"[::1]:9464\"")
        })
    }
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen on {address} (http.listen)")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the HTTP endpoint's thread")]
    Thread(#[source] std::io::Error),
}

/// What the agent reports to its endpoint and to systemd; cheap to clone.
#[derive(Clone)]
pub struct Ops(Arc<Inner>);

struct Inner {
    metrics: metrics::Metrics,
    client: OnceLock<async_nats::Client>,
    subscribed: AtomicBool,
    booted: AtomicBool,
    notified_ready: AtomicBool,
    /// Milliseconds since the Unix epoch of the main loop's last heartbeat.
    beat_ms: AtomicU64,
}

impl Ops {
    pub fn new(service: &str, instance: &str) -> Self {
        Self(Arc::new(Inner {
            metrics: metrics::Metrics::new(service, instance),
            client: OnceLock::new(),
            subscribed: AtomicBool::new(false),
            booted: AtomicBool::new(false),
            notified_ready: AtomicBool::new(false),
            beat_ms: AtomicU64::new(now_ms()),
        }))
    }

    /// When `config` turns it on, starts the endpoint on its own thread; under systemd or with
    /// the endpoint, the heartbeat on the caller's runtime (the agent's main loop: it proves that
    /// loop runs, and pings systemd's watchdog). Both stop with `shutdown`. Neither: nothing
    /// runs, not even a timer.
    pub fn start(
        &self,
        config: &HttpConfig,
        shutdown: &CancellationToken,
    ) -> Result<Option<SocketAddr>, OpsError> {
        // Checked at load (`AgentConfig::check`).
        let address = config.address().ok().flatten();
        if address.is_some() || heartbeat::under_systemd() {
            tokio::spawn(heartbeat::run(self.clone(), shutdown.clone()));
        }
        let Some(address) = address else {
            return Ok(None);
        };
        http::spawn(self.clone(), address, shutdown.clone()).map(Some)
    }

    /// Recovery and the service's boot are done: from now on a stale heartbeat is a stuck agent.
    pub fn booted(&self) {
        self.0.booted.store(true, Ordering::Relaxed);
        self.beat();
    }

    /// Connected to NATS (the client reconnects by itself; its state is read when asked).
    pub fn connected(&self, client: &async_nats::Client) {
        let _ = self.0.client.set(client.clone());
    }

    /// Subscribed for commands (`true`), or no longer (`false`). The first time, tells systemd
    /// the agent is ready.
    pub fn subscribed(&self, subscribed: bool) {
        self.0.subscribed.store(subscribed, Ordering::Relaxed);
        if subscribed && !self.0.notified_ready.swap(true, Ordering::Relaxed) {
            heartbeat::notify_ready();
        }
    }

    /// A command of `kind` ([`kind`]) was answered.
    pub fn command(&self, kind: &'static str, outcome: Outcome) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.0.metrics.command(kind, outcome, now);
    }

    /// A phase of a command ended.
    pub fn phase(&self, phase: Phase, status: PhaseStatus, elapsed: Duration) {
        self.0.metrics.phase(phase, status, elapsed.as_secs_f64());
    }

    pub fn journal_bytes(&self, bytes: u64) {
        self.0.metrics.journal_bytes(bytes);
    }

    /// A backup of `bytes` of service files was taken.
    pub fn backup(&self, bytes: u64) {
        self.0.metrics.backup(bytes);
    }

    fn beat(&self) {
        self.0.beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn nats_connected(&self) -> bool {
        self.0
            .client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected)
    }

    /// Why the agent is not ready for commands, if it is not.
    fn not_ready(&self) -> Option<&'static str> {
        if self.0.client.get().is_none() {
            return Some("not connected to NATS yet");
        }
        if !self.nats_connected() {
            return Some("disconnected from NATS, reconnecting");
        }
        if !self.0.subscribed.load(Ordering::Relaxed) {
            return Some("connected, not subscribed for commands yet (waiting for the streams?)");
        }
        None
    }

    /// Why the agent is not alive, if it is not: its main loop has not run for too long.
    fn not_alive(&self) -> Option<String> {
        let age =
            Duration::from_millis(now_ms().saturating_sub(self.0.beat_ms.load(Ordering::Relaxed)));
        heartbeat::stale(self.0.booted.load(Ordering::Relaxed), age)
    }

    fn metrics_text(&self) -> String {
        self.0
            .metrics
            .encode(self.nats_connected(), self.not_ready().is_none())
    }
}

/// The command kind label (`None`: a message that could not be read): a fixed set, whatever
/// the command holds.
pub fn kind(action: Option<&Action>) -> &'static str {
    match action {
        Some(Action::Migrate { .. }) => "migrate",
        Some(Action::Rollback { .. }) => "rollback",
        Some(Action::Finalize { .. }) => "finalize",
        Some(Action::Inspect { .. }) => "inspect",
        Some(Action::Preview { .. }) => "preview",
        None => "unknown",
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(text: &str) -> Result<Option<SocketAddr>, String> {
        HttpConfig {
            listen: Some(text.to_owned()),
        }
        .address()
    }

    #[test]
    fn the_endpoint_is_off_unless_listen_is_set_and_on_loopback_unless_told() {
        assert_eq!(HttpConfig::default().address(), Ok(None));
        assert_eq!(listen("9464"), Ok(Some("127.0.0.1:9464".parse().unwrap())));
        assert_eq!(
            listen("127.0.0.1:1234"),
            Ok(Some("127.0.0.1:1234".parse().unwrap()))
        );
        assert_eq!(listen("0.0.0.0"), Ok(Some("0.0.0.0:9464".parse().unwrap())));
        assert_eq!(listen("[::1]:9"), Ok(Some("[::1]:9".parse().unwrap())));
        let err = listen("localhost:x").unwrap_err();
        assert!(err.contains("http.listen"), "{err}");
    }
}
