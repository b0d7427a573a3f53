//! Placeholders in written content: `${secret:NAME}` and `${var:NAME}`, resolved by the agent so
//! that secret values never travel over the bus. `$${` writes a literal `${`, for files in which
//! the service itself resolves placeholders at run time.
//!
//! In a file whose name gives its format (`.toml`, `.json`, `.yaml`/`.yml`, `.env`), each value
//! is escaped for the string it sits in ([`context`], [`encode`]), and the rendered file is read
//! back with the format's real parser ([`verify`]): every placeholder must hold exactly its value
//! where it was put, or the file is refused, naming the placeholder and never the value. A filter
//! (`${secret:NAME|json}`, `|toml`, `|yaml`, `|env`) escapes for a format the file's name does not
//! tell; `|raw` writes the value as it is.

use std::collections::BTreeMap;

use flotilla_schemas::placeholder::{self, PlaceholderError};

use crate::config::SecretSources;
use crate::run_vars::RunVars;

mod context;
mod encode;
mod ini;
mod verify;

pub use context::Format;
use context::Position;
pub use encode::written_forms;
pub use verify::{Node, parse};

/// Why content could not be rendered. Names the placeholder, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("secret {0:?} is not available from the agent's secret sources")]
    UnknownSecret(String),
    #[error("variable {0:?} is not defined in the agent's [vars]")]
    UnknownVar(String),
    #[error("{0:?} is not known: the command carries no trace context (telemetry is off)")]
    NoTraceContext(String),
    #[error(transparent)]
    Syntax(#[from] PlaceholderError),
    #[error("{path}: ${{{placeholder}}} cannot be written safely as {format}: {why}")]
    Unsafe {
        path: String,
        placeholder: String,
        format: &'static str,
        why: String,
    },
    #[error("{path} does not parse as {format} once rendered: {detail}")]
    Unparsable {
        path: String,
        format: &'static str,
        detail: String,
    },
}

/// What a secret's value is shown as in a dry run.
pub const MASK: &str = "********";

/// Resolves placeholders: `vars` answers `${var:…}`, `secrets` answers `${secret:…}`.
pub struct Renderer<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub secrets: &'a SecretSources,
    /// Answers `${run:…}` and `${service:…}`.
    pub run: &'a RunVars,
    /// Write [`MASK`] for each secret, once it is known to resolve (and, in a file, checked to
    /// be safe where it is): what a dry run shows.
    pub mask_secrets: bool,
}

/// A template split at its placeholders, with their values resolved.
enum Piece {
    Text(String),
    Placeholder(Placeholder),
}

struct Placeholder {
    /// What is between `${` and `}`, for messages.
    source: String,
    secret: bool,
    value: String,
    filter: Filter,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Raw,
    Format(Format),
}

/// How a value goes into a file, and how the read-back check finds it.
struct Insert {
    text: String,
    check: Check,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The check's copy holds the same text: only the parse must succeed.
    Same,
    /// The check's copy holds a marker inside a string; the value must stand in its place.
    Inner,
    /// The check's copy holds a marker as a whole string; the value must be that whole string.
    Whole,
}

// === impl Renderer ===

impl Renderer<'_> {
    /// Renders `content` where no file format applies (check and workload fields): values are
    /// written as they are, or escaped as a filter says. Says which placeholder cannot be
    /// resolved.
    pub fn render(&self, content: &str) -> Result<String, TemplateError> {
        let pieces = self.pieces(content)?;
        Ok(assemble(&pieces, |_, p| self.shown(p, filtered(p, None))))
    }

    /// Renders `content` for the file at `path`. In a format known from the name, each value is
    /// escaped for its place and the result is parsed back: a placeholder that cannot be written
    /// so that the parser reads exactly its value is refused, naming it.
    pub fn render_file(&self, path: &str, content: &str) -> Result<String, TemplateError> {
        let pieces = self.pieces(content)?;
        let rendered = render_file(path, content, &pieces)?;
        Ok(if self.mask_secrets {
            rendered.masked()
        } else {
            rendered.text
        })
    }

    /// `text`, the written form of `placeholder`, or [`MASK`] for a secret in a dry run.
    fn shown(&self, placeholder: &Placeholder, text: String) -> String {
        if self.mask_secrets && placeholder.secret {
            MASK.to_owned()
        } else {
            text
        }
    }

    fn pieces(&self, content: &str) -> Result<Vec<Piece>, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        for piece in placeholder::parse(content)? {
            let (secret, name, filter) = match piece {
                placeholder::Piece::Text(t) => {
                    text.push_str(t);
                    continue;
                }
                placeholder::Piece::Literal => {
                    text.push_str("${");
                    continue;
                }
                placeholder::Piece::Var(name, filter) => (false, name, filter),
                placeholder::Piece::Secret(name, filter) => (true, name, filter),
                placeholder::Piece::Run(var, filter) => (false, var.name(), filter),
            };
            let value = if secret {
                self.secret(name)?
            } else if let placeholder::Piece::Run(var, _) = piece {
                self.run
                    .get(var)
                    .ok_or_else(|| TemplateError::NoTraceContext(var.name().to_owned()))?
            } else {
                self.vars
                    .get(name)
                    .cloned()
                    .ok_or_else(|| TemplateError::UnknownVar(name.to_owned()))?
            };
            let source = match (secret, piece) {
                (_, placeholder::Piece::Run(..)) => name.to_owned(),
                (true, _) => format!("secret:{name}"),
                (false, _) => format!("var:{name}"),
            };
            let source = match filter {
                Some(filter) => format!("{source}|{}", filter.name()),
                None => source,
            };
            pieces.push(Piece::Text(std::mem::take(&mut text)));
            pieces.push(Piece::Placeholder(Placeholder {
                source,
                secret,
                value,
                filter: Filter::from(filter),
            }));
        }
        pieces.push(Piece::Text(text));
        Ok(pieces)
    }

    fn secret(&self, name: &str) -> Result<String, TemplateError> {
        if !placeholder::valid_secret_name(name) {
            return Err(TemplateError::UnknownSecret(name.to_owned()));
        }
        if let Ok(value) = std::env::var(format!("{}{name}", self.secrets.env_prefix)) {
            return Ok(value);
        }
        if let Some(dir) = &self.secrets.dir
            && let Ok(value) = std::fs::read_to_string(dir.join(name))
        {
            return Ok(value.trim_end_matches(['\n', '\r']).to_owned());
        }
        Err(TemplateError::UnknownSecret(name.to_owned()))
    }
}

/// A rendered file, and what its secrets become when masked.
struct RenderedFile<'a> {
    text: String,
    pieces: &'a [Piece],
    /// Each placeholder's text with a secret's value replaced by [`MASK`], escaped as the value
    /// was.
    masked: Vec<String>,
}

impl RenderedFile<'_> {
    fn masked(&self) -> String {
        assemble(self.pieces, |i, _| self.masked[i].clone())
    }
}

/// [`Renderer::render_file`] once the placeholders are resolved.
fn render_file<'a>(
    path: &str,
    content: &str,
    pieces: &'a [Piece],
) -> Result<RenderedFile<'a>, TemplateError> {
    let plain = |value: &dyn Fn(&Placeholder) -> String| RenderedFile {
        text: assemble(pieces, |_, p| value(p)),
        pieces,
        masked: placeholders(pieces)
            .map(|p| if p.secret { MASK.to_owned() } else { value(p) })
            .collect(),
    };
    if ini::is_ini(path) {
        // No escapes exist: a value goes in as it is, or not at all.
        let refused = placeholders(pieces)
            .filter(|p| p.filter == Filter::None)
            .find_map(|p| ini::unwritable(&p.value).map(|why| (p, why)));
        if let Some((placeholder, why)) = refused {
            return Err(TemplateError::Unsafe {
                path: path.to_owned(),
                placeholder: placeholder.source.clone(),
                format: "INI",
                why: why.into(),
            });
        }
    }
    let Some(format) = Format::of_path(path) else {
        return Ok(plain(&|p| filtered(p, None)));
    };
    let placeholders: Vec<&Placeholder> = placeholders(pieces).collect();
    // Nothing to protect, or every value opted out: the file is the plan's business.
    if placeholders.iter().all(|p| p.filter == Filter::Raw) {
        return Ok(plain(&|p| p.value.clone()));
    }
    let lexed: Vec<context::Piece<'_>> = pieces
        .iter()
        .map(|piece| match piece {
            Piece::Text(text) => context::Piece::Text(text),
            Piece::Placeholder(_) => context::Piece::Placeholder,
        })
        .collect();
    let positions = context::positions(format, &lexed);
    let mut inserts = Vec::with_capacity(placeholders.len());
    for (placeholder, position) in placeholders.iter().zip(&positions) {
        let insert =
            insert(format, placeholder, *position).map_err(|why| TemplateError::Unsafe {
                path: path.to_owned(),
                placeholder: placeholder.source.clone(),
                format: format.name(),
                why,
            })?;
        inserts.push(insert);
    }
    let rendered = assemble(pieces, |i, _| inserts[i].text.clone());
    ReadBack {
        path,
        format,
        pieces,
        inserts: &inserts,
        marker: marker_prefix(content, &placeholders),
    }
    .verify(&rendered)?;
    // MASK goes wherever the value could (it holds no character that needs more).
    let masked = placeholders
        .iter()
        .zip(&positions)
        .zip(&inserts)
        .map(|((p, position), written)| {
            if p.secret {
                insert(format, &p.with_value(MASK), *position)
                    .map_or_else(|_| MASK.to_owned(), |i| i.text)
            } else {
                written.text.clone()
            }
        })
        .collect();
    Ok(RenderedFile {
        text: rendered,
        pieces,
        masked,
    })
}

// === impl Placeholder ===

impl Placeholder {
    fn with_value(&self, value: &str) -> Self {
        Self {
            source: self.source.clone(),
            value: value.to_owned(),
            ..*self
        }
    }
}

// === impl Filter ===

impl From<Option<placeholder::Filter>> for Filter {
    fn from(filter: Option<placeholder::Filter>) -> Self {
        match filter {
            None => Self::None,
            Some(placeholder::Filter::Raw) => Self::Raw,
            Some(placeholder::Filter::Toml) => Self::Format(Format::Toml),
            Some(placeholder::Filter::Json) => Self::Format(Format::Json),
            Some(placeholder::Filter::Yaml) => Self::Format(Format::Yaml),
            Some(placeholder::Filter::Env) => Self::Format(Format::Env),
        }
    }
}

fn placeholders(pieces: &[Piece]) -> impl Iterator<Item = &Placeholder> {
    pieces.iter().filter_map(|piece| match piece {
        Piece::Placeholder(p) => Some(p),
        Piece::Text(_) => None,
    })
}

/// The text of `pieces` with placeholder `i` written as `value(i, placeholder)`.
fn assemble(pieces: &[Piece], value: impl Fn(usize, &Placeholder) -> String) -> String {
    let mut out = String::new();
    let mut index = 0;
    for piece in pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Placeholder(p) => {
                out.push_str(&value(index, p));
                index += 1;
            }
        }
    }
    out
}

/// The value as its filter writes it, where `format` (the file's) does not already escape it.
fn filtered(placeholder: &Placeholder, format: Option<Format>) -> String {
    match placeholder.filter {
        Filter::Format(inner) if Some(inner) != format => {
            encode::escape_for(inner, &placeholder.value)
        }
        _ => placeholder.value.clone(),
    }
}

/// How `placeholder` goes in at `position`, or why it cannot go there safely. A secret must be
/// escapable where it is; a variable may also be part of the syntax (`port = ${var:port}`),
/// written as it is, and the parse still has to succeed.
fn insert(format: Format, placeholder: &Placeholder, position: Position) -> Result<Insert, String> {
    let value = filtered(placeholder, Some(format));
    let as_is = |check| {
        Ok(Insert {
            text: value.clone(),
            check,
        })
    };
    if placeholder.filter == Filter::Raw {
        return as_is(Check::Same);
    }
    match position {
        Position::String(quote) => match encode::escape(quote, &value) {
            Some(text) => Ok(Insert {
                text,
                check: Check::Inner,
            }),
            None if placeholder.secret => Err(format!(
                "it is inside {}; put it in a \"…\" string",
                quote.describe()
            )),
            None => as_is(Check::Inner),
        },
        Position::Value if placeholder.secret => Ok(Insert {
            text: encode::quoted(format, &value),
            check: Check::Whole,
        }),
        Position::Value | Position::Other if !placeholder.secret => as_is(Check::Same),
        Position::Value | Position::Other => Err(
            "it is outside a string and not a whole value; put it in a \"…\" string or make it \
             the whole value of a key"
                .into(),
        ),
        Position::Comment if value.contains(['\n', '\r']) => {
            Err("it is in a comment and its value holds a line break".into())
        }
        Position::Comment => as_is(Check::Same),
    }
}

/// A marker prefix that occurs in neither the template nor any value.
fn marker_prefix(content: &str, placeholders: &[&Placeholder]) -> String {
    let mut prefix = String::from("flotillaslot");
    while content.contains(&prefix) || placeholders.iter().any(|p| p.value.contains(&prefix)) {
        prefix.push('q');
    }
    prefix
}

/// The read-back check: the template rendered with a marker in each checked place is parsed,
/// each marker is swapped for its value, and the rendered file must parse to exactly that tree.
struct ReadBack<'a> {
    path: &'a str,
    format: Format,
    pieces: &'a [Piece],
    inserts: &'a [Insert],
    marker: String,
}

// === impl ReadBack ===

impl ReadBack<'_> {
    fn verify(&self, rendered: &str) -> Result<(), TemplateError> {
        let all = |_: usize| true;
        let shape =
            verify::parse(self.format, &self.with_markers(|_| false)).map_err(|detail| {
                TemplateError::Unparsable {
                    path: self.path.to_owned(),
                    format: self.format.name(),
                    detail,
                }
            })?;
        if verify::parse(self.format, rendered).ok() == Some(self.expected(&shape, all)) {
            return Ok(());
        }
        // Name the first placeholder that breaks the file on its own.
        let culprit = (0..self.inserts.len())
            .filter(|&i| self.inserts[i].check != Check::Same)
            .find(|&i| {
                let alone = self.with_markers(|j| j == i);
                verify::parse(self.format, &alone).ok() != Some(self.expected(&shape, |j| j == i))
            });
        let placeholder = match culprit.and_then(|i| placeholders(self.pieces).nth(i)) {
            Some(p) => p.source.clone(),
            None => {
                return Err(TemplateError::Unparsable {
                    path: self.path.to_owned(),
                    format: self.format.name(),
                    detail: "the values together change its structure".into(),
                });
            }
        };
        Err(TemplateError::Unsafe {
            path: self.path.to_owned(),
            placeholder,
            format: self.format.name(),
            why: "its value would not read back as written (the file's structure or the value \
                  would change)"
                .into(),
        })
    }

    fn marker(&self, index: usize) -> String {
        format!("{}{index}z", self.marker)
    }

    /// The file with a marker for each checked placeholder, except those `real(i)` names.
    fn with_markers(&self, real: impl Fn(usize) -> bool) -> String {
        assemble(self.pieces, |i, _| {
            let insert = &self.inserts[i];
            match insert.check {
                _ if real(i) => insert.text.clone(),
                Check::Same => insert.text.clone(),
                Check::Inner => self.marker(i),
                Check::Whole => encode::quoted(self.format, &self.marker(i)),
            }
        })
    }

    /// `shape` with the markers of the placeholders `swap(i)` names replaced by their values.
    fn expected(&self, shape: &verify::Node, swap: impl Fn(usize) -> bool) -> verify::Node {
        let swaps: Vec<(String, String, Check)> = placeholders(self.pieces)
            .enumerate()
            .filter(|(i, _)| swap(*i) && self.inserts[*i].check != Check::Same)
            .map(|(i, p)| {
                (
                    self.marker(i),
                    filtered(p, Some(self.format)),
                    self.inserts[i].check,
                )
            })
            .collect();
        shape.map_strings(&|s: &str| {
            let mut s = s.to_owned();
            for (marker, value, check) in &swaps {
                if *check == Check::Whole {
                    if s == *marker {
                        return value.clone();
                    }
                } else {
                    s = s.replace(marker.as_str(), value);
                }
            }
            s
        })
    }
}

#[cfg(test)]
mod tests;
