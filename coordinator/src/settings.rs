//! The coordinator's configuration, layered by the `config` crate as the agent's is: defaults,
//! then the `--config` TOML file, then `FLOTILLA_…` variables, then flags (the last wins).
//!
//! Keys are spelled as in the agent's file: `[nats] url`, `[nats.auth] user`, … and the
//! variable of a key is `FLOTILLA_` and its path in capitals, sections joined by `__`
//! (`FLOTILLA_NATS__URL`, `FLOTILLA_NATS__AUTH__USER`, `FLOTILLA_SIGNING_KEY`). The spellings
//! before this convention (`nats_url = …` in the file, `FLOTILLA_NATS_URL`, `FLOTILLA_PREFIX`,
//! `FLOTILLA_NATS_USER`, …) still work, each with a deprecation warning.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::OutputFormat;
use crate::verify::Backend;

/// Every option of the coordinator, whichever layer set it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub nats: NatsSettings,
    #[serde(default)]
    pub output: OutputFormat,
    /// How long to wait for agents to answer discovery.
    #[serde(default = "default_discovery_window", with = "humantime_serde")]
    pub discovery_window: Duration,
    /// How long after its last registry refresh an agent is inactive: not waited for.
    #[serde(default = "default_agent_inactive_after", with = "humantime_serde")]
    pub agent_inactive_after: Duration,
    #[serde(default, deserialize_with = "from_text")]
    pub trace_backend: Backend,
    #[serde(default = "default_verify_wait", with = "humantime_serde")]
    pub verify_wait: Duration,
    #[serde(default)]
    pub no_verify: bool,
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    #[serde(default)]
    pub trusted_agent_keys: Vec<String>,
    #[serde(default)]
    pub report: ReportSettings,
}

/// How reports are written: the `[report]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportSettings {
    /// A tracing UI's page of one trace, `{trace_id}` standing for the run's trace ID
    /// (`http://jaeger:16686/trace/{trace_id}`): the HTML report links the run's trace to it.
    #[serde(default)]
    pub trace_url: Option<String>,
}

/// The placeholder of [`ReportSettings::trace_url`].
pub const TRACE_ID_PLACEHOLDER: &str = "{trace_id}";

/// The page of trace `trace_id` at `trace_url` (checked by [`assemble`]).
pub fn trace_link(trace_url: &str, trace_id: &str) -> String {
    trace_url.replace(TRACE_ID_PLACEHOLDER, trace_id)
}

/// Why `trace_url` cannot be a link: not http(s) (a `javascript:` URL would run in the page), or
/// no `{trace_id}` in it.
fn check_trace_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "report.trace_url: {url:?} is not an http:// or https:// URL"
        ));
    }
    if !url.contains(TRACE_ID_PLACEHOLDER) {
        return Err(format!(
            "report.trace_url: {url:?} has no {TRACE_ID_PLACEHOLDER} to put the trace ID in"
        ));
    }
    Ok(())
}

/// How to reach NATS: the agent's `[nats]` section, plus `allow_old_server`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    #[serde(default)]
    pub url: flotilla_bus::ServerList,
    #[serde(default = "flotilla_bus::nats_defaults::prefix")]
    pub prefix: String,
    #[serde(
        default = "flotilla_bus::nats_defaults::connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub allow_old_server: bool,
    #[serde(default)]
    pub auth: flotilla_bus::Credentials,
    /// How many copies the cluster keeps of every stream and bucket Flotilla creates; `None`:
    /// 3 on a cluster, 1 on a single server.
    #[serde(default)]
    pub replicas: Option<usize>,
    #[serde(default)]
    pub placement: PlacementSettings,
}

/// Where the streams and buckets are placed (`[nats.placement]`): JetStream's placement.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementSettings {
    /// The cluster, by name (a supercluster's), that holds them.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Only servers with every one of these tags (`server_tags`) hold them.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl PlacementSettings {
    /// As JetStream takes it; `None` when nothing is set.
    pub fn placement(&self) -> Option<async_nats::jetstream::stream::Placement> {
        (self.cluster.is_some() || !self.tags.is_empty()).then(|| {
            async_nats::jetstream::stream::Placement {
                cluster: self.cluster.clone(),
                tags: self.tags.clone(),
            }
        })
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            nats: NatsSettings::default(),
            output: OutputFormat::default(),
            discovery_window: default_discovery_window(),
            agent_inactive_after: default_agent_inactive_after(),
            trace_backend: Backend::default(),
            verify_wait: default_verify_wait(),
            no_verify: false,
            signing_key: None,
            trusted_agent_keys: Vec::new(),
            report: ReportSettings::default(),
        }
    }
}

impl Default for NatsSettings {
    fn default() -> Self {
        Self {
            url: Default::default(),
            prefix: flotilla_bus::nats_defaults::prefix(),
            connect_timeout: flotilla_bus::nats_defaults::connect_timeout(),
            allow_old_server: false,
            auth: Default::default(),
            replicas: None,
            placement: PlacementSettings::default(),
        }
    }
}

fn default_discovery_window() -> Duration {
    crate::DEFAULT_DISCOVERY_WINDOW
}

fn default_agent_inactive_after() -> Duration {
    flotilla_bus::registry::INACTIVE_AFTER
}

fn default_verify_wait() -> Duration {
    Duration::from_secs(15)
}

fn from_text<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr<Err = String>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// Why the configuration could not be assembled (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("invalid configuration: {0}")]
    Layers(config::ConfigError),
}

/// The file's sections (tables).
const SECTIONS: &[&str] = &["nats", "report"];

/// Top-level variables that are configuration keys; any other `FLOTILLA_…` without `__`
/// (`FLOTILLA_CONFIG`, `FLOTILLA_SECRET_…`, the agent's `FLOTILLA_AGENT_CONFIG`) is not.
const TOP_LEVEL: &[&str] = &[
    "output",
    "discovery_window",
    "agent_inactive_after",
    "trace_backend",
    "verify_wait",
    "no_verify",
    "signing_key",
    "trusted_agent_keys",
];

/// The spellings before the one convention, and the key each now sets: file keys and (in
/// capitals, after `FLOTILLA_`) variables.
const DEPRECATED: &[(&str, &str)] = &[
    ("nats_url", "nats.url"),
    ("prefix", "nats.prefix"),
    ("connect_timeout", "nats.connect_timeout"),
    ("allow_old_server", "nats.allow_old_server"),
    ("nats_user", "nats.auth.user"),
    ("nats_password", "nats.auth.password"),
    ("nats_password_file", "nats.auth.password_file"),
    ("nats_nkey_file", "nats.auth.nkey_seed_file"),
    ("nats_creds", "nats.auth.credentials_file"),
    ("nats_tls_ca", "nats.auth.tls_ca_file"),
    ("nats_tls_cert", "nats.auth.tls_cert_file"),
    ("nats_tls_key", "nats.auth.tls_key_file"),
    ("nats_inbox_prefix", "nats.auth.inbox_prefix"),
];

/// The variable that sets `key` (`nats.auth.user` → `FLOTILLA_NATS__AUTH__USER`).
pub fn variable_of(key: &str) -> String {
    format!("FLOTILLA_{}", key.replace('.', "__").to_uppercase())
}

/// Assembles the settings from the layers. `flags` holds the keys set on the command line.
pub fn assemble(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    flags: Vec<(&'static str, config::Value)>,
    warn: &mut dyn FnMut(String),
) -> Result<Settings, SettingsError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(config::File::from_str(
            &file_layer(path, warn)?,
            config::FileFormat::Toml,
        ));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("FLOTILLA")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("trusted_agent_keys")
            .with_list_parse_key("nats.placement.tags")
            .source(Some(env_layer(env, warn))),
    );
    for (key, value) in flags {
        builder = builder
            .set_override(key, value)
            .map_err(SettingsError::Layers)?;
    }
    let settings: Settings = builder
        .build()
        .and_then(config::Config::try_deserialize)
        .map_err(SettingsError::Layers)?;
    flotilla_schemas::subjects::Subjects::new(&settings.nats.prefix).map_err(|e| {
        SettingsError::Layers(config::ConfigError::Message(format!("nats.prefix: {e}")))
    })?;
    if let Some(url) = &settings.report.trace_url {
        check_trace_url(url).map_err(|e| SettingsError::Layers(config::ConfigError::Message(e)))?;
    }
    Ok(settings)
}

/// The file as TOML for the `config` crate, its deprecated keys moved to where they belong.
fn file_layer(path: &Path, warn: &mut dyn FnMut(String)) -> Result<String, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| SettingsError::File {
        path: path.to_owned(),
        reason,
    };
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| invalid(e.to_string().trim_end().to_owned()))?;
    for (old, new) in DEPRECATED {
        let Some(value) = table.remove(*old) else {
            continue;
        };
        warn(format!(
            "{}: key {old:?} is deprecated; write {}",
            path.display(),
            toml_path(new)
        ));
        let (sections, leaf) = new
            .rsplit_once('.')
            .expect("deprecated keys move into a section");
        let mut at = &mut table;
        for section in sections.split('.') {
            at = at
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .ok_or_else(|| invalid(format!("{section} must be a table")))?;
        }
        // The new spelling, when both are given, wins.
        at.entry(leaf).or_insert(value);
    }
    if let Some(unknown) = table
        .keys()
        .find(|k| !SECTIONS.contains(&k.as_str()) && !TOP_LEVEL.contains(&k.as_str()))
    {
        return Err(invalid(format!(
            "unknown key {unknown:?} (known: nats, report, {})",
            TOP_LEVEL.join(", ")
        )));
    }
    Ok(table.to_string())
}

/// `nats.auth.user` as a TOML file says it: `[nats.auth] user = …`.
fn toml_path(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, leaf)) => format!("[{section}] {leaf} = …"),
        None => format!("{key} = …"),
    }
}

/// The configuration variables of `env`, deprecated names translated.
fn env_layer(
    env: &HashMap<String, String>,
    warn: &mut dyn FnMut(String),
) -> HashMap<String, String> {
    let mut layer: HashMap<String, String> = env
        .iter()
        .filter(|(name, _)| {
            name.strip_prefix("FLOTILLA_").is_some_and(|key| {
                key.contains("__") || TOP_LEVEL.contains(&key.to_lowercase().as_str())
            })
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (old, new) in DEPRECATED {
        let old = variable_of(old);
        let Some(value) = env.get(&old) else {
            continue;
        };
        let new = variable_of(new);
        warn(format!("{old} is deprecated; set {new}"));
        layer.entry(new).or_insert_with(|| value.clone());
    }
    layer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flotilla.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn assemble_quiet(
        path: Option<&Path>,
        env: &HashMap<String, String>,
        flags: Vec<(&'static str, config::Value)>,
    ) -> (Result<Settings, SettingsError>, Vec<String>) {
        let mut warnings = Vec::new();
        let settings = assemble(path, env, flags, &mut |w| warnings.push(w));
        (settings, warnings)
    }

    #[test]
    fn the_trace_url_comes_from_the_report_section_its_variable_or_its_flag() {
        let url = "http://jaeger:16686/trace/{trace_id}";
        let (_dir, path) = file(&format!("[report]\ntrace_url = \"{url}\"\n"));
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        assert_eq!(settings.unwrap().report.trace_url.as_deref(), Some(url));
        let tempo = "https://grafana/explore?trace={trace_id}";
        let (settings, _) = assemble_quiet(
            Some(&path),
            &env(&[("FLOTILLA_REPORT__TRACE_URL", tempo)]),
            vec![],
        );
        assert_eq!(settings.unwrap().report.trace_url.as_deref(), Some(tempo));
        let flag = vec![(
            "report.trace_url",
            config::Value::from("http://x/{trace_id}"),
        )];
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), flag);
        assert_eq!(
            settings.unwrap().report.trace_url.as_deref(),
            Some("http://x/{trace_id}")
        );
        assert_eq!(
            trace_link(url, "4bf92f3577b34da6a3ce929d0e0e4736"),
            "http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn a_trace_url_that_is_not_http_or_has_no_placeholder_is_refused() {
        for (bad, why) in [
            ("javascript:alert(1)//{trace_id}", "not an http"),
            ("http://jaeger:16686/trace/", "has no {trace_id}"),
        ] {
            let env = env(&[("FLOTILLA_REPORT__TRACE_URL", bad)]);
            let (settings, _) = assemble_quiet(None, &env, vec![]);
            let error = settings.unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
        let (_dir, path) = file("[report]\ntrace_link = \"x\"\n");
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        assert!(settings.unwrap_err().to_string().contains("trace_link"));
    }

    #[test]
    fn defaults_apply_without_any_layer() {
        let (settings, warnings) = assemble_quiet(None, &HashMap::new(), vec![]);
        let settings = settings.unwrap();
        assert_eq!(settings.nats.url.to_string(), "nats://127.0.0.1:4222");
        assert_eq!(settings.nats.prefix, "flotilla");
        assert_eq!(settings.verify_wait, Duration::from_secs(15));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn each_layer_beats_the_one_beneath() {
        let (_dir, path) = file(
            "verify_wait = \"1s\"\n[nats]\nurl = \"nats://file:1\"\nprefix = \"fromfile\"\nconnect_timeout = \"1s\"\n",
        );
        let env = env(&[
            ("FLOTILLA_NATS__PREFIX", "fromenv"),
            ("FLOTILLA_NATS__CONNECT_TIMEOUT", "2s"),
        ]);
        let flags = vec![("nats.connect_timeout", config::Value::from("3s"))];
        let (settings, _) = assemble_quiet(Some(&path), &env, flags);
        let settings = settings.unwrap();
        assert_eq!(
            settings.nats.url.to_string(),
            "nats://file:1",
            "file over default"
        );
        assert_eq!(
            settings.verify_wait,
            Duration::from_secs(1),
            "file over default"
        );
        assert_eq!(settings.nats.prefix, "fromenv", "env over file");
        assert_eq!(
            settings.nats.connect_timeout,
            Duration::from_secs(3),
            "flag over env and file"
        );
    }

    #[test]
    fn a_deprecated_file_key_and_variable_still_work_and_warn() {
        let (_dir, path) = file("nats_url = \"nats://file:4222\"\nnats_user = \"ops\"\n");
        let (settings, warnings) =
            assemble_quiet(Some(&path), &env(&[("FLOTILLA_PREFIX", "fleet")]), vec![]);
        let settings = settings.unwrap();
        assert_eq!(settings.nats.url.to_string(), "nats://file:4222");
        assert_eq!(settings.nats.auth.user.as_deref(), Some("ops"));
        assert_eq!(settings.nats.prefix, "fleet");
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("FLOTILLA_NATS__PREFIX")));
        assert!(warnings.iter().any(|w| w.contains("[nats] url")));
    }

    #[test]
    fn the_new_spelling_beats_the_deprecated_one() {
        let (settings, _) = assemble_quiet(
            None,
            &env(&[
                ("FLOTILLA_NATS_URL", "nats://old:4222"),
                ("FLOTILLA_NATS__URL", "nats://new:4222"),
            ]),
            vec![],
        );
        assert_eq!(settings.unwrap().nats.url.to_string(), "nats://new:4222");
    }

    #[test]
    fn a_url_list_comes_from_an_array_or_commas() {
        let (_dir, path) = file("[nats]\nurl = [\"nats://a:1\", \"nats://b:2\"]\n");
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        assert_eq!(
            settings.unwrap().nats.url.as_slice(),
            ["nats://a:1", "nats://b:2"]
        );
        let (settings, _) = assemble_quiet(
            None,
            &env(&[("FLOTILLA_NATS__URL", "nats://a:1,nats://b:2")]),
            vec![],
        );
        assert_eq!(
            settings.unwrap().nats.url.as_slice(),
            ["nats://a:1", "nats://b:2"]
        );
    }

    #[test]
    fn replicas_and_placement_come_from_the_file_or_variables() {
        let (_dir, path) = file(
            "[nats]\nreplicas = 3\n[nats.placement]\ncluster = \"east\"\ntags = [\"ssd\", \"fast\"]\n",
        );
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        let nats = settings.unwrap().nats;
        assert_eq!(nats.replicas, Some(3));
        assert_eq!(nats.placement.cluster.as_deref(), Some("east"));
        assert_eq!(nats.placement.tags, ["ssd", "fast"]);
        let (settings, _) = assemble_quiet(
            None,
            &env(&[
                ("FLOTILLA_NATS__REPLICAS", "1"),
                ("FLOTILLA_NATS__PLACEMENT__TAGS", "ssd,fast"),
            ]),
            vec![],
        );
        let nats = settings.unwrap().nats;
        assert_eq!(nats.replicas, Some(1));
        assert_eq!(nats.placement.tags, ["ssd", "fast"]);
        assert_eq!(nats.placement.cluster, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let (_dir, path) = file("nats_ur = \"x\"\n");
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        let error = settings.unwrap_err().to_string();
        assert!(error.contains("unknown key \"nats_ur\""), "{error}");

        let (_dir, path) = file("[nats]\nconect_timeout = \"1s\"\n");
        let (settings, _) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        let error = settings.unwrap_err().to_string();
        assert!(error.contains("conect_timeout"), "{error}");

        let (settings, _) = assemble_quiet(None, &env(&[("FLOTILLA_VERIFY_WAIT", "soon")]), vec![]);
        let error = settings.unwrap_err().to_string();
        assert!(error.contains("verify_wait"), "{error}");

        let (settings, _) =
            assemble_quiet(None, &env(&[("FLOTILLA_TRACE_BACKEND", "zipkin")]), vec![]);
        let error = settings.unwrap_err().to_string();
        assert!(error.contains("jaeger=URL"), "{error}");
    }

    #[test]
    fn the_example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/coordinator.toml");
        let (settings, warnings) = assemble_quiet(Some(&path), &HashMap::new(), vec![]);
        let settings = settings.unwrap();
        assert_eq!(settings.nats.url.as_slice().len(), 2);
        assert_eq!(settings.nats.auth.user.as_deref(), Some("coordinator"));
        assert_eq!(
            settings.report.trace_url.as_deref(),
            Some("http://localhost:16686/trace/{trace_id}")
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn variables_that_are_not_configuration_are_left_alone() {
        let (settings, _) = assemble_quiet(
            None,
            &env(&[
                ("FLOTILLA_CONFIG", "/x.toml"),
                ("FLOTILLA_SECRET_TOKEN", "s3cret"),
                ("FLOTILLA_AGENT_CONFIG", "/a.toml"),
            ]),
            vec![],
        );
        settings.unwrap();
    }
}
