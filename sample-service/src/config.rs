//! Service configuration in either of the two supported layouts.
//!
//! * standard: `<root>/config/service.toml`, the unified T006 format, with
//!   secrets given as `${secret:NAME}` placeholders;
//! * legacy: `<root>/legacy.conf`, flat `key=value` lines with literal secrets.
//!
//! When both exist the standard layout wins.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::logging::{Level, LogFormat};

mod legacy;
mod secrets;
mod standard;
#[cfg(test)]
mod tests;

/// Location of the standard configuration, relative to the root.
pub const STANDARD_FILE: &str = "config/service.toml";
/// Location of the legacy configuration, relative to the root.
pub const LEGACY_FILE: &str = "legacy.conf";

/// The trading service being played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serves model predictions.
    Inference,
    /// Trains models.
    Training,
    /// Ingests market data.
    Ingest,
    /// Executes orders.
    Execution,
    /// Prepares features.
    Preprocess,
}

impl Role {
    /// The service name, as used in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Training => "training",
            Self::Ingest => "ingest",
            Self::Execution => "execution",
            Self::Preprocess => "preprocess",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which configuration layout the service was started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `config/service.toml`.
    Standard,
    /// `legacy.conf`.
    Legacy,
}

impl Layout {
    /// `"standard"` or `"legacy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Legacy => "legacy",
        }
    }
}

/// Knobs that let tests make the service misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// `/health` answers 503.
    pub fail_health: bool,
    /// Sleep this long before listening, to simulate a slow start.
    pub startup_delay_ms: u64,
    /// Allocate, touch and hold this many MiB.
    pub extra_memory_mb: u64,
    /// Extra time every `/predict` and `/ingest` request takes (simulates a slower code path).
    pub request_delay_ms: u64,
}

/// A resolved secret value; its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value itself.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the sample resolves secrets but has no client to use them"
        )
    )]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Everything the service needs, whichever layout it came from.
#[derive(Clone, Debug)]
pub struct Config {
    /// Layout the configuration was read from.
    pub layout: Layout,
    /// Service being played; always equal to `--role`.
    pub role: Role,
    /// Deployment environment (standard layout only).
    pub environment: Option<String>,
    /// Address to bind.
    pub host: String,
    /// Port to bind; `--port` overrides it.
    pub port: u16,
    /// Log record format.
    pub log_format: LogFormat,
    /// Minimum level logged.
    pub log_level: Level,
    /// Log file, already joined to the root.
    pub log_file: PathBuf,
    /// Resolved secrets by configuration key (e.g. `api_key`).
    pub secrets: BTreeMap<String, Secret>,
    /// Test knobs.
    pub behaviour: Behaviour,
    /// Sorted dotted names of every key present in the file; never values.
    pub config_keys: Vec<String>,
}

/// Loads the configuration under `root`, which must name `role`.
///
/// Secrets are looked up in `<root>/secrets/NAME`, then in the environment.
pub fn load(root: &Path, role: Role) -> Result<Config> {
    load_with_env(root, role, &|name| std::env::var(name).ok())
}

/// [`load`] with an injectable environment lookup.
fn load_with_env(root: &Path, role: Role, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let standard = root.join(STANDARD_FILE);
    if exists(&standard)? {
        return standard::load(root, &standard, role, env);
    }
    let legacy = root.join(LEGACY_FILE);
    if exists(&legacy)? {
        return legacy::load(root, &legacy, role);
    }
    bail!(
        "no configuration in {}: expected {STANDARD_FILE} or {LEGACY_FILE}",
        root.display()
    )
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .with_context(|| format!("checking {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
