//! The command line as the top layer of the settings: each flag given becomes its key.

use std::path::PathBuf;
use std::time::Duration;

use clap::ValueEnum;

use super::{GlobalFlags, OutputFormat};

impl GlobalFlags {
    /// The keys the command line sets, as the top layer of the settings.
    pub(super) fn overrides(&self) -> Vec<(&'static str, config::Value)> {
        let text = |v: &dyn ToString| config::Value::from(v.to_string());
        let path = |p: &PathBuf| config::Value::from(p.display().to_string());
        let duration =
            |d: &Duration| config::Value::from(humantime::format_duration(*d).to_string());
        let auth = &self.auth;
        let mut set: Vec<(&'static str, Option<config::Value>)> = vec![
            ("nats.url", self.nats_url.as_ref().map(|v| text(v))),
            ("nats.prefix", self.prefix.as_ref().map(|v| text(v))),
            (
                "nats.connect_timeout",
                self.connect_timeout.as_ref().map(duration),
            ),
            (
                "nats.allow_old_server",
                self.allow_old_server.then(|| true.into()),
            ),
            ("nats.replicas", self.replicas.map(|n| (n as i64).into())),
            (
                "nats.placement.cluster",
                self.placement_cluster.as_ref().map(|v| text(v)),
            ),
            ("nats.auth.user", auth.nats_user.as_ref().map(|v| text(v))),
            (
                "nats.auth.password_file",
                auth.nats_password_file.as_ref().map(path),
            ),
            (
                "nats.auth.nkey_seed_file",
                auth.nats_nkey_file.as_ref().map(path),
            ),
            (
                "nats.auth.credentials_file",
                auth.nats_creds.as_ref().map(path),
            ),
            ("nats.auth.tls_ca_file", auth.nats_tls_ca.as_ref().map(path)),
            (
                "nats.auth.tls_cert_file",
                auth.nats_tls_cert.as_ref().map(path),
            ),
            (
                "nats.auth.tls_key_file",
                auth.nats_tls_key.as_ref().map(path),
            ),
            (
                "nats.auth.inbox_prefix",
                auth.nats_inbox_prefix.as_ref().map(|v| text(v)),
            ),
            ("output", self.output.map(|o| text(&output_name(o)))),
            (
                "discovery_window",
                self.discovery_window.as_ref().map(duration),
            ),
            (
                "agent_inactive_after",
                self.agent_inactive_after.as_ref().map(duration),
            ),
            (
                "trace_backend",
                self.trace_backend.as_ref().map(|b| text(b)),
            ),
            ("verify_wait", self.verify_wait.as_ref().map(duration)),
            ("no_verify", self.no_verify.then(|| true.into())),
            ("signing_key", self.signing_key.as_ref().map(path)),
            ("report.trace_url", self.trace_url.as_ref().map(|v| text(v))),
        ];
        if !self.placement_tags.is_empty() {
            set.push((
                "nats.placement.tags",
                Some(self.placement_tags.clone().into()),
            ));
        }
        if !self.trusted_agent_keys.is_empty() {
            set.push((
                "trusted_agent_keys",
                Some(self.trusted_agent_keys.clone().into()),
            ));
        }
        set.into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .collect()
    }
}

fn output_name(output: OutputFormat) -> String {
    output
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}
