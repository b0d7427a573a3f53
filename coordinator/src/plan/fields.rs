//! The checks of plan values that need no agent: every field of a step, precondition, health
//! check, check, workload and of `[cross_service]` is held to what it takes by
//! `flotilla_schemas::fields`, the table the agent expands a command by. A placeholder in a field
//! that takes none, a secret where none is allowed, a malformed placeholder, a path that leaves
//! the service root as written: each is refused here at its line and key, so what passes fails
//! at the agent only for what only the agent knows (its `[vars]`, its secrets, what a path
//! expands to, its allow-list).

use std::collections::BTreeMap;
use std::ops::Range;

use flotilla_schemas::fields::{self as table_of, FieldError, Table, Takes};
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
    #[serde(rename = "wave", default)]
    waves: Vec<Fields>,
    #[serde(default)]
    cross_service: Option<Fields>,
}

/// The tables a plan (its defaults) and each of its services may hold, with positions.
/// The tables inside `[cross_service]`, with positions: read apart from its other keys, since
/// a [`Fields`] value holds no position inside it.
#[derive(Debug, Default, Deserialize)]
struct CrossTables {
    #[serde(rename = "check", default)]
    checks: Vec<Fields>,
    #[serde(default)]
    log_correlation: Vec<Fields>,
}

#[derive(Debug, Default, Deserialize)]
struct CrossPositions {
    #[serde(default)]
    cross_service: Option<CrossTables>,
}

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

/// Where a value is written: the key of its table (`service[0].step[1]`) and the position of
/// the table's key that holds it (a nested value has no position of its own).
struct At<'a> {
    table: &'a str,
    span: Range<usize>,
}

/// Checks the placeholders and paths of the plan `text` (already known to parse).
pub(super) fn check(text: &str) -> Result<(), RuleError> {
    // Read apart rather than through `#[serde(flatten)]`, which loses the positions.
    let defaults: Tables = toml::from_str(text).unwrap_or_default();
    let positions: Positions = toml::from_str(text).unwrap_or_default();
    let own: Fields = toml::from_str(text).unwrap_or_default();
    table(&own_keys(&own), Table::Plan, "")?;
    for (i, wave) in positions.waves.iter().enumerate() {
        // Its analysis gates hold their own placeholders, checked by `plan::analysis`.
        let mut wave = wave.clone();
        wave.remove("analysis");
        table(&wave, Table::Wave, &format!("wave[{i}]"))?;
    }
    tables(&defaults, "")?;
    for (i, service) in positions.services.iter().enumerate() {
        tables(service, &format!("service[{i}]."))?;
    }
    if let Some(cross) = &positions.cross_service {
        cross_service(cross, text)?;
    }
    Ok(())
}

/// The keys of `fields` that hold text or a list of text: the table's own keys, not the tables
/// inside it (each checked as a table of its own).
fn own_keys(fields: &Fields) -> Fields {
    fields
        .iter()
        .filter(|(_, value)| match value.get_ref() {
            Value::String(_) => true,
            Value::Array(items) => items.iter().all(Value::is_str),
            _ => false,
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// `[cross_service]`: its own keys, then each of its tables at its own position.
fn cross_service(cross: &Fields, text: &str) -> Result<(), RuleError> {
    let own: Fields = cross
        .iter()
        .filter(|(key, _)| !matches!(Table::CrossService.field(None, key), Takes::Table(_)))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    table(&own, Table::CrossService, "cross_service")?;
    let tables: CrossPositions = toml::from_str(text).unwrap_or_default();
    let tables = tables.cross_service.unwrap_or_default();
    let lists = [
        (&tables.checks, "check"),
        (&tables.log_correlation, "log_correlation"),
    ];
    for (list, key) in lists {
        let Takes::Table(kind) = Table::CrossService.field(None, key) else {
            continue;
        };
        for (i, fields) in list.iter().enumerate() {
            table(fields, kind, &format!("cross_service.{key}[{i}]"))?;
        }
    }
    Ok(())
}

/// Why `text` (a template file shipped with the plan) cannot be rendered by any agent.
pub(crate) fn well_formed(text: &str) -> Result<(), String> {
    table_of::well_formed(text).map_err(|e| e.to_string())
}

fn tables(tables: &Tables, prefix: &str) -> Result<(), RuleError> {
    let kinds = [
        (&tables.steps, Table::Step, "step"),
        (&tables.preconditions, Table::Precondition, "precondition"),
        (&tables.health, Table::Health, "health"),
        (&tables.checks, Table::Check, "check"),
        (&tables.workloads, Table::Workload, "workload"),
    ];
    for (list, kind, name) in kinds {
        for (i, fields) in list.iter().enumerate() {
            table(fields, kind, &format!("{prefix}{name}[{i}]"))?;
        }
    }
    for (i, step) in tables.steps.iter().enumerate() {
        let is_write = step
            .get("action")
            .is_some_and(|a| a.get_ref().as_str() == Some("write_file"));
        if is_write {
            content_or_source(step, &format!("{prefix}step[{i}]"))?;
        }
    }
    Ok(())
}

/// Every field of `fields`, a table of kind `kind` written at key `at`.
fn table(fields: &Fields, kind: Table, at: &str) -> Result<(), RuleError> {
    let variant = kind
        .tag()
        .and_then(|tag| fields.get(tag))
        .and_then(|v| v.get_ref().as_str());
    for (key, value) in fields {
        let at = At {
            table: at,
            span: value.span(),
        };
        field(value.get_ref(), kind.field(variant, key), key, &at)?;
    }
    Ok(())
}

/// `value`, named `name` inside its table, holds only what `takes` allows; a nested table's
/// fields (or a list of tables') are held to its own rows.
fn field(value: &Value, takes: Takes, name: &str, at: &At<'_>) -> Result<(), RuleError> {
    match (takes, value) {
        (Takes::Table(inner), Value::Table(fields)) => {
            let variant = inner
                .tag()
                .and_then(|tag| fields.get(tag))
                .and_then(Value::as_str);
            for (key, value) in fields {
                field(
                    value,
                    inner.field(variant, key),
                    &format!("{name}.{key}"),
                    at,
                )?;
            }
            Ok(())
        }
        (Takes::Table(_), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    // A list of tables written inline: each keeps the list's position.
                    Value::Table(_) => field(item, takes, &format!("{name}[{i}]"), at)?,
                    _ => field(item, Takes::Nothing, &format!("{name}[{i}]"), at)?,
                }
            }
            Ok(())
        }
        (_, Value::String(text)) => takes.check(name, text).map_err(|e| refusal(at, name, e)),
        (_, Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| field(item, takes, &format!("{name}[{i}]"), at)),
        (_, Value::Table(fields)) => fields
            .iter()
            .try_for_each(|(key, item)| field(item, takes, &format!("{name}.{key}"), at)),
        _ => Ok(()),
    }
}

fn refusal(at: &At<'_>, name: &str, error: FieldError) -> RuleError {
    let key = match at.table {
        "" => name.to_owned(),
        table => format!("{table}.{name}"),
    };
    RuleError {
        span: Some(at.span.clone()),
        key,
        reason: error.to_string(),
    }
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
