//! The shape of configuration files for the cross-service stage: key names and a fingerprint of
//! them, which keys hold one of the agent's secrets in clear, and for the settings the fleet must
//! agree on, a digest of each value keyed by the run. Values never leave the agent.
//!
//! A file whose name gives its format (`.toml`, `.json`, `.yaml`/`.yml`, `.env`) is read with
//! that format's parser ([`crate::template::parse`]), so a value compares by what the service
//! reads (`db.url = "x"` in TOML equals `DATABASE_URL=x` in `.env`); any other file is read as
//! `key=value` lines.

use std::collections::BTreeMap;

use flotilla_schemas::{ConfigShape, RunId, SettingProbe, SettingReport};

use crate::config::SecretSources;
use crate::steps::RootDir;
use crate::template::{Format, Node};

/// One value of a file: its dotted key, its text (a string as it is, any other value as written
/// in a canonical form) and every string in it (for the secret search).
#[derive(Debug)]
struct Leaf {
    key: String,
    text: String,
    strings: Vec<String>,
}

/// A configuration file as the inspection read it.
enum Read {
    Missing,
    /// Exists but cannot be read or parsed (`text`, when read); `why` never quotes the file.
    Unreadable {
        why: String,
        text: Option<String>,
    },
    Parsed {
        format: &'static str,
        text: String,
        leaves: Vec<Leaf>,
    },
}

/// The context of a setting's digest: equal values give equal digests within one run only.
const DIGEST_CONTEXT: &str = "flotilla 2026 cross-service setting digest v1";

/// The values of every secret the agent can resolve, each also as it is escaped in a written
/// file, in one list (see [`known_secret_forms`]).
pub fn known_secret_values(sources: &SecretSources) -> Vec<String> {
    known_secret_forms(sources).concat()
}

/// The written forms of every secret the agent can resolve (`<env_prefix>*` variables and the
/// files of the secrets directory), one list per secret; those too short to be searched for
/// without matching by chance are left out, as the redactor leaves them.
pub fn known_secret_forms(sources: &SecretSources) -> Vec<Vec<String>> {
    crate::redact::secrets(sources)
        .into_iter()
        .map(|s| s.value)
        .filter(|v| v.len() >= crate::redact::MIN_SECRET_BYTES)
        // A written file holds a secret escaped for its format: look for those forms too.
        .map(|v| crate::template::written_forms(&v))
        .collect()
}

/// Reads `path` (inside the service root) and describes its keys. `secrets` holds each secret's
/// written forms, as [`known_secret_forms`] gives them.
pub fn config_shape(root: &RootDir, path: &str, secrets: &[Vec<String>]) -> ConfigShape {
    let (format, text, leaves) = match read(root, path) {
        Read::Missing => return shape(path, false, "missing", Vec::new(), Vec::new(), false),
        Read::Unreadable { text, .. } => {
            // No key to name, but a secret in it is still a secret where it should not be.
            let outside = text.is_some_and(|text| {
                let text = [text];
                secrets.iter().any(|forms| occurrences(&text, forms) > 0)
            });
            return shape(path, true, "unreadable", Vec::new(), Vec::new(), outside);
        }
        Read::Parsed {
            format,
            text,
            leaves,
        } => (format, text, leaves),
    };
    let holds_secret = |texts: &[String]| secrets.iter().any(|f| occurrences(texts, f) > 0);
    // A key's name is reported, so a secret in one is masked (and counted outside the values).
    let masked = |key: &str| {
        if holds_secret(&[key.to_owned()]) {
            crate::redact::REDACTED.to_owned()
        } else {
            key.to_owned()
        }
    };
    let mut keys: Vec<String> = leaves.iter().map(|l| masked(&l.key)).collect();
    keys.sort();
    keys.dedup();
    let mut literal: Vec<String> = leaves
        .iter()
        .filter(|l| holds_secret(&l.strings))
        .map(|l| masked(&l.key))
        .collect();
    literal.sort();
    literal.dedup();
    // More occurrences in the text than in the values: a copy sits in a comment, a key name or
    // a line that does not parse.
    let outside = secrets.iter().any(|forms| {
        occurrences(std::slice::from_ref(&text), forms)
            > leaves
                .iter()
                .map(|l| occurrences(&l.strings, forms))
                .sum::<usize>()
    });
    shape(path, true, format, keys, literal, outside)
}

/// Each setting of `probes` as this service holds it: a digest of its value keyed by `run`,
/// never the value.
pub fn settings(root: &RootDir, probes: &[SettingProbe], run: RunId) -> Vec<SettingReport> {
    let key = blake3::derive_key(DIGEST_CONTEXT, run.to_string().as_bytes());
    let mut files: BTreeMap<&str, Read> = BTreeMap::new();
    probes
        .iter()
        .map(|probe| {
            let read = files
                .entry(probe.file.as_str())
                .or_insert_with(|| read(root, &probe.file));
            let (digest, detail) = match read {
                Read::Missing => (None, Some("the file does not exist".to_owned())),
                Read::Unreadable { why, .. } => (None, Some(why.clone())),
                Read::Parsed { leaves, .. } => match leaves.iter().find(|l| l.key == probe.key) {
                    Some(leaf) => {
                        let digest = blake3::keyed_hash(&key, leaf.text.as_bytes());
                        (Some(digest.to_hex()[..32].to_owned()), None)
                    }
                    None => (None, Some(format!("the file has no key {}", probe.key))),
                },
            };
            SettingReport {
                name: probe.name.clone(),
                file: probe.file.clone(),
                key: probe.key.clone(),
                found: digest.is_some(),
                digest,
                detail,
            }
        })
        .collect()
}

fn read(root: &RootDir, path: &str) -> Read {
    match root.exists(path) {
        Ok(true) => {}
        Ok(false) => return Read::Missing,
        Err(e) => {
            return Read::Unreadable {
                why: e.to_string(),
                text: None,
            };
        }
    }
    let text = match root.read_to_string(path) {
        Ok(text) => text,
        Err(_) => {
            return Read::Unreadable {
                why: "the file cannot be read as UTF-8 text".to_owned(),
                text: None,
            };
        }
    };
    let Some(format) = Format::of_path(path) else {
        return Read::Parsed {
            format: "key_value",
            leaves: key_value_lines(&text),
            text,
        };
    };
    match crate::template::parse(format, &text) {
        Ok(node) => {
            let mut leaves = Vec::new();
            match (format, &node) {
                // `.env`: a list of `[key, value]` pairs, in order.
                (Format::Env, Node::List(entries)) => {
                    for entry in entries {
                        if let Node::List(pair) = entry
                            && let [Node::Str(key), value] = pair.as_slice()
                        {
                            leaves.push(leaf(key.clone(), value));
                        }
                    }
                }
                // YAML: a list of documents, each read from the top.
                (Format::Yaml, Node::List(docs)) => {
                    docs.iter().for_each(|d| flatten("", d, &mut leaves))
                }
                _ => flatten("", &node, &mut leaves),
            }
            Read::Parsed {
                format: format_name(format),
                text,
                leaves,
            }
        }
        Err(why) => Read::Unreadable {
            why: format!("the file does not parse as {}: {why}", format.name()),
            text: Some(text),
        },
    }
}

fn format_name(format: Format) -> &'static str {
    match format {
        // The name the shapes of TOML files have always had.
        Format::Toml => "standard",
        Format::Json => "json",
        Format::Yaml => "yaml",
        Format::Env => "env",
    }
}

/// `key=value` lines of a file of no known format; `#` starts a comment line.
fn key_value_lines(text: &str) -> Vec<Leaf> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| Leaf {
            key: key.trim().to_owned(),
            text: value.trim().to_owned(),
            strings: vec![value.trim().to_owned()],
        })
        .collect()
}

/// The leaves under `node`: a table's entries by dotted key; a list is one value.
fn flatten(prefix: &str, node: &Node, out: &mut Vec<Leaf>) {
    match node {
        Node::Map(map) => {
            for (key, value) in map {
                let key = match key {
                    Node::Str(k) | Node::Scalar(k) => k.clone(),
                    other => canonical(other),
                };
                let name = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&name, value, out);
            }
        }
        other if !prefix.is_empty() => out.push(leaf(prefix.to_owned(), other)),
        _ => {}
    }
}

fn leaf(key: String, value: &Node) -> Leaf {
    let mut strings = Vec::new();
    collect_strings(value, &mut strings);
    let text = match value {
        Node::Str(s) | Node::Scalar(s) => s.clone(),
        other => canonical(other),
    };
    Leaf { key, text, strings }
}

fn collect_strings(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Str(s) | Node::Scalar(s) => out.push(s.clone()),
        Node::List(items) => items.iter().for_each(|n| collect_strings(n, out)),
        Node::Map(map) => map.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out);
        }),
    }
}

/// A composite value as one text, the same whatever format it was read from.
fn canonical(node: &Node) -> String {
    match node {
        Node::Str(s) => serde_json::Value::String(s.clone()).to_string(),
        Node::Scalar(s) => s.clone(),
        Node::List(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        Node::Map(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}:{}", canonical(k), canonical(v)))
                .collect();
            format!("{{{}}}", entries.join(","))
        }
    }
}

/// How often any of one secret's written `forms` occurs in `texts`.
fn occurrences(texts: &[String], forms: &[String]) -> usize {
    texts
        .iter()
        .map(|t| {
            forms
                .iter()
                .map(|f| t.matches(f.as_str()).count())
                .sum::<usize>()
        })
        .sum()
}

fn shape(
    path: &str,
    exists: bool,
    format: &str,
    keys: Vec<String>,
    literal_secrets: Vec<String>,
    secret_outside_keys: bool,
) -> ConfigShape {
    let fingerprint = blake3::hash(keys.join("\n").as_bytes()).to_hex()[..16].to_owned();
    ConfigShape {
        path: path.to_owned(),
        exists,
        format: format.to_owned(),
        keys,
        fingerprint,
        literal_secrets,
        secret_outside_keys,
    }
}

#[cfg(test)]
mod tests;
