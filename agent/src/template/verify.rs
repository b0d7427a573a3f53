//! Reading a rendered file back with the format's real parser, into one tree shape for every
//! format, so that two renderings of a template can be compared value by value.

use std::collections::BTreeMap;

use super::context::Format;

/// A parsed document: strings (values and keys) kept exactly, every other scalar by its text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Node {
    Str(String),
    Scalar(String),
    List(Vec<Node>),
    Map(BTreeMap<Node, Node>),
}

/// Parses `text` as `format`. The error says where and what, never quoting the text.
pub fn parse(format: Format, text: &str) -> Result<Node, String> {
    match format {
        Format::Toml => {
            let table = text.parse::<toml::Table>().map_err(|e| {
                let line = e
                    .span()
                    .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
                match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_owned(),
                }
            })?;
            Ok(from_toml(toml::Value::Table(table)))
        }
        Format::Json => serde_json::from_str::<serde_json::Value>(text)
            .map(from_json)
            .map_err(|e| e.to_string()),
        Format::Yaml => yaml_rust2::YamlLoader::load_from_str(text)
            .map(|docs| Node::List(docs.into_iter().map(from_yaml).collect()))
            .map_err(|e| e.to_string()),
        Format::Env => {
            let mut entries = Vec::new();
            for entry in dotenvy::from_read_iter(text.as_bytes()) {
                // dotenvy's error quotes the line: say only which entry.
                let (key, value) =
                    entry.map_err(|_| format!("entry {} does not parse", entries.len() + 1))?;
                entries.push(Node::List(vec![Node::Str(key), Node::Str(value)]));
            }
            Ok(Node::List(entries))
        }
    }
}

// === impl Node ===

impl Node {
    /// This tree with `replace` applied to every string, keys included.
    pub fn map_strings(&self, replace: &impl Fn(&str) -> String) -> Node {
        match self {
            Node::Str(s) => Node::Str(replace(s)),
            Node::Scalar(s) => Node::Scalar(s.clone()),
            Node::List(items) => Node::List(items.iter().map(|n| n.map_strings(replace)).collect()),
            Node::Map(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| (k.map_strings(replace), v.map_strings(replace)))
                    .collect(),
            ),
        }
    }
}

fn from_toml(value: toml::Value) -> Node {
    match value {
        toml::Value::String(s) => Node::Str(s),
        toml::Value::Array(items) => Node::List(items.into_iter().map(from_toml).collect()),
        toml::Value::Table(table) => Node::Map(
            table
                .into_iter()
                .map(|(k, v)| (Node::Str(k), from_toml(v)))
                .collect(),
        ),
        other => Node::Scalar(other.to_string()),
    }
}

fn from_json(value: serde_json::Value) -> Node {
    match value {
        serde_json::Value::String(s) => Node::Str(s),
        serde_json::Value::Array(items) => Node::List(items.into_iter().map(from_json).collect()),
        serde_json::Value::Object(map) => Node::Map(
            map.into_iter()
                .map(|(k, v)| (Node::Str(k), from_json(v)))
                .collect(),
        ),
        other => Node::Scalar(other.to_string()),
    }
}

fn from_yaml(value: yaml_rust2::Yaml) -> Node {
    use yaml_rust2::Yaml;
    match value {
        Yaml::String(s) => Node::Str(s),
        Yaml::Array(items) => Node::List(items.into_iter().map(from_yaml).collect()),
        Yaml::Hash(map) => Node::Map(
            map.into_iter()
                .map(|(k, v)| (from_yaml(k), from_yaml(v)))
                .collect(),
        ),
        // As the text it was written as, like the other formats' scalars (`8080`, not
        // `Integer(8080)`), so that a setting compares equal across formats.
        Yaml::Integer(i) => Node::Scalar(i.to_string()),
        Yaml::Real(text) => Node::Scalar(text),
        Yaml::Boolean(b) => Node::Scalar(b.to_string()),
        Yaml::Null => Node::Scalar("null".to_owned()),
        other => Node::Scalar(format!("{other:?}")),
    }
}
