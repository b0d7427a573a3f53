//! The checks of plan values that need no agent: every path a step, precondition or
//! cross-service stage reads must stay inside the service root, and every field the agent
//! renders (`${var:…}`, `${secret:…}`) must be well formed. The rules are the agent's own
//! (`flotilla_schemas::paths`, `flotilla_schemas::placeholder`), so what passes here fails at the
//! agent only for what only the agent knows: its `[vars]`, its secrets, its allow-list.

use std::collections::BTreeMap;

use flotilla_schemas::paths::relative_path;
use flotilla_schemas::placeholder::{self, Piece};
use serde::Deserialize;
use toml::{Spanned, Value};

use super::RuleError;

/// One table as written: each key's value with its position.
type Fields = BTreeMap<String, Spanned<Value>>;

/// The services and the cross-service stage, with positions. Not `deny_unknown_fields`: the
/// plan's own types refuse unknown keys, this only reads.
#[derive(Debug, Default, Deserialize)]
struct Positions {
    #[serde(rename = "service", default)]
    services: Vec<Tables>,
    #[serde(default)]
    cross_service: Option<CrossService>,
}

/// The tables a plan (its defaults) and each of its services may hold, with positions.
#[derive(Debug, Default, Deserialize)]
struct Tables {
    #[serde(rename = "step", default)]
    steps: Vec<Fields>,
    #[serde(rename = "precondition", default)]
    preconditions: Vec<Fields>,
    #[serde(default)]
    health: Vec<Fields>,
    #[serde(rename = "check", default)]
    checks: Vec<Fields>,
    #[serde(rename = "workload", default)]
    workloads: Vec<Fields>,
}

#[derive(Debug, Default, Deserialize)]
struct CrossService {
    #[serde(rename = "check", default)]
    checks: Vec<Fields>,
    #[serde(default)]
    config_files: Vec<Spanned<String>>,
    #[serde(default)]
    log_correlation: Vec<Fields>,
}

/// Fields the agent renders placeholders in, by table: health checks, checks and workloads
/// (`checks::render`, `workload::render` at the agent), the request and pattern of a
/// log-correlation check; of the steps, only `write_file`'s content.
const HEALTH_PLACEHOLDERS: &[&str] = &["url", "body", "headers"];
const CHECK_PLACEHOLDERS: &[&str] = &[
    "url", "body", "headers", "address", "path", "contains", "args",
];
const WORKLOAD_PLACEHOLDERS: &[&str] = &["url", "body", "headers", "args"];
const CORRELATION_PLACEHOLDERS: &[&str] = &["request", "log", "contains"];
/// Of those, the fields that take no `${secret:…}`: only a request body and headers carry one
/// (a log-correlation check's request is sent and quoted across the fleet: none at all).
const NO_SECRET: &[&str] = &[
    "url", "address", "path", "contains", "args", "request", "log",
];

/// Checks the paths and placeholders of the plan `text` (already known to parse).
pub(super) fn check(text: &str) -> Result<(), RuleError> {
    // Read twice rather than through `#[serde(flatten)]`, which loses the positions.
    let defaults: Tables = toml::from_str(text).unwrap_or_default();
    let positions: Positions = toml::from_str(text).unwrap_or_default();
    tables(&defaults, "")?;
    for (i, service) in positions.services.iter().enumerate() {
        tables(service, &format!("service[{i}]."))?;
    }
    if let Some(cross) = &positions.cross_service {
        for (i, check) in cross.checks.iter().enumerate() {
            placeholders(
                check,
                &format!("cross_service.check[{i}]"),
                CHECK_PLACEHOLDERS,
            )?;
        }
        for (i, correlation) in cross.log_correlation.iter().enumerate() {
            placeholders(
                correlation,
                &format!("cross_service.log_correlation[{i}]"),
                CORRELATION_PLACEHOLDERS,
            )?;
        }
        for (i, file) in cross.config_files.iter().enumerate() {
            if let Err(e) = relative_path(file.get_ref()) {
                let key = format!("cross_service.config_files[{i}]");
                return Err(RuleError::at(file, key, e.to_string()));
            }
        }
    }
    Ok(())
}

fn tables(tables: &Tables, prefix: &str) -> Result<(), RuleError> {
    for (i, step) in tables.steps.iter().enumerate() {
        let at = format!("{prefix}step[{i}]");
        path(step, &at)?;
        let is_write = step
            .get("action")
            .is_some_and(|a| a.get_ref().as_str() == Some("write_file"));
        if is_write {
            placeholders(step, &at, &["content"])?;
            content_or_source(step, &at)?;
        }
    }
    for (i, condition) in tables.preconditions.iter().enumerate() {
        path(condition, &format!("{prefix}precondition[{i}]"))?;
    }
    for (i, check) in tables.health.iter().enumerate() {
        placeholders(check, &format!("{prefix}health[{i}]"), HEALTH_PLACEHOLDERS)?;
    }
    for (i, check) in tables.checks.iter().enumerate() {
        placeholders(check, &format!("{prefix}check[{i}]"), CHECK_PLACEHOLDERS)?;
    }
    for (i, workload) in tables.workloads.iter().enumerate() {
        placeholders(
            workload,
            &format!("{prefix}workload[{i}]"),
            WORKLOAD_PLACEHOLDERS,
        )?;
    }
    Ok(())
}

/// A `write_file` has its template inline (`content`) or in a plan file (`source`): one of
/// the two.
fn content_or_source(step: &Fields, at: &str) -> Result<(), RuleError> {
    match (step.get("content"), step.get("source")) {
        (Some(_), None) => Ok(()),
        (None, Some(source)) if source.get_ref().is_str() => Ok(()),
        (None, Some(source)) => Err(RuleError::at(
            source,
            format!("{at}.source"),
            "source is a path relative to the plan file, e.g. \"templates/service.toml.tmpl\""
                .into(),
        )),
        (Some(_), Some(source)) => Err(RuleError::at(
            source,
            format!("{at}.source"),
            "write_file takes content or source, not both".into(),
        )),
        (None, None) => Err(RuleError {
            span: step.get("path").map(|p| p.span()),
            key: at.to_owned(),
            reason: "write_file needs content (the template inline) or source (a file next to \
                     the plan)"
                .into(),
        }),
    }
}

/// The table's `path`, when it has one, stays inside the service root.
fn path(fields: &Fields, at: &str) -> Result<(), RuleError> {
    let Some(value) = fields.get("path") else {
        return Ok(());
    };
    match value.get_ref().as_str().map(relative_path) {
        Some(Err(e)) => Err(RuleError::at(value, format!("{at}.path"), e.to_string())),
        _ => Ok(()),
    }
}

/// Every string in `keys` (or in a list or table under them, such as `headers`) has
/// well-formed placeholders.
fn placeholders(fields: &Fields, at: &str, keys: &[&str]) -> Result<(), RuleError> {
    for key in keys {
        let Some(value) = fields.get(*key) else {
            continue;
        };
        let mut strings = Vec::new();
        strings_in(value.get_ref(), &mut strings);
        for text in strings {
            if let Err(reason) = well_formed(text) {
                return Err(RuleError::at(value, format!("{at}.{key}"), reason));
            }
            if let Some(name) = placeholder::first_secret(text)
                && NO_SECRET.contains(key)
            {
                let reason = format!(
                    "${{secret:{name}}} is not allowed in {key}: {}",
                    placeholder::SECRET_NOT_ALLOWED_WHY
                );
                return Err(RuleError::at(value, format!("{at}.{key}"), reason));
            }
        }
    }
    Ok(())
}

/// Every string in `value`, however deep in lists and tables.
fn strings_in<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings_in(v, out)),
        Value::Table(table) => table.values().for_each(|v| strings_in(v, out)),
        _ => {}
    }
}

/// Why `text`'s placeholders cannot be rendered by any agent, if they cannot.
pub(crate) fn well_formed(text: &str) -> Result<(), String> {
    for piece in placeholder::parse(text).map_err(|e| e.to_string())? {
        match piece {
            Piece::Secret(name, _) if !placeholder::valid_secret_name(name) => {
                return Err(format!(
                    "secret name {name:?} is not valid: use letters, digits, '_' and '-'"
                ));
            }
            Piece::Var("", _) => return Err("${var:} names no variable".to_owned()),
            _ => {}
        }
    }
    Ok(())
}
