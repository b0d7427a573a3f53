//! Service configuration in either of the two supported layouts.
//!
//! * standard: `<root>/config/service.toml`, the unified T006 format, with
//!   secrets given as `${secret:NAME}` placeholders;
//! * legacy: `<root>/legacy.conf`, flat `key=value` lines with literal secrets.
//!
//! When both exist the standard layout wins.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

use crate::logging::{Level, LogFormat};

/// Location of the standard configuration, relative to the root.
pub const STANDARD_FILE: &str = "config/service.toml";
/// Location of the legacy configuration, relative to the root.
pub const LEGACY_FILE: &str = "legacy.conf";
/// Directory, relative to the root, holding one file per secret.
const SECRETS_DIR: &str = "secrets";
/// Prefix of the environment variable that may supply a secret.
const SECRET_ENV_PREFIX: &str = "FLOTILLA_SECRET_";
const LEGACY_DEFAULT_LOG_FILE: &str = "service.log";
// legacy.conf has no host setting; the legacy services only served locally.
const LEGACY_HOST: &str = "127.0.0.1";

/// The trading service being played.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Serves model predictions.
    Inference,
    /// Trains models.
    Training,
    /// Ingests market data.
    Ingest,
    /// Executes orders.
    Execution,
    /// Prepares features.
    Preprocess,
}

impl Role {
    /// The service name, as used in configuration files and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inference => "inference",
            Self::Training => "training",
            Self::Ingest => "ingest",
            Self::Execution => "execution",
            Self::Preprocess => "preprocess",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which configuration layout the service was started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `config/service.toml`.
    Standard,
    /// `legacy.conf`.
    Legacy,
}

impl Layout {
    /// `"standard"` or `"legacy"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Legacy => "legacy",
        }
    }
}

/// Knobs that let tests make the service misbehave.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// `/health` answers 503.
    pub fail_health: bool,
    /// Sleep this long before listening, to simulate a slow start.
    pub startup_delay_ms: u64,
    /// Allocate, touch and hold this many MiB.
    pub extra_memory_mb: u64,
    /// Extra time every `/predict` and `/ingest` request takes (simulates a slower code path).
    pub request_delay_ms: u64,
}

/// A resolved secret value; its `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value itself.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "the sample resolves secrets but has no client to use them"
        )
    )]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Everything the service needs, whichever layout it came from.
#[derive(Clone, Debug)]
pub struct Config {
    /// Layout the configuration was read from.
    pub layout: Layout,
    /// Service being played; always equal to `--role`.
    pub role: Role,
    /// Deployment environment (standard layout only).
    pub environment: Option<String>,
    /// Address to bind.
    pub host: String,
    /// Port to bind; `--port` overrides it.
    pub port: u16,
    /// Log record format.
    pub log_format: LogFormat,
    /// Minimum level logged.
    pub log_level: Level,
    /// Log file, already joined to the root.
    pub log_file: PathBuf,
    /// Resolved secrets by configuration key (e.g. `api_key`).
    pub secrets: BTreeMap<String, Secret>,
    /// Test knobs.
    pub behaviour: Behaviour,
    /// Sorted dotted names of every key present in the file; never values.
    pub config_keys: Vec<String>,
}

/// Loads the configuration under `root`, which must name `role`.
///
/// Secrets are looked up in `<root>/secrets/NAME`, then in the environment.
pub fn load(root: &Path, role: Role) -> Result<Config> {
    load_with_env(root, role, &|name| std::env::var(name).ok())
}

/// [`load`] with an injectable environment lookup.
fn load_with_env(root: &Path, role: Role, env: &dyn Fn(&str) -> Option<String>) -> Result<Config> {
    let standard = root.join(STANDARD_FILE);
    if exists(&standard)? {
        return load_standard(root, &standard, role, env);
    }
    let legacy = root.join(LEGACY_FILE);
    if exists(&legacy)? {
        return load_legacy(root, &legacy, role);
    }
    bail!(
        "no configuration in {}: expected {STANDARD_FILE} or {LEGACY_FILE}",
        root.display()
    )
}

fn exists(path: &Path) -> Result<bool> {
    path.try_exists()
        .with_context(|| format!("checking {}", path.display()))
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `config/service.toml` as written on disk.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandardFile {
    service: ServiceSection,
    server: ServerSection,
    logging: LoggingSection,
    #[serde(default)]
    secrets: BTreeMap<String, String>,
    #[serde(default)]
    behaviour: Behaviour,
    #[serde(default)]
    #[expect(dead_code, reason = "free-form; only its key names are reported")]
    role: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSection {
    name: String,
    environment: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    host: String,
    port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoggingSection {
    format: LogFormat,
    level: Level,
    file: PathBuf,
}

fn load_standard(
    root: &Path,
    path: &Path,
    role: Role,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config> {
    let text = read(path)?;
    let file: StandardFile = toml::from_str(&text).map_err(|err| toml_error(path, &text, &err))?;
    // Parsed a second time, untyped, to learn which keys are actually present.
    let raw: toml::Table = toml::from_str(&text).map_err(|err| toml_error(path, &text, &err))?;

    ensure!(
        file.service.name == role.as_str(),
        "{}: service.name is {:?} but --role is {role}",
        path.display(),
        file.service.name
    );
    let secrets = file
        .secrets
        .iter()
        .map(|(key, value)| {
            let secret =
                resolve_placeholder(root, value, env).with_context(|| format!("secrets.{key}"))?;
            Ok((key.clone(), secret))
        })
        .collect::<Result<_>>()
        .with_context(|| path.display().to_string())?;

    Ok(Config {
        layout: Layout::Standard,
        role,
        environment: Some(file.service.environment),
        host: file.server.host,
        port: file.server.port,
        log_format: file.logging.format,
        log_level: file.logging.level,
        log_file: root.join(file.logging.file),
        secrets,
        behaviour: file.behaviour,
        config_keys: dotted_keys(&raw),
    })
}

/// Turns a TOML error into one line naming the file, line and column.
fn toml_error(path: &Path, text: &str, err: &toml::de::Error) -> anyhow::Error {
    match err.span() {
        Some(span) => {
            // Spans are byte offsets; never slice blindly into user text.
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            anyhow!(
                "{} line {line}, column {column}: {}",
                path.display(),
                err.message()
            )
        }
        None => anyhow!("{}: {}", path.display(), err.message()),
    }
}

/// Sorted dotted names of all leaf keys in `table`.
fn dotted_keys(table: &toml::Table) -> Vec<String> {
    fn collect(table: &toml::Table, prefix: &str, keys: &mut Vec<String>) {
        for (key, value) in table {
            let name = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) => collect(inner, &name, keys),
                _ => keys.push(name),
            }
        }
    }
    let mut keys = Vec::new();
    collect(table, "", &mut keys);
    keys.sort();
    keys
}

/// Resolves a `${secret:NAME}` placeholder.
fn resolve_placeholder(
    root: &Path,
    value: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret> {
    // The value is deliberately left out of the error: it may be a pasted secret.
    let name = value
        .strip_prefix("${secret:")
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(|| anyhow!("must be a ${{secret:NAME}} placeholder, not a literal"))?;
    resolve_secret(root, name, env)
}

/// Reads secret `name` from `<root>/secrets/NAME` (trimmed), or else from
/// the environment variable `FLOTILLA_SECRET_NAME`.
fn resolve_secret(root: &Path, name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret> {
    // The name becomes a file name: keep it from escaping the secrets dir.
    ensure!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "invalid secret name {name:?}: use ASCII letters, digits, '_' or '-'"
    );
    let file = root.join(SECRETS_DIR).join(name);
    let variable = format!("{SECRET_ENV_PREFIX}{name}");
    let value = match fs::read_to_string(&file) {
        Ok(text) => text.trim().to_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => env(&variable).ok_or_else(|| {
            anyhow!(
                "secret {name} not found: no file {} and no environment variable {variable}",
                file.display()
            )
        })?,
        Err(err) => {
            return Err(err).with_context(|| format!("reading secret file {}", file.display()));
        }
    };
    ensure!(!value.is_empty(), "secret {name} is empty");
    Ok(Secret(value))
}

fn load_legacy(root: &Path, path: &Path, role: Role) -> Result<Config> {
    let text = read(path)?;
    parse_legacy(&text, root, role).with_context(|| path.display().to_string())
}

/// A `legacy.conf` value together with the line it came from.
struct LegacyValue {
    line: usize,
    text: String,
}

/// Parses `legacy.conf`; keys it does not know are accepted and reported.
fn parse_legacy(text: &str, root: &Path, role: Role) -> Result<Config> {
    // Later lines override earlier ones, as the legacy services did.
    let mut entries = BTreeMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| anyhow!("line {number}: expected key=value"))?;
        let key = key.trim();
        ensure!(!key.is_empty(), "line {number}: empty key");
        entries.insert(
            key.to_owned(),
            LegacyValue {
                line: number,
                text: value.trim().to_owned(),
            },
        );
    }

    let service = entries
        .get("service")
        .ok_or_else(|| anyhow!("missing key: service"))?;
    ensure!(
        service.text == role.as_str(),
        "line {}: service is {:?} but --role is {role}",
        service.line,
        service.text
    );
    let port = legacy_value(&entries, "listen_port", str::parse)?
        .ok_or_else(|| anyhow!("missing key: listen_port"))?;
    let log_file = entries
        .get("log_file")
        .map_or(LEGACY_DEFAULT_LOG_FILE, |value| value.text.as_str());
    let mut secrets = BTreeMap::new();
    if let Some(api_key) = entries.get("api_key") {
        ensure!(
            !api_key.text.is_empty(),
            "line {}: api_key is empty",
            api_key.line
        );
        secrets.insert("api_key".to_owned(), Secret(api_key.text.clone()));
    }
    let behaviour = Behaviour {
        fail_health: legacy_value(&entries, "fail_health", parse_legacy_bool)?.unwrap_or(false),
        startup_delay_ms: legacy_value(&entries, "startup_delay_ms", str::parse)?.unwrap_or(0),
        extra_memory_mb: legacy_value(&entries, "extra_memory_mb", str::parse)?.unwrap_or(0),
        request_delay_ms: legacy_value(&entries, "request_delay_ms", str::parse)?.unwrap_or(0),
    };

    Ok(Config {
        layout: Layout::Legacy,
        role,
        environment: None,
        host: LEGACY_HOST.to_owned(),
        port,
        log_format: LogFormat::Text,
        log_level: Level::Info,
        log_file: root.join(log_file),
        secrets,
        behaviour,
        config_keys: entries.into_keys().collect(),
    })
}

/// Parses the value of `key`, if present, reporting its line on failure.
fn legacy_value<T, E: fmt::Display>(
    entries: &BTreeMap<String, LegacyValue>,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<Option<T>> {
    entries
        .get(key)
        .map(|value| {
            parse(&value.text)
                .map_err(|err| anyhow!("line {}: {key} = {:?}: {err}", value.line, value.text))
        })
        .transpose()
}

/// Legacy files spell booleans in several ways.
fn parse_legacy_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err("expected true or false".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempRoot;

    const STANDARD: &str = r#"
[service]
name = "inference"
environment = "demo"

[server]
host = "127.0.0.1"
port = 18081

[logging]
format = "json"
level = "info"
file = "logs/service.log"

[secrets]
api_key = "${secret:API_KEY}"

[behaviour]
fail_health = true
startup_delay_ms = 250

[role]
model_path = "/models/v3.onnx"
batch_size = 32
limits = { max_rps = 100 }
"#;

    const LEGACY: &str = "\
# inference service, hand edited
service=inference
listen_port = 18081

api_key=demo-inference-key-123
model_path=/models/v2.onnx
fail_health=yes
extra_memory_mb=16
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_err(root: &TempRoot, role: Role) -> String {
        let err = load_with_env(root.path(), role, &no_env).expect_err("load must fail");
        format!("{err:#}")
    }

    #[test]
    fn standard_parses() {
        let root = TempRoot::new();
        root.write(STANDARD_FILE, STANDARD);
        root.write("secrets/API_KEY", "  s3cret\n");

        let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

        assert_eq!(config.layout, Layout::Standard);
        assert_eq!(config.role, Role::Inference);
        assert_eq!(config.environment.as_deref(), Some("demo"));
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 18081));
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.log_level, Level::Info);
        assert_eq!(config.log_file, root.path().join("logs/service.log"));
        assert_eq!(config.secrets["api_key"].expose(), "s3cret");
        assert_eq!(
            config.behaviour,
            Behaviour {
                fail_health: true,
                startup_delay_ms: 250,
                extra_memory_mb: 0,
                request_delay_ms: 0,
            }
        );
        assert_eq!(
            config.config_keys,
            [
                "behaviour.fail_health",
                "behaviour.startup_delay_ms",
                "logging.file",
                "logging.format",
                "logging.level",
                "role.batch_size",
                "role.limits.max_rps",
                "role.model_path",
                "secrets.api_key",
                "server.host",
                "server.port",
                "service.environment",
                "service.name",
            ]
        );
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn standard_unknown_key_is_named() {
        let root = TempRoot::new();
        root.write(
            STANDARD_FILE,
            &STANDARD.replace("port = 18081", "port = 18081\ncolour = \"red\""),
        );
        root.write("secrets/API_KEY", "s3cret");

        let err = load_err(&root, Role::Inference);

        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("line 9"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn standard_unknown_section_is_named() {
        let root = TempRoot::new();
        root.write(STANDARD_FILE, &format!("{STANDARD}\n[extras]\nx = 1\n"));
        root.write("secrets/API_KEY", "s3cret");

        assert!(load_err(&root, Role::Inference).contains("unknown field `extras`"));
    }

    #[test]
    fn standard_name_must_match_role() {
        let root = TempRoot::new();
        root.write(STANDARD_FILE, STANDARD);
        root.write("secrets/API_KEY", "s3cret");

        let err = load_err(&root, Role::Training);

        assert!(
            err.contains(r#"service.name is "inference" but --role is training"#),
            "{err}"
        );
    }

    #[test]
    fn secret_from_env_when_no_file() {
        let root = TempRoot::new();
        root.write(STANDARD_FILE, STANDARD);
        let env = |name: &str| (name == "FLOTILLA_SECRET_API_KEY").then(|| "from-env".to_owned());

        let config = load_with_env(root.path(), Role::Inference, &env).expect("load");

        assert_eq!(config.secrets["api_key"].expose(), "from-env");
    }

    #[test]
    fn secret_file_wins_over_env() {
        let root = TempRoot::new();
        root.write("secrets/API_KEY", "from-file\n");
        let env = |_: &str| Some("from-env".to_owned());

        let secret = resolve_secret(root.path(), "API_KEY", &env).expect("resolve");

        assert_eq!(secret.expose(), "from-file");
    }

    #[test]
    fn unresolvable_secret_fails() {
        let root = TempRoot::new();
        root.write(STANDARD_FILE, STANDARD);

        let err = load_err(&root, Role::Inference);

        assert!(err.contains("secrets.api_key"), "{err}");
        assert!(err.contains("FLOTILLA_SECRET_API_KEY"), "{err}");
    }

    #[test]
    fn empty_secret_fails() {
        let root = TempRoot::new();
        root.write("secrets/API_KEY", " \n");

        assert!(resolve_secret(root.path(), "API_KEY", &no_env).is_err());
    }

    #[test]
    fn literal_secret_is_rejected_without_echoing_it() {
        let root = TempRoot::new();
        root.write(
            STANDARD_FILE,
            &STANDARD.replace("${secret:API_KEY}", "hunter2"),
        );

        let err = load_err(&root, Role::Inference);

        assert!(err.contains("placeholder"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn secret_name_cannot_escape_secrets_dir() {
        let root = TempRoot::new();
        root.write("passwd", "x");

        let err = resolve_secret(root.path(), "../passwd", &no_env).expect_err("must fail");

        assert!(format!("{err}").contains("invalid secret name"));
    }

    #[test]
    fn legacy_parses() {
        let root = TempRoot::new();
        root.write(LEGACY_FILE, LEGACY);

        let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

        assert_eq!(config.layout, Layout::Legacy);
        assert_eq!(config.environment, None);
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 18081));
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.log_file, root.path().join("service.log"));
        assert_eq!(config.secrets["api_key"].expose(), "demo-inference-key-123");
        assert_eq!(
            config.behaviour,
            Behaviour {
                fail_health: true,
                startup_delay_ms: 0,
                extra_memory_mb: 16,
                request_delay_ms: 0,
            }
        );
        assert_eq!(
            config.config_keys,
            [
                "api_key",
                "extra_memory_mb",
                "fail_health",
                "listen_port",
                "model_path",
                "service"
            ]
        );
    }

    #[test]
    fn legacy_line_without_equals_names_line() {
        let root = TempRoot::new();
        root.write(
            LEGACY_FILE,
            "service=inference\n\n# note\nlisten_port 18081\n",
        );

        let err = load_err(&root, Role::Inference);

        assert!(err.contains("line 4: expected key=value"), "{err}");
        assert!(err.contains(LEGACY_FILE), "{err}");
    }

    #[test]
    fn legacy_bad_value_names_line() {
        let root = TempRoot::new();
        root.write(LEGACY_FILE, "service=inference\nlisten_port=http\n");

        assert!(load_err(&root, Role::Inference).contains("line 2: listen_port"));
    }

    #[test]
    fn legacy_service_must_match_role() {
        let root = TempRoot::new();
        root.write(LEGACY_FILE, LEGACY);

        let err = load_err(&root, Role::Ingest);

        assert!(
            err.contains(r#"line 2: service is "inference" but --role is ingest"#),
            "{err}"
        );
    }

    #[test]
    fn standard_wins_over_legacy() {
        let root = TempRoot::new();
        root.write(LEGACY_FILE, &LEGACY.replace("18081", "28081"));
        root.write(STANDARD_FILE, STANDARD);
        root.write("secrets/API_KEY", "s3cret");

        let config = load_with_env(root.path(), Role::Inference, &no_env).expect("load");

        assert_eq!(config.layout, Layout::Standard);
        assert_eq!(config.port, 18081);
    }

    #[test]
    fn missing_configuration_fails() {
        let root = TempRoot::new();

        assert!(load_err(&root, Role::Inference).contains("no configuration"));
    }
}
