//! Validated identifiers. Service and instance names become NATS subject tokens and file names,
//! so they are restricted to a safe alphabet at the edge, once.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The name was empty.
    #[error("{kind} name is empty")]
    Empty { kind: &'static str },
    /// The name was longer than [`MAX_NAME_LEN`].
    #[error("{kind} name {name:?} is longer than {MAX_NAME_LEN} characters")]
    TooLong { kind: &'static str, name: String },
    /// The name held a character outside `a-z 0-9 - _`, or did not start with a letter or digit.
    #[error(
        "{kind} name {name:?} may only hold lower-case letters, digits, '-' and '_', and must start with a letter or digit"
    )]
    BadCharacter { kind: &'static str, name: String },
    /// A subject prefix held `_`: the stream and bucket names turn `-` into `_`, so it would
    /// share them with the prefix spelt with `-` (another deployment on the same server).
    #[error(
        "prefix {name:?} may not hold '_': stream and bucket names turn '-' into '_', so it would share the streams and run store of prefix {twin:?}; use '-'"
    )]
    PrefixUnderscore { name: String, twin: String },
}

/// The longest service or instance name.
pub const MAX_NAME_LEN: usize = 63;

fn validate(kind: &'static str, name: &str) -> Result<(), IdError> {
    if name.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong {
            kind,
            name: name.to_owned(),
        });
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !(first_ok && rest_ok) {
        return Err(IdError::BadCharacter {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Defines a validated name type: it can only be built through `parse`, `FromStr` or serde, all of
/// which run the same check.
macro_rules! name_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A validated ", $kind, " name (`a-z 0-9 - _`, at most 63 characters).")]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
        #[serde(transparent)]
        #[schemars(transparent)]
        pub struct $name(#[schemars(regex(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"))] String);

        impl $name {
            /// Checks `name` and wraps it.
            pub fn parse(name: impl Into<String>) -> Result<Self, IdError> {
                let name = name.into();
                validate($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(ServiceName, "service");
name_type!(InstanceId, "instance");

/// Defines a UUID-backed identifier.
macro_rules! uuid_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            Serialize,
            Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_type!(
    RunId,
    "A run's ID, which is also its correlation ID in every message, span and log record."
);
uuid_type!(
    CommandId,
    "One command's ID; agents apply a command ID at most once."
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_names() {
        for ok in ["inference", "a", "svc-1", "svc_2", "0abc"] {
            ServiceName::parse(ok).unwrap();
        }
    }

    #[test]
    fn refuses_names_that_could_escape_a_subject_or_path() {
        for bad in [
            "",
            "Inference",
            "a.b",
            "a*",
            "a>",
            "../x",
            "-lead",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(ServiceName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<InstanceId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("may only hold"), "{err}");
    }
}
