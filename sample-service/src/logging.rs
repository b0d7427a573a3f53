//! Line-oriented logging to a file and to stdout, as JSON or plain text.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Severity of a log record; records below the configured level are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed diagnostics.
    Trace,
    /// Diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the service survives.
    Warn,
    /// A failure.
    Error,
}

impl Level {
    fn lowercase(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    fn uppercase(self) -> &'static str {
        match self {
            Self::Trace => "TRACE",
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// How each log record is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line: `ts`, `level`, `service`, `msg`, then fields.
    Json,
    /// `<ts> <LEVEL> <service>: <msg> key=value ...`.
    Text,
}

/// Writes every record to the log file and to stdout.
#[derive(Debug)]
pub struct Logger {
    service: String,
    format: LogFormat,
    min_level: Level,
    file: Mutex<File>,
}

impl Logger {
    /// Opens (creating it and its parent directories) `path` for appending.
    pub fn open(path: &Path, service: &str, format: LogFormat, min_level: Level) -> Result<Self> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("creating log directory {}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log file {}", path.display()))?;
        Ok(Self {
            service: service.to_owned(),
            format,
            min_level,
            file: Mutex::new(file),
        })
    }

    /// Logs `msg` at info level with extra `fields`.
    pub fn info(&self, msg: &str, fields: &[(&str, Value)]) {
        self.log(Level::Info, msg, fields);
    }

    /// Logs `msg` at `level` with extra `fields`, in the order given.
    pub fn log(&self, level: Level, msg: &str, fields: &[(&str, Value)]) {
        if level < self.min_level {
            return;
        }
        let mut line = self.render(&now_rfc3339(), level, msg, fields);
        line.push('\n');

        // The lock also keeps file and stdout in the same record order.
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = file.write_all(line.as_bytes()) {
            eprintln!("flotilla-sample: cannot write log file: {err}");
        }
        // A closed stdout must not take the service down.
        let _ = io::stdout().lock().write_all(line.as_bytes());
    }

    fn render(&self, ts: &str, level: Level, msg: &str, fields: &[(&str, Value)]) -> String {
        match self.format {
            LogFormat::Json => {
                let head = [
                    ("ts", Value::from(ts)),
                    ("level", Value::from(level.lowercase())),
                    ("service", Value::from(self.service.as_str())),
                    ("msg", Value::from(msg)),
                ];
                let members: Vec<String> = head
                    .iter()
                    .chain(fields)
                    .map(|(key, value)| format!("{}:{value}", Value::from(*key)))
                    .collect();
                format!("{{{}}}", members.join(","))
            }
            LogFormat::Text => {
                let mut line = format!("{ts} {} {}: {msg}", level.uppercase(), self.service);
                for (key, value) in fields {
                    line.push(' ');
                    line.push_str(key);
                    line.push('=');
                    line.push_str(&text_value(value));
                }
                line
            }
        }
    }
}

/// The current time as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        // Only years outside 0..=9999 fail to format.
        .unwrap_or_else(|_| "unknown-time".to_owned())
}

/// Renders a field value for the text format, quoting it when a reader
/// could not otherwise tell where it ends (so header values stay exact).
fn text_value(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let plain = !text.is_empty()
                && !text
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=');
            if plain {
                text.clone()
            } else {
                format!("{text:?}")
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempRoot;

    fn logger(root: &TempRoot, format: LogFormat) -> Logger {
        Logger::open(
            &root.path().join("logs/nested/service.log"),
            "ingest",
            format,
            Level::Info,
        )
        .expect("open logger")
    }

    #[test]
    fn json_record_has_fixed_head_then_fields() {
        let root = TempRoot::new();
        let line = logger(&root, LogFormat::Json).render(
            "2024-01-02T03:04:05Z",
            Level::Info,
            "request",
            &[("status", 200.into()), ("run_id", "r \"1\"".into())],
        );
        assert_eq!(
            line,
            r#"{"ts":"2024-01-02T03:04:05Z","level":"info","service":"ingest","msg":"request","status":200,"run_id":"r \"1\""}"#
        );
    }

    #[test]
    fn text_record_quotes_only_ambiguous_values() {
        let root = TempRoot::new();
        let line = logger(&root, LogFormat::Text).render(
            "2024-01-02T03:04:05Z",
            Level::Warn,
            "request",
            &[
                ("status", 503.into()),
                ("run_id", "run-7".into()),
                ("note", "two words".into()),
            ],
        );
        assert_eq!(
            line,
            r#"2024-01-02T03:04:05Z WARN ingest: request status=503 run_id=run-7 note="two words""#
        );
    }

    #[test]
    fn appends_to_file_and_filters_by_level() {
        let root = TempRoot::new();
        let logger = logger(&root, LogFormat::Text);
        logger.log(Level::Debug, "hidden", &[]);
        logger.info("first", &[]);
        logger.info("second", &[]);
        let written =
            fs::read_to_string(root.path().join("logs/nested/service.log")).expect("read log file");
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with(" INFO ingest: first"));
        assert!(lines[1].ends_with(" INFO ingest: second"));
    }
}
