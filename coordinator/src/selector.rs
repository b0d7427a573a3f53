//! Label selectors, in `kubectl -l` syntax: `region=eu,tier!=canary`, `zone in (a,b)`,
//! `zone notin (c)`, `gpu`, `!gpu`. Requirements are separated by commas and must all hold.
//! An agent's `service` and `instance` are selectable as if they were labels
//! (`service=ingest`); agents cannot declare labels of those names.
//!
//! No well-kept crate parses this syntax without pulling in a Kubernetes client (kube-core
//! and k8s-openapi), so this is a small parser of its own; keys and values follow the label
//! rules of [`flotilla_schemas::labels`].

use std::collections::BTreeSet;
use std::fmt;

use flotilla_schemas::Presence;
use flotilla_schemas::labels::{self, LabelError};

mod parse;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One requirement on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

/// What a requirement asks of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `k=v` or `k==v`: the label is present with this value.
    Equals(String),
    /// `k!=v`: the label is absent, or has another value.
    NotEquals(String),
    /// `k in (a,b)`: the label is present with one of these values.
    In(BTreeSet<String>),
    /// `k notin (a,b)`: the label is absent, or has none of these values.
    NotIn(BTreeSet<String>),
    /// `k`: the label is present.
    Exists,
    /// `!k`: the label is absent.
    Absent,
}

/// Why a selector was refused: where (a 1-based character column) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {text:?}: at column {column}: {problem}")]
pub struct SelectorError {
    /// The selector as given.
    pub text: String,
    /// 1-based, in characters.
    pub column: usize,
    pub problem: Problem,
}

/// What is wrong at the column of a [`SelectorError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("a selector must not be empty")]
    Empty,
    #[error("expected a label key")]
    ExpectedKey,
    #[error("expected a value")]
    ExpectedValue,
    #[error("expected '(' after {0}")]
    ExpectedOpenParen(&'static str),
    #[error("expected ',' or ')' in the list of values")]
    ExpectedCommaOrClose,
    #[error("the list of values of {0} must not be empty")]
    EmptySet(&'static str),
    #[error("expected ',' between requirements, found {0:?}")]
    ExpectedComma(String),
    #[error("unexpected {0:?}: expected =, ==, !=, in or notin")]
    UnexpectedOperator(String),
    #[error("key {key:?}: {error}")]
    Key { key: String, error: LabelError },
    #[error("value {value:?}: {error}")]
    Value { value: String, error: LabelError },
}

// === impl Selector ===

impl Selector {
    /// Parses `text`; the error names the column and the reason.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        parse::selector(text).map(|requirements| Selector { requirements })
    }

    /// Every requirement of `self`, then every one of `other`: both must hold.
    pub fn and(&self, other: &Selector) -> Selector {
        let mut requirements = self.requirements.clone();
        requirements.extend(other.requirements.iter().cloned());
        Selector { requirements }
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `agent` (its labels, plus `service` and `instance`) matches every requirement.
    pub fn matches(&self, agent: &Presence) -> bool {
        self.matches_parts(
            agent.service.as_str(),
            agent.instance.as_str(),
            &agent.labels,
        )
    }

    /// [`Selector::matches`] for an agent known by its names and labels (a registry entry).
    pub fn matches_parts(
        &self,
        service: &str,
        instance: &str,
        labels: &flotilla_schemas::labels::Labels,
    ) -> bool {
        let lookup = |key: &str| match key {
            "service" => Some(service),
            "instance" => Some(instance),
            _ => labels.get(key).map(String::as_str),
        };
        self.requirements.iter().all(|r| r.holds(lookup(&r.key)))
    }
}

impl fmt::Display for Selector {
    /// The canonical text: what [`Selector::parse`] reads back to the same selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

// === impl Requirement ===

impl Requirement {
    /// Whether a label whose value is `value` (`None`: absent) satisfies this requirement.
    pub fn holds(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Equals(want), Some(v)) => v == want,
            (Op::NotEquals(want), Some(v)) => v != want,
            (Op::In(set), Some(v)) => set.contains(v),
            (Op::NotIn(set), Some(v)) => !set.contains(v),
            (Op::Exists, Some(_)) => true,
            (Op::Absent, Some(_)) => false,
            (Op::Equals(_) | Op::In(_) | Op::Exists, None) => false,
            (Op::NotEquals(_) | Op::NotIn(_) | Op::Absent, None) => true,
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        match &self.op {
            Op::Equals(v) => write!(f, "{}={v}", self.key),
            Op::NotEquals(v) => write!(f, "{}!={v}", self.key),
            Op::In(s) => write!(f, "{} in ({})", self.key, set(s)),
            Op::NotIn(s) => write!(f, "{} notin ({})", self.key, set(s)),
            Op::Exists => write!(f, "{}", self.key),
            Op::Absent => write!(f, "!{}", self.key),
        }
    }
}

/// Checks a key written in a selector (`service` and `instance` included).
fn check_key(key: &str) -> Result<(), Problem> {
    labels::check_key(key).map_err(|error| Problem::Key {
        key: key.to_owned(),
        error,
    })
}

/// Checks a value written in a selector.
fn check_value(value: &str) -> Result<(), Problem> {
    labels::check_value(value).map_err(|error| Problem::Value {
        value: value.to_owned(),
        error,
    })
}

#[cfg(test)]
mod tests;
