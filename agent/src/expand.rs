//! The one expansion of a command's placeholders: every field of a step, a precondition, a
//! health check, a check, a workload and every cross-service configuration file is expanded, or
//! refused, as [`flotilla_schemas::fields`] says: the table `flotilla plan check` reads too, so
//! a plan that passes there fails here only for what only this agent knows (its vars, its
//! secrets, what a path expands to).

use flotilla_schemas::fields::{FieldError, Table, Takes};
use flotilla_schemas::paths::{self, PathError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::template::{Renderer, TemplateError};

/// Why a field could not be expanded. Names the field and the placeholder, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// Refused as written, with `flotilla plan check`'s words (a command may come from
    /// elsewhere than a checked plan).
    #[error("{0}")]
    Field(FieldError),
    /// A placeholder does not resolve (as shown).
    #[error("{key}: {error}")]
    Template { key: String, error: TemplateError },
    /// A path leaves the service root once expanded (`${var:dir}` holding `../x`).
    #[error("{key}: once expanded, {error}")]
    Path { key: String, error: PathError },
    /// The value cannot be read as the table's tree (never for the wire types).
    #[error("{key}: cannot be expanded: {detail}")]
    Shape { key: String, detail: String },
}

/// `value`, a `table` (a step, a check, …), with every field expanded as the table says. A
/// written file's template ([`Takes::FileContent`]) is left as it is: the caller renders it with
/// the file's expanded path ([`Renderer::render_file`]).
pub fn expand<T: Serialize + DeserializeOwned>(
    renderer: &Renderer<'_>,
    table: Table,
    value: &T,
) -> Result<T, ExpandError> {
    let shape = |e: serde_json::Error| ExpandError::Shape {
        key: String::new(),
        detail: e.to_string(),
    };
    let mut tree = serde_json::to_value(value).map_err(shape)?;
    expand_table(renderer, table, &mut tree, "")?;
    serde_json::from_value(tree).map_err(shape)
}

/// `text`, the value of field `key`, expanded as `takes` says: refused where the field takes no
/// placeholder or no secret, and, for a path, held to the path rule as written and expanded.
pub fn expand_text(
    renderer: &Renderer<'_>,
    takes: Takes,
    key: &str,
    text: &str,
) -> Result<String, ExpandError> {
    takes.check(key, text).map_err(ExpandError::Field)?;
    if !takes.expands() {
        return Ok(text.to_owned());
    }
    let expanded = renderer
        .render(text)
        .map_err(|error| ExpandError::Template {
            key: key.to_owned(),
            error,
        })?;
    if takes == Takes::Path {
        paths::relative_path(&expanded).map_err(|error| ExpandError::Path {
            key: key.to_owned(),
            error,
        })?;
    }
    Ok(expanded)
}

/// Expands the fields of `tree`, a table of kind `table` (or a list of them) at `at`.
fn expand_table(
    renderer: &Renderer<'_>,
    table: Table,
    tree: &mut Value,
    at: &str,
) -> Result<(), ExpandError> {
    match tree {
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| expand_table(renderer, table, item, &format!("{at}[{i}]"))),
        Value::Object(fields) => {
            let variant = table
                .tag()
                .and_then(|tag| fields.get(tag))
                .and_then(Value::as_str)
                .map(str::to_owned);
            for (key, value) in fields.iter_mut() {
                let name = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                match table.field(variant.as_deref(), key) {
                    Takes::Table(inner) => expand_table(renderer, inner, value, &name)?,
                    Takes::FileContent => {}
                    takes => expand_strings(renderer, takes, value, &name)?,
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Expands every string in `value` (however deep in lists and tables, e.g. `headers`).
fn expand_strings(
    renderer: &Renderer<'_>,
    takes: Takes,
    value: &mut Value,
    name: &str,
) -> Result<(), ExpandError> {
    match value {
        Value::String(text) => {
            *text = expand_text(renderer, takes, name, text)?;
            Ok(())
        }
        Value::Array(items) => items.iter_mut().enumerate().try_for_each(|(i, item)| {
            expand_strings(renderer, takes, item, &format!("{name}[{i}]"))
        }),
        Value::Object(map) => map.iter_mut().try_for_each(|(key, item)| {
            expand_strings(renderer, takes, item, &format!("{name}.{key}"))
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
