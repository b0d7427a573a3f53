//! The agent's Prometheus metrics (`flotilla_agent_*`), in one registry. Every label value is
//! one of a fixed set (a command's kind and outcome, a phase and its status): never an ID, a
//! payload or a setting, so the series stay few and hold no secret.

use std::sync::atomic::{AtomicI64, AtomicU64};

use flotilla_schemas::{Outcome, Phase, PhaseStatus};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// The metric name prefix.
const PREFIX: &str = "flotilla_agent";

/// Phase durations, in seconds: a health probe's milliseconds to a job's half hour.
const PHASE_BUCKETS: [f64; 15] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// The kinds of command, as the wire names them (`Action`'s tag), and `unknown` for a message
/// refused before it was decoded.
pub const COMMAND_KINDS: [&str; 6] = [
    "migrate", "rollback", "finalize", "inspect", "preview", "unknown",
];

const OUTCOMES: [Outcome; 5] = [
    Outcome::Succeeded,
    Outcome::RolledBack,
    Outcome::RollbackFailed,
    Outcome::Refused,
    Outcome::Finalized,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    service: String,
    instance: String,
}

/// The registry and a handle on each metric; updates are atomic, never behind a lock.
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    phases: Family<PhaseLabels, Histogram>,
    journal_bytes: Gauge<u64, AtomicU64>,
    backup_bytes: Counter,
    last_backup_bytes: Gauge<u64, AtomicU64>,
    last_command: Gauge<i64, AtomicI64>,
    nats_connected: Gauge<i64, AtomicI64>,
    ready: Gauge<i64, AtomicI64>,
}

impl Metrics {
    /// The agent of `service`/`instance`'s metrics, every command series at 0.
    pub fn new(service: &str, instance: &str) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands handled, by kind and outcome (a replay answered from the journal included)",
            commands.clone(),
        );
        let phases = Family::<PhaseLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(PHASE_BUCKETS)
        });
        registry.register_with_unit(
            "phase_duration",
            "How long each phase of a command took, by phase and status",
            Unit::Seconds,
            phases.clone(),
        );
        let metrics = Self {
            commands,
            phases,
            journal_bytes: Gauge::default(),
            backup_bytes: Counter::default(),
            last_backup_bytes: Gauge::default(),
            last_command: Gauge::default(),
            nats_connected: Gauge::default(),
            ready: Gauge::default(),
            registry,
        };
        metrics.register_gauges(service, instance)
    }

    fn register_gauges(mut self, service: &str, instance: &str) -> Self {
        let r = &mut self.registry;
        r.register_with_unit(
            "journal_size",
            "Size of the journal file (journal.jsonl)",
            Unit::Bytes,
            self.journal_bytes.clone(),
        );
        r.register_with_unit(
            "backup",
            "Bytes of service files backed up since the agent started",
            Unit::Bytes,
            self.backup_bytes.clone(),
        );
        r.register_with_unit(
            "last_backup_size",
            "Bytes of service files in the last backup taken",
            Unit::Bytes,
            self.last_backup_bytes.clone(),
        );
        r.register(
            "last_command_timestamp_seconds",
            "When the agent last finished handling a command (Unix time; 0: none since start)",
            self.last_command.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the agent is connected to NATS, else 0",
            self.nats_connected.clone(),
        );
        r.register(
            "ready",
            "1 while the agent is connected and subscribed for commands (/readyz answers 200)",
            self.ready.clone(),
        );
        r.register(
            "build",
            "The agent's version, service and instance",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                service: service.to_owned(),
                instance: instance.to_owned(),
            }),
        );
        for kind in COMMAND_KINDS {
            for outcome in OUTCOMES {
                let _ = self.commands.get_or_create(&CommandLabels {
                    kind,
                    outcome: outcome.as_str(),
                });
            }
        }
        self
    }

    /// A command of `kind` (one of [`COMMAND_KINDS`]) was answered with `outcome`.
    pub fn command(&self, kind: &'static str, outcome: Outcome, now_unix: i64) {
        self.commands
            .get_or_create(&CommandLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
        self.last_command.set(now_unix);
    }

    /// A phase ended with `status` after `seconds`.
    pub fn phase(&self, phase: Phase, status: PhaseStatus, seconds: f64) {
        let status = match status {
            PhaseStatus::Started => "started",
            PhaseStatus::Succeeded => "succeeded",
            PhaseStatus::Failed => "failed",
        };
        self.phases
            .get_or_create(&PhaseLabels {
                phase: phase.as_str(),
                status,
            })
            .observe(seconds);
    }

    pub fn journal_bytes(&self, bytes: u64) {
        self.journal_bytes.set(bytes);
    }

    pub fn backup(&self, bytes: u64) {
        self.backup_bytes.inc_by(bytes);
        self.last_backup_bytes.set(bytes);
    }

    /// The exposition, with the connection and readiness gauges as of now.
    pub fn encode(&self, connected: bool, ready: bool) -> String {
        self.nats_connected.set(i64::from(connected));
        self.ready.set(i64::from(ready));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_units_and_labels_only_fixed_values() {
        let metrics = Metrics::new("inference", "a");
        metrics.command("migrate", Outcome::Succeeded, 1_700_000_000);
        metrics.phase(Phase::Backup, PhaseStatus::Succeeded, 0.2);
        metrics.backup(42);
        metrics.journal_bytes(7);
        let text = metrics.encode(true, false);
        for line in [
            "flotilla_agent_commands_total{kind=\"migrate\",outcome=\"succeeded\"} 1",
            "flotilla_agent_commands_total{kind=\"rollback\",outcome=\"rolled_back\"} 0",
            "flotilla_agent_phase_duration_seconds_count{phase=\"backup\",status=\"succeeded\"} 1",
            "flotilla_agent_journal_size_bytes 7",
            "flotilla_agent_backup_bytes_total 42",
            "flotilla_agent_last_backup_size_bytes 42",
            "flotilla_agent_last_command_timestamp_seconds 1700000000",
            "flotilla_agent_nats_connected 1",
            "flotilla_agent_ready 0",
            "flotilla_agent_build_info{version=\"",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
