//! Agent labels (`region = "eu"`, `tier = "canary"`), checked as Kubernetes checks its labels,
//! so that selectors (`-l region=eu,tier!=canary`) mean what they mean in `kubectl`.
//!
//! A key is an optional DNS-subdomain prefix and a `/`, then a name of at most 63 characters:
//! letters, digits, `-`, `_` and `.`, beginning and ending with a letter or a digit
//! (`tier`, `example.com/zone`). A value is empty, or follows the rule of a name.

use std::collections::BTreeMap;

/// An agent's labels, by key; absent from agents older than labels (they have none).
pub type Labels = BTreeMap<String, String>;

/// The keys a selector uses for the agent's service and instance names: an agent cannot
/// declare them as labels of its own.
pub const RESERVED_KEYS: [&str; 2] = ["service", "instance"];

/// The longest name part of a key, and the longest value.
pub const MAX_NAME_LEN: usize = 63;

/// The longest prefix of a key (a DNS subdomain).
pub const MAX_PREFIX_LEN: usize = 253;

/// Why a label key or value is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("a label key must not be empty")]
    EmptyKey,
    #[error(
        "the name part of a label key must be 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', beginning and ending with a letter or a digit"
    )]
    BadName,
    #[error(
        "the prefix of a label key (before '/') must be a DNS subdomain of at most {MAX_PREFIX_LEN} characters: lower-case letters, digits, '-' and '.'"
    )]
    BadPrefix,
    #[error(
        "a label value must be empty or 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.', beginning and ending with a letter or a digit"
    )]
    BadValue,
    #[error("the label key {0:?} is reserved: selectors use it for the agent's own name")]
    Reserved(String),
}

/// Checks a label key (`tier`, `example.com/zone`).
pub fn check_key(key: &str) -> Result<(), LabelError> {
    if key.is_empty() {
        return Err(LabelError::EmptyKey);
    }
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            check_prefix(prefix)?;
            name
        }
        None => key,
    };
    if name.is_empty() || !is_name(name) {
        return Err(LabelError::BadName);
    }
    Ok(())
}

/// Checks a key an agent declares: a valid key that is not one of [`RESERVED_KEYS`].
pub fn check_declared_key(key: &str) -> Result<(), LabelError> {
    check_key(key)?;
    if RESERVED_KEYS.contains(&key) {
        return Err(LabelError::Reserved(key.to_owned()));
    }
    Ok(())
}

/// Checks a label value (empty, or a name).
pub fn check_value(value: &str) -> Result<(), LabelError> {
    if value.is_empty() || is_name(value) {
        Ok(())
    } else {
        Err(LabelError::BadValue)
    }
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_name(text: &str) -> bool {
    let bytes = text.as_bytes();
    let edge = |b: &u8| b.is_ascii_alphanumeric();
    bytes.len() <= MAX_NAME_LEN
        && bytes.first().is_some_and(edge)
        && bytes.last().is_some_and(edge)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: dot-separated parts of lower-case letters, digits and `-`, each
/// beginning and ending with a letter or a digit.
fn check_prefix(prefix: &str) -> Result<(), LabelError> {
    let part_ok = |part: &str| {
        let b = part.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-')
    };
    if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN || !prefix.split('.').all(part_ok) {
        return Err(LabelError::BadPrefix);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_keys_are_accepted() {
        for key in [
            "tier",
            "a",
            "app.kubernetes.io/name",
            "x_y.z-1",
            "A9",
            "ex-1.com/Zone",
        ] {
            assert_eq!(check_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert_eq!(check_key(""), Err(LabelError::EmptyKey));
        for key in ["-a", "a-", "a b", "a/", "a=b", &"k".repeat(64), "é"] {
            assert_eq!(check_key(key), Err(LabelError::BadName), "{key}");
        }
        for key in ["/a", "Ex.com/a", "a..b/c", "-a.com/b", "a/b/c"] {
            assert!(check_key(key).is_err(), "{key}");
        }
    }

    #[test]
    fn values_may_be_empty_but_not_malformed() {
        assert_eq!(check_value(""), Ok(()));
        assert_eq!(check_value("eu-west.1"), Ok(()));
        for value in ["a b", "-a", "a,b", &"v".repeat(64)] {
            assert_eq!(check_value(value), Err(LabelError::BadValue), "{value}");
        }
    }

    /// Version skew: an agent older than labels announces none, and is read as having none;
    /// an agent without labels sends no `labels` field, as before.
    #[test]
    fn a_presence_without_labels_has_none() {
        let old = serde_json::json!({
            "schema": "flotilla.presence.v1", "service": "ingest", "instance": "a",
            "version": "0.1.0", "accepts": [], "host": "h", "state": "idle",
            "started_at": "2026-01-01T00:00:00Z",
        });
        let presence: crate::Presence =
            crate::decode(old.to_string().as_bytes()).expect("an old presence decodes");
        assert!(presence.labels.is_empty());
        let again = serde_json::to_value(&presence).unwrap();
        assert!(again.get("labels").is_none(), "{again}");
    }

    #[test]
    fn service_and_instance_are_reserved() {
        assert!(matches!(
            check_declared_key("service"),
            Err(LabelError::Reserved(_))
        ));
        assert_eq!(check_declared_key("tier"), Ok(()));
    }
}
