//! `config/service.toml`: the unified TOML layout, secrets as placeholders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, ensure};
use serde::Deserialize;

use super::secrets::resolve_placeholder;
use super::{Behaviour, Config, Layout, Role, read};
use crate::logging::{Level, LogFormat};

/// `config/service.toml` as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandardFile {
    service: ServiceSection,
    server: ServerSection,
    logging: LoggingSection,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    behaviour: Behaviour,
    #[serde(default)]
    #[expect(dead_code, reason = "free-form; only its key names are reported")]
    role: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: String,
    environment: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    host: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSection {
    format: LogFormat,
    level: Level,
    file: PathBuf,
}

/// Loads `path`, the standard file under `root`.
pub(super) fn load(
    root: &Path,
    path: &Path,
    role: Role,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config> {
    let text = read(path)?;
    let file: StandardFile = toml::from_str(&text).map_err(|err| toml_error(path, &text, &err))?;
    // Parsed a second time, untyped, to learn which keys are actually present.
    let raw: toml::Table = toml::from_str(&text).map_err(|err| toml_error(path, &text, &err))?;

    ensure!(
        file.service.name == role.as_str(),
        "{}: service.name is {:?} but --role is {role}",
        path.display(),
        file.service.name
    );
    let secrets = file
        .secrets
        .iter()
        .map(|(key, value)| {
            let secret =
                resolve_placeholder(root, value, env).with_context(|| format!("secrets.{key}"))?;
            Ok((key.clone(), secret))
        })
        .collect::<Result<_>>()
        .with_context(|| path.display().to_string())?;

    Ok(Config {
        layout: Layout::Standard,
        role,
        environment: Some(file.service.environment),
        host: file.server.host,
        port: file.server.port,
        log_format: file.logging.format,
        log_level: file.logging.level,
        log_file: root.join(file.logging.file),
        secrets,
        behaviour: file.behaviour,
        config_keys: dotted_keys(&raw),
    })
}

/// Turns a TOML error into one line naming the file, line and column.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> anyhow::Error {
    match err.span() {
        Some(span) => {
            // Spans are byte offsets; never slice blindly into user text.
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            anyhow!(
                "{} line {line}, column {column}: {}",
                path.display(),
                err.message()
            )
        }
        None => anyhow!("{}: {}", path.display(), err.message()),
    }
}

/// Sorted dotted names of all leaf keys in `table`.
fn dotted_keys(table: &toml::Table) -> Vec<String> {
    fn collect(table: &toml::Table, prefix: &str, keys: &mut Vec<String>) {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => collect(inner, &name, keys),
                _ => keys.push(name),
            }
        }
    }
    let mut keys = Vec::new();
    collect(table, "", &mut keys);
    keys.sort();
    keys
}
