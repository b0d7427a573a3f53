//! Which fields of a plan take placeholders, and which kinds: the one table that `flotilla plan
//! check` checks a plan against and that the agent expands a command by, so that the two cannot
//! disagree. A field the table does not list takes none: a placeholder in it is refused, never
//! taken as text.

use crate::paths::{self, PathError};
use crate::placeholder::{self, Piece, PlaceholderError};
use Table::{
    Check as C, CorrelationRequest as R, CrossService as X, Health as H, LogCorrelation as L,
    Plan as N, Precondition as P, Step as S, Wave as V, Workload as W,
};
use Takes::{FileContent, Nothing, Path, Secrets, Vars};

/// What a field takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// No placeholder: a `${` in it is refused (it is matched, listed or looked up as written).
    Nothing,
    /// `${var:…}` and the run variables; `${secret:…}` is refused (its value would show in
    /// failure reasons, logs and process listings).
    Vars,
    /// A path inside the service root: as [`Takes::Vars`], and the path must pass the path rule
    /// as written and again once expanded.
    Path,
    /// `${var:…}`, the run variables and `${secret:…}`.
    Secrets,
    /// The template of a written file: as [`Takes::Secrets`], each value encoded for the
    /// file's format (the agent renders it with the file's expanded path).
    FileContent,
    /// A table, or a list of tables, of this kind.
    Table(Table),
}

/// The tables of a plan whose fields the table describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// The plan's own keys (`name`, `description`): read by the coordinator only.
    Plan,
    /// `[[wave]]`.
    Wave,
    /// `[[step]]`, by `action`.
    Step,
    /// `[[precondition]]`, by `type`.
    Precondition,
    /// `[[health]]`.
    Health,
    /// `[[check]]` and `[[cross_service.check]]`, by `type`.
    Check,
    /// `[[workload]]`, by `type`.
    Workload,
    /// `[cross_service]`.
    CrossService,
    /// `[[cross_service.log_correlation]]`.
    LogCorrelation,
    /// The `request` of a log-correlation check: quoted across the fleet, so no secret at all.
    CorrelationRequest,
}

/// One row of the table: in `table`, when its tag is `variant` (any when `None`), `key` takes
/// `takes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub table: Table,
    pub variant: Option<&'static str>,
    pub key: &'static str,
    pub takes: Takes,
}

/// Why a field's text cannot be expanded, whatever the agent's vars and secrets. Names the field
/// and the placeholder, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{found} is not allowed in {key}: {key} takes no placeholder, it is used as written")]
    NoPlaceholder { key: String, found: String },
    #[error(
        "${{secret:{name}}} is not allowed in {key}: {}",
        placeholder::SECRET_NOT_ALLOWED_WHY
    )]
    Secret { key: String, name: String },
    #[error(transparent)]
    Syntax(#[from] PlaceholderError),
    #[error("secret name {0:?} is not valid: use letters, digits, '_' and '-'")]
    SecretName(String),
    #[error("${{var:}} names no variable")]
    EmptyVar,
    #[error(transparent)]
    Path(#[from] PathError),
}

const fn row(table: Table, variant: Option<&'static str>, key: &'static str, takes: Takes) -> Row {
    Row {
        table,
        variant,
        key,
        takes,
    }
}

/// Every field of the tables that holds text, and what it takes. Fields of an HTTP request
/// (`url`, `body`, `headers`, …) are the same in a health check, an `http` check and an `http`
/// workload. Numbers and booleans hold no placeholder and are not listed.
pub const ROWS: &[Row] = &[
    row(N, None, "name", Nothing),
    row(N, None, "description", Nothing),
    row(V, None, "name", Nothing),
    row(S, Some("write_file"), "path", Path),
    row(S, Some("write_file"), "content", FileContent),
    row(S, Some("write_file"), "source", Nothing),
    row(S, Some("replace_text"), "path", Path),
    row(S, Some("replace_text"), "find", Vars),
    row(S, Some("replace_text"), "replace", Vars),
    row(S, Some("delete"), "path", Path),
    row(S, Some("run_command"), "program", Nothing),
    row(S, Some("run_command"), "args", Vars),
    row(S, Some("run_command"), "env", Vars),
    row(P, None, "path", Path),
    row(P, Some("file_contains"), "text", Vars),
    row(H, None, "url", Vars),
    row(H, None, "method", Nothing),
    row(H, None, "body", Secrets),
    row(H, None, "body_contains", Vars),
    row(H, None, "headers", Secrets),
    row(C, Some("http"), "url", Vars),
    row(C, Some("http"), "method", Nothing),
    row(C, Some("http"), "body", Secrets),
    row(C, Some("http"), "body_contains", Vars),
    row(C, Some("http"), "headers", Secrets),
    row(C, Some("tcp"), "address", Vars),
    row(C, Some("command"), "program", Nothing),
    row(C, Some("command"), "args", Vars),
    row(C, Some("command"), "stdout_contains", Vars),
    row(C, Some("log"), "path", Vars),
    row(C, Some("log"), "contains", Vars),
    row(W, None, "name", Nothing),
    row(W, Some("http"), "url", Vars),
    row(W, Some("http"), "method", Nothing),
    row(W, Some("http"), "body", Secrets),
    row(W, Some("http"), "headers", Secrets),
    row(W, Some("job"), "program", Nothing),
    row(W, Some("job"), "args", Vars),
    row(W, Some("job"), "throughput_field", Nothing),
    row(X, None, "config_files", Path),
    row(X, None, "required_keys", Nothing),
    row(X, None, "check", Takes::Table(C)),
    row(X, None, "log_correlation", Takes::Table(L)),
    row(L, None, "request", Takes::Table(R)),
    row(L, None, "expect_in_logs", Nothing),
    row(L, None, "log", Vars),
    row(L, None, "contains", Vars),
    row(R, None, "service", Nothing),
    row(R, None, "url", Vars),
    row(R, None, "method", Nothing),
    row(R, None, "body", Vars),
    row(R, None, "headers", Vars),
];

// === impl Table ===

impl Table {
    /// The key whose value says which variant a table is, if the table has variants.
    pub fn tag(self) -> Option<&'static str> {
        match self {
            Table::Step => Some("action"),
            Table::Precondition | Table::Check | Table::Workload => Some("type"),
            _ => None,
        }
    }

    /// What `key` takes in a table of this kind whose tag is `variant`; [`Takes::Nothing`] for
    /// a key the table does not list.
    pub fn field(self, variant: Option<&str>, key: &str) -> Takes {
        ROWS.iter()
            .find(|r| {
                r.table == self && r.key == key && r.variant.is_none_or(|v| Some(v) == variant)
            })
            .map_or(Takes::Nothing, |r| r.takes)
    }
}

// === impl Takes ===

impl Takes {
    /// Checks `text`, the value of field `key`, for what no agent could expand: a placeholder
    /// where none is taken, a secret where none is allowed, a malformed placeholder, a path that
    /// leaves the service root as written. What only an agent knows (its vars and secrets, and
    /// what a path expands to) is left to it.
    pub fn check(self, key: &str, text: &str) -> Result<(), FieldError> {
        match self {
            Takes::Nothing | Takes::Table(_) => match text.find("${") {
                Some(at) => Err(FieldError::NoPlaceholder {
                    key: key.to_owned(),
                    found: quoted_placeholder(&text[at..]),
                }),
                None => Ok(()),
            },
            Takes::Vars | Takes::Path => {
                well_formed(text)?;
                if let Some(name) = placeholder::first_secret(text) {
                    return Err(FieldError::Secret {
                        key: key.to_owned(),
                        name: name.to_owned(),
                    });
                }
                if self == Takes::Path {
                    paths::relative_path(text)?;
                }
                Ok(())
            }
            Takes::Secrets | Takes::FileContent => well_formed(text),
        }
    }

    /// Whether values of this field are expanded at all.
    pub fn expands(self) -> bool {
        !matches!(self, Takes::Nothing | Takes::Table(_))
    }
}

/// Why `text`'s placeholders cannot be rendered by any agent, if they cannot.
pub fn well_formed(text: &str) -> Result<(), FieldError> {
    for piece in placeholder::parse(text)? {
        match piece {
            Piece::Secret(name, _) if !placeholder::valid_secret_name(name) => {
                return Err(FieldError::SecretName(name.to_owned()));
            }
            Piece::Var("", _) => return Err(FieldError::EmptyVar),
            _ => {}
        }
    }
    Ok(())
}

/// `rest` (which starts with `${`) up to its `}`, at most a few dozen characters: what a refusal
/// quotes.
fn quoted_placeholder(rest: &str) -> String {
    const MAX_CHARS: usize = 40;
    let end = rest.find('}').map_or(rest.len(), |i| i + 1);
    rest[..end].chars().take(MAX_CHARS).collect()
}

#[cfg(test)]
mod tests;
