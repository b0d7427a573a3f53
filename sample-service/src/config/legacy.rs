//! `legacy.conf`: flat `key=value` lines with literal secrets.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};

use super::{Behaviour, Config, Layout, Role, Secret, read};
use crate::logging::{Level, LogFormat};

const LEGACY_DEFAULT_LOG_FILE: &str = "service.log";
// legacy.conf has no host setting; the legacy services only served locally.
const LEGACY_HOST: &str = "127.0.0.1";

/// Loads `path`, the legacy file under `root`.
pub(super) fn load(root: &Path, path: &Path, role: Role) -> Result<Config> {
    let text = read(path)?;
    parse_legacy(&text, root, role).with_context(|| path.display().to_string())
}

/// A `legacy.conf` value together with the line it came from.
struct LegacyValue {
    line: usize,
    text: String,
}

/// The value of each key and its line; later lines override earlier ones, as the legacy
/// services did.
type Entries = BTreeMap<String, LegacyValue>;

/// Parses `legacy.conf`; keys it does not know are accepted and reported.
fn parse_legacy(text: &str, root: &Path, role: Role) -> Result<Config> {
    let entries = entries(text)?;
    let service = entries
        .get("service")
        .ok_or_else(|| anyhow!("missing key: service"))?;
    ensure!(
        service.text == role.as_str(),
        "line {}: service is {:?} but --role is {role}",
        service.line,
        service.text
    );
    let port = legacy_value(&entries, "listen_port", str::parse)?
        .ok_or_else(|| anyhow!("missing key: listen_port"))?;
    let log_file = entries
        .get("log_file")
        .map_or(LEGACY_DEFAULT_LOG_FILE, |value| value.text.as_str());
    let mut secrets = BTreeMap::new();
    if let Some(api_key) = entries.get("api_key") {
        ensure!(
            !api_key.text.is_empty(),
            "line {}: api_key is empty",
            api_key.line
        );
        secrets.insert("api_key".to_owned(), Secret(api_key.text.clone()));
    }
    let behaviour = behaviour(&entries)?;

    Ok(Config {
        layout: Layout::Legacy,
        role,
        environment: None,
        host: LEGACY_HOST.to_owned(),
        port,
        log_format: LogFormat::Text,
        log_level: Level::Info,
        log_file: root.join(log_file),
        secrets,
        behaviour,
        config_keys: entries.into_keys().collect(),
    })
}

/// Reads the `key=value` lines, skipping blank lines and `#` comments.
fn entries(text: &str) -> Result<Entries> {
    let mut entries = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("line {number}: expected key=value"))?;
        let key = key.trim();
        ensure!(!key.is_empty(), "line {number}: empty key");
        entries.insert(
            key.to_owned(),
            LegacyValue {
                line: number,
                text: value.trim().to_owned(),
            },
        );
    }
    Ok(entries)
}

/// The test knobs; each defaults to off.
fn behaviour(entries: &Entries) -> Result<Behaviour> {
    Ok(Behaviour {
        fail_health: legacy_value(entries, "fail_health", parse_legacy_bool)?.unwrap_or(false),
        startup_delay_ms: legacy_value(entries, "startup_delay_ms", str::parse)?.unwrap_or(0),
        extra_memory_mb: legacy_value(entries, "extra_memory_mb", str::parse)?.unwrap_or(0),
        request_delay_ms: legacy_value(entries, "request_delay_ms", str::parse)?.unwrap_or(0),
    })
}

/// Parses the value of `key`, if present, reporting its line on failure.
fn legacy_value<T, E: fmt::Display>(
    entries: &Entries,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>> {
    entries
        .get(key)
        .map(|value| {
            parse(&value.text)
                .map_err(|err| anyhow!("line {}: {key} = {:?}: {err}", value.line, value.text))
        })
        .transpose()
}

/// Legacy files spell booleans in several ways.
fn parse_legacy_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}
