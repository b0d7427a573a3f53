//! The redaction boundary: every secret value the agent can resolve is replaced by
//! [`REDACTED`] in everything the agent publishes (results, progress, refusals, previews,
//! presence), journals and logs (stderr, spans and log records), so that a value reaches only
//! the file a plan wrote it to. A secret leaks into text in many shapes, so each value is
//! searched for as written and as URL-encoded (`%XX` either case, `+` for a space),
//! JSON-escaped, Rust-`Debug`-escaped, HTML-escaped (each character in any of these forms, and
//! once more JSON-escaped), base64 (standard and URL-safe, at any alignment) and hex.
//!
//! Values shorter than [`MIN_SECRET_BYTES`] cannot be redacted without mangling ordinary text:
//! the agent refuses to start with one, and names (never shows) one that appears later.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use flotilla_schemas::RunResult;
use regex::{NoExpand, Regex, RegexBuilder};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::SecretSources;

/// The shortest secret value the agent accepts (and redacts).
pub const MIN_SECRET_BYTES: usize = 6;

/// What a secret value is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// How large the compiled pattern of all secrets may grow (a few thousand bytes of PEM fit).
const PATTERN_SIZE_LIMIT: usize = 64 << 20;

/// A secret too short to be redacted safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret {name:?} is {len} bytes long: the agent redacts secret values from everything it \
     publishes and logs, and needs at least {MIN_SECRET_BYTES} bytes to do so without mangling \
     ordinary text; use a longer value"
)]
pub struct TooShort {
    pub name: String,
    pub len: usize,
}

/// One secret the agent can resolve: its name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub name: String,
    pub value: String,
}

/// Every secret of the agent's sources: `<env_prefix>NAME` variables and the files of the
/// secrets directory (read as [`crate::template`] reads them).
pub fn secrets(sources: &SecretSources) -> Vec<Secret> {
    // `vars_os`: one variable that is not UTF-8 must not stop the agent (nor can the renderer
    // resolve such a value).
    let mut found: Vec<Secret> = std::env::vars_os()
        .filter_map(|(var, value)| {
            let name = var.to_str()?.strip_prefix(&sources.env_prefix)?.to_owned();
            Some(Secret {
                name,
                value: value.into_string().ok()?,
            })
        })
        .collect();
    if let Some(dir) = &sources.dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries.flatten() {
            if let Ok(value) = std::fs::read_to_string(entry.path()) {
                found.push(Secret {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    value: value.trim_end_matches(['\n', '\r']).to_owned(),
                });
            }
        }
    }
    found.retain(|s| !s.value.is_empty());
    found
}

/// Replaces known secret values in text. Cheap to clone: clones share what they know, so a
/// value learned at one choke point is redacted at all of them.
#[derive(Clone, Default)]
pub struct Redactor {
    known: Arc<RwLock<Known>>,
    sources: Option<Arc<SecretSources>>,
}

#[derive(Default)]
struct Known {
    values: BTreeSet<String>,
    /// Names of too-short secrets already reported, so each is reported once.
    short: BTreeSet<String>,
    pattern: Option<Regex>,
}

impl Redactor {
    /// A redactor of every secret `sources` hold now, or the first that is too short.
    pub fn from_sources(sources: &SecretSources) -> Result<Self, TooShort> {
        let found = secrets(sources);
        if let Some(short) = found.iter().find(|s| s.value.len() < MIN_SECRET_BYTES) {
            return Err(TooShort {
                name: short.name.clone(),
                len: short.value.len(),
            });
        }
        let redactor = Self {
            known: Arc::default(),
            sources: Some(Arc::new(sources.clone())),
        };
        redactor.learn(found.into_iter().map(|s| s.value));
        Ok(redactor)
    }

    /// Reads the sources again (a secret file may have been added or rotated since): new values
    /// are redacted from now on, old ones still are. A too-short new value is logged by name.
    pub fn refresh(&self) {
        let Some(sources) = &self.sources else { return };
        let (short, long): (Vec<_>, Vec<_>) = secrets(sources)
            .into_iter()
            .partition(|s| s.value.len() < MIN_SECRET_BYTES);
        let reported: Vec<TooShort> = {
            let mut known = self.known.write().expect("redactor lock is never poisoned");
            short
                .into_iter()
                .filter(|s| known.short.insert(s.name.clone()))
                .map(|s| TooShort {
                    len: s.value.len(),
                    name: s.name,
                })
                .collect()
        };
        // Logged with the lock released: the log writer scrubs through this redactor.
        for e in reported {
            tracing::error!(error = %e, "secret cannot be redacted");
        }
        self.learn(long.into_iter().map(|s| s.value));
    }

    /// Redacts `values` from now on (those shorter than [`MIN_SECRET_BYTES`] are ignored).
    pub fn learn(&self, values: impl IntoIterator<Item = String>) {
        let mut known = self.known.write().expect("redactor lock is never poisoned");
        let before = known.values.len();
        known
            .values
            .extend(values.into_iter().filter(|v| v.len() >= MIN_SECRET_BYTES));
        if known.values.len() != before {
            known.pattern = Some(pattern(&known.values));
        }
    }

    /// `text` with every known secret, in any of its encodings, replaced by [`REDACTED`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let known = self.known.read().expect("redactor lock is never poisoned");
        match &known.pattern {
            Some(pattern) => pattern.replace_all(text, NoExpand(REDACTED)),
            None => Cow::Borrowed(text),
        }
    }

    /// Scrubs every string (and object key) of a JSON value.
    pub fn scrub_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(s) => {
                if let Cow::Owned(scrubbed) = self.scrub(s) {
                    *s = scrubbed;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            Value::Object(map) => {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, mut v)| {
                        self.scrub_json(&mut v);
                        (self.scrub(&k).into_owned(), v)
                    })
                    .collect();
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    fn is_empty(&self) -> bool {
        let known = self.known.read().expect("redactor lock is never poisoned");
        known.pattern.is_none()
    }

    /// `message` as compact JSON with its strings scrubbed: what goes on the bus.
    pub fn encode<T: Serialize>(&self, message: &T) -> Vec<u8> {
        // Our messages hold only strings, numbers and maps with string keys: they serialize.
        if self.is_empty() {
            return serde_json::to_vec(message).expect("wire messages always serialize");
        }
        let mut value = serde_json::to_value(message).expect("wire messages always serialize");
        self.scrub_json(&mut value);
        serde_json::to_vec(&value).expect("JSON values always serialize")
    }

    /// A copy of `value` with its strings scrubbed, or why the scrubbed copy no longer reads
    /// as a `T` (a secret inside an identifier, a time or a name).
    pub fn scrubbed<T: Serialize + DeserializeOwned + Clone>(
        &self,
        value: &T,
    ) -> Result<T, serde_json::Error> {
        if self.is_empty() {
            return Ok(value.clone());
        }
        let mut json = serde_json::to_value(value)?;
        self.scrub_json(&mut json);
        serde_json::from_value(json)
    }

    /// `result` scrubbed; when a secret sits where redacting it breaks the result (an
    /// identifier), all of its text is dropped instead and the reason says so. Only the fields
    /// named here are kept, so a field added to results later is dropped too, not leaked.
    pub fn scrub_result(&self, result: &RunResult) -> RunResult {
        self.scrubbed(result).unwrap_or_else(|_| RunResult {
            reason: Some(format!(
                "{REDACTED}: the result held a secret value that could not be redacted in place"
            )),
            replayed: result.replayed,
            command_digest: result.command_digest.clone(),
            ..RunResult::new(
                result.run_id,
                result.command_id,
                result.service.clone(),
                result.instance.clone(),
                result.at,
                result.outcome,
            )
        })
    }
}

impl flotilla_telemetry::Scrub for Redactor {
    fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        Redactor::scrub(self, text)
    }
}

/// One regular expression matching every value in every encoding, longer values first so that
/// a value holding another is replaced whole.
fn pattern(values: &BTreeSet<String>) -> Regex {
    let mut alternatives: Vec<String> = values.iter().flat_map(|v| value_forms(v)).collect();
    alternatives.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    alternatives.dedup();
    RegexBuilder::new(&alternatives.join("|"))
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .expect("escaped literals always compile")
}

/// The patterns of one value: character by character in any textual escape, then its base64
/// and hex forms.
fn value_forms(value: &str) -> Vec<String> {
    // URL parsers drop tabs and line breaks: they may be missing, as long as enough is left to
    // be safe to redact.
    let droppable = url_stripped(value).len() >= MIN_SECRET_BYTES;
    let text: String = value
        .chars()
        .map(|c| {
            let forms: Vec<String> = char_forms(c).iter().map(|f| regex::escape(f)).collect();
            let optional = if droppable && URL_STRIPPED.contains(&c) {
                "?"
            } else {
                ""
            };
            format!("(?:{}){optional}", forms.join("|"))
        })
        .collect();
    let mut forms = vec![text];
    forms.extend(
        base64_forms(value.as_bytes())
            .into_iter()
            .chain(hex_forms(value.as_bytes()))
            .map(|f| regex::escape(&f)),
    );
    forms
}

/// What the WHATWG URL parser removes from a URL before anything else.
const URL_STRIPPED: [char; 3] = ['\t', '\n', '\r'];

/// `value` as a URL parser leaves it.
pub(crate) fn url_stripped(value: &str) -> String {
    value
        .chars()
        .filter(|c| !URL_STRIPPED.contains(c))
        .collect()
}

/// How one character can be written by the encoders that carry text out of the agent.
pub(crate) fn char_forms(c: char) -> BTreeSet<String> {
    let plain = c.to_string();
    let mut forms = BTreeSet::from([plain.clone()]);
    forms.insert(plain.bytes().map(|b| format!("%{b:02X}")).collect());
    forms.insert(plain.bytes().map(|b| format!("%{b:02x}")).collect());
    forms.insert(json_escape(&plain));
    forms.insert(c.escape_debug().collect());
    if c == ' ' {
        forms.insert("+".to_owned());
    }
    let html: &[&str] = match c {
        '&' => &["&amp;"],
        '<' => &["&lt;"],
        '>' => &["&gt;"],
        '"' => &["&quot;", "&#34;"],
        '\'' => &["&#39;", "&#x27;", "&apos;"],
        _ => &[],
    };
    forms.extend(html.iter().map(|s| (*s).to_owned()));
    if !c.is_ascii() {
        // `\uXXXX`, as ASCII-only JSON encoders write it (a surrogate pair beyond the BMP).
        let mut units = [0u16; 2];
        forms.insert(
            c.encode_utf16(&mut units)
                .iter()
                .map(|u| format!("\\u{u:04x}"))
                .collect(),
        );
    }
    // Once more JSON-escaped: an escaped text inside a JSON log line or message.
    let layered: Vec<String> = forms.iter().map(|f| json_escape(f)).collect();
    forms.extend(layered);
    forms
}

fn json_escape(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("strings always serialize");
    quoted[1..quoted.len() - 1].to_owned()
}

/// The characters of `bytes`'s base64 that depend on nothing else, at each of the three
/// alignments it can have inside a longer encoded text, in both alphabets.
pub(crate) fn base64_forms(bytes: &[u8]) -> Vec<String> {
    let mut forms = Vec::new();
    for offset in 0..3 {
        let mut padded = vec![0u8; offset];
        padded.extend_from_slice(bytes);
        let (start, end) = ((8 * offset).div_ceil(6), 8 * (offset + bytes.len()) / 6);
        for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
            let encoded = engine.encode(&padded);
            if end > start {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms
}

fn hex_forms(bytes: &[u8]) -> [String; 2] {
    let lower: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    [lower.to_ascii_uppercase(), lower]
}

#[cfg(test)]
mod tests;
