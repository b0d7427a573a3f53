//! The agent's configuration: a TOML file plus `FLOTILLA_…` environment overrides
//! (`FLOTILLA_NATS__URL` overrides `[nats] url`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_schemas::{InstanceId, ServiceName};
use serde::Deserialize;

/// Why the configuration could not be loaded. The message holds the parser's error (it names
/// the key); that error is not also the `source()`, which would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read agent configuration {path}: {cause}")]
    Load {
        path: PathBuf,
        cause: config::ConfigError,
    },
    #[error("invalid agent configuration {path}: {cause}")]
    Invalid {
        path: PathBuf,
        cause: config::ConfigError,
    },
    #[error("invalid agent configuration {path}: {reason}")]
    Rule { path: PathBuf, reason: String },
}

/// Everything the agent needs to know about itself, its bus and its service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    #[serde(default)]
    pub nats: NatsConfig,
    pub agent: AgentSection,
    pub service: ServiceConfig,
    /// Values for `${var:NAME}` placeholders in written files.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: SecretSources,
    #[serde(default)]
    pub commands: CommandPolicy,
    #[serde(default)]
    pub security: SecurityConfig,
    /// The operations endpoint (`/healthz`, `/readyz`, `/metrics`); off unless `listen` is set.
    #[serde(default)]
    pub http: crate::ops::HttpConfig,
}

/// Who may command this agent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Base64 Ed25519 public keys of the coordinators this agent obeys (two during a key
    /// rotation). When set, every command must carry a valid signature by one of them. Empty:
    /// unsigned commands are accepted, with a warning at start — for local demos only.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// How far the coordinator's clock may be off: commands issued up to this far in the
    /// future, or expired up to this long ago, are still accepted.
    #[serde(default = "default_clock_skew", with = "humantime_serde")]
    pub clock_skew: Duration,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            trusted_keys: Vec::new(),
            clock_skew: default_clock_skew(),
        }
    }
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(30)
}

/// How to reach NATS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// One URL, several (a TOML array, or commas in `FLOTILLA_NATS__URL`): all are tried at
    /// start, and the client reconnects to any of them (or any node the cluster announces).
    #[serde(default)]
    pub url: flotilla_bus::ServerList,
    /// Subject prefix shared with the coordinator.
    #[serde(default = "flotilla_bus::nats_defaults::prefix")]
    pub prefix: String,
    #[serde(
        default = "flotilla_bus::nats_defaults::connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    /// Identity and transport security (`[nats.auth]`).
    #[serde(default)]
    pub auth: flotilla_bus::Credentials,
    /// The JetStream domain that holds the streams: the hub's, for an agent connected to a
    /// leaf node (docs/deployment.md, "Sites: leaf nodes"); none by default.
    #[serde(default)]
    pub domain: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: Default::default(),
            prefix: flotilla_bus::nats_defaults::prefix(),
            connect_timeout: flotilla_bus::nats_defaults::connect_timeout(),
            auth: Default::default(),
            domain: None,
        }
    }
}

/// The agent itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// This instance's name among the agents of the same service.
    pub instance: InstanceId,
    /// Where the journal and the backups live. Must survive restarts.
    pub state_dir: PathBuf,
    /// The largest backup the agent may take; a bigger service root is refused before any
    /// change. Unset: limited by the free space only.
    #[serde(default)]
    pub max_backup_bytes: Option<u64>,
    /// Where backups are kept; `<state_dir>/backups` by default. A larger volume than the state
    /// directory's, for services with big roots.
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// Stop the service the agent runs (`supervisor = "agent"`) when the agent shuts down
    /// cleanly (SIGTERM, SIGINT). Off by default: the service keeps serving while the agent is
    /// away, and the next agent adopts it. An agent that dies or fails never stops it.
    #[serde(default)]
    pub stop_service_on_exit: bool,
    /// Labels announced in presence, which plans' wave selectors and `flotilla migrate -l`
    /// select by (`labels = { region = "eu", tier = "canary" }`); Kubernetes' label rules.
    #[serde(default)]
    pub labels: flotilla_schemas::labels::Labels,
}

/// The service this agent looks after.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: ServiceName,
    /// The service's directory; every step is confined to it.
    pub root: PathBuf,
    /// Who runs the service: the agent itself (`agent`, the default) or an external supervisor
    /// such as systemd (`external`).
    #[serde(default)]
    pub supervisor: SupervisorKind,
    /// `agent`: the program and arguments the agent runs and supervises.
    #[serde(default)]
    pub command: Vec<String>,
    /// `external`: the command that restarts the service, e.g. `["systemctl", "restart", "x"]`.
    #[serde(default)]
    pub restart_command: Vec<String>,
    /// `external`: the command that stops it (optional; a rollback then restores in place and
    /// restarts).
    #[serde(default)]
    pub stop_command: Vec<String>,
    /// `external`: a file holding the service's main PID, to measure its memory.
    #[serde(default)]
    pub pid_file: Option<PathBuf>,
    /// `external`: a substring of the service's command line, to find its PID without a PID file.
    #[serde(default)]
    pub process_match: Option<String>,
    /// Extra environment for the service process, on top of the agent's environment without
    /// its `FLOTILLA_…` and secret variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Agent variables passed to the service, steps and checks although the agent keeps its
    /// own (`FLOTILLA_…`, `<secrets.env_prefix>…`) from them, e.g. `["FLOTILLA_SAMPLE_INSTANCE"]`.
    #[serde(default)]
    pub inherit_env: Vec<String>,
    /// The health endpoint checked before and after a migration (required unless a job).
    #[serde(default)]
    pub health_url: String,
    /// How long the service may take to become healthy after a start.
    #[serde(default = "default_startup_timeout", with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How long the service may take to stop on SIGTERM before it is killed.
    #[serde(default = "default_stop_timeout", with = "humantime_serde")]
    pub stop_timeout: Duration,
    /// What the service is: a long-running `service` (the default) or a run-once `job`, which
    /// has no health endpoint and is *run* where a service is restarted (see `[service.job]`).
    #[serde(default)]
    pub kind: ServiceKind,
    /// A job's run, outputs, dry-run check and baseline; only with `kind = "job"`.
    #[serde(default)]
    pub job: Option<crate::job::JobConfig>,
}

/// What kind of program the service is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceKind {
    /// Long-running: started, kept serving, health-checked.
    #[default]
    Service,
    /// Run once to completion (training, batch preprocess): judged by its exit code, outputs,
    /// duration and peak memory.
    Job,
}

impl ServiceConfig {
    /// The job settings when the service is a job (defaults when `[service.job]` is absent).
    pub fn job(&self) -> Option<crate::job::JobConfig> {
        (self.kind == ServiceKind::Job).then(|| self.job.clone().unwrap_or_default())
    }
}

/// Who runs the service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupervisorKind {
    /// The agent spawns, restarts and measures the service process.
    #[default]
    Agent,
    /// Another supervisor runs it; the agent drives it through commands.
    External,
    /// No process at all (`supervisor = "none"`), for benchmarks and fleet simulators: start,
    /// stop and restart do nothing but wait for `health_url` to answer, as for an external
    /// supervisor without commands; health checks still go to `health_url` over HTTP.
    #[serde(rename = "none")]
    Noop,
}

fn default_startup_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_stop_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Where `${secret:NAME}` values come from, tried in order: the environment, then a directory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSources {
    /// `NAME` is read from the environment variable `<env_prefix>NAME`.
    #[serde(default = "default_secret_env_prefix")]
    pub env_prefix: String,
    /// `NAME` is read from the file `<dir>/NAME` (e.g. `/run/secrets`).
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Default for SecretSources {
    fn default() -> Self {
        Self {
            env_prefix: default_secret_env_prefix(),
            dir: None,
        }
    }
}

fn default_secret_env_prefix() -> String {
    "FLOTILLA_SECRET_".to_owned()
}

/// Which programs `run_command` steps may run.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandPolicy {
    /// Program names or paths, matched exactly. Empty: no command may run.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Run `run_command` steps and `command` checks as this less privileged user and group
    /// (numeric IDs), instead of as the agent.
    #[serde(default)]
    pub run_as: Option<RunAs>,
}

/// A numeric user and group to run programs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// `FLOTILLA_<SECTION>__<KEY>` variables only: other `FLOTILLA_…` variables (secrets such as
/// `FLOTILLA_SECRET_API_KEY`, `FLOTILLA_AGENT_CONFIG`) are not configuration keys.
fn section_overrides() -> std::collections::HashMap<String, String> {
    std::env::vars()
        .filter(|(name, _)| name.starts_with("FLOTILLA_") && name.contains("__"))
        .collect()
}

impl AgentConfig {
    /// Loads `path`, then applies `FLOTILLA_…` environment overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, section_overrides())
    }

    /// Loads `path` with `overrides` (variable name to value) as the environment.
    fn load_with(
        path: &Path,
        overrides: std::collections::HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let settings = config::Config::builder()
            .add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            )
            .add_source(
                config::Environment::with_prefix("FLOTILLA")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("security.trusted_keys")
                    .with_list_parse_key("service.inherit_env")
                    .source(Some(overrides)),
            )
            .build()
            .map_err(|cause| ConfigError::Load {
                path: path.to_owned(),
                cause,
            })?;
        let config: AgentConfig =
            settings
                .try_deserialize()
                .map_err(|cause| ConfigError::Invalid {
                    path: path.to_owned(),
                    cause,
                })?;
        config.check().map_err(|reason| ConfigError::Rule {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Rules serde cannot express.
    fn check(&self) -> Result<(), String> {
        match self.service.supervisor {
            SupervisorKind::Agent if self.service.command.is_empty() => {
                return Err(
                    "service.command must name a program (or set supervisor = \"external\")".into(),
                );
            }
            SupervisorKind::External if self.service.restart_command.is_empty() => {
                return Err(
                    "service.restart_command is required with supervisor = \"external\"".into(),
                );
            }
            _ => {}
        }
        match (self.service.kind, &self.service.job) {
            (ServiceKind::Job, job) => {
                if self.service.supervisor != SupervisorKind::Agent {
                    return Err("a job (kind = \"job\") is run by the agent: it needs supervisor = \"agent\" and a command".into());
                }
                if let Some(job) = job {
                    job.check()?;
                }
            }
            (ServiceKind::Service, Some(_)) => {
                return Err("[service.job] needs kind = \"job\" in [service]".into());
            }
            (ServiceKind::Service, None) if self.service.health_url.is_empty() => {
                return Err(
                    "service.health_url is required (or kind = \"job\" for a run-once job)".into(),
                );
            }
            (ServiceKind::Service, None) => {}
        }
        if !self.service.root.is_absolute() {
            return Err(format!(
                "service.root {:?} must be an absolute path",
                self.service.root
            ));
        }
        if !self.agent.state_dir.is_absolute() {
            return Err(format!(
                "agent.state_dir {:?} must be an absolute path",
                self.agent.state_dir
            ));
        }
        if self.agent.state_dir.starts_with(&self.service.root) {
            return Err("agent.state_dir must not be inside service.root (backups would back themselves up)".into());
        }
        for key in &self.security.trusted_keys {
            flotilla_bus::signing::TrustedKey::parse(key)
                .map_err(|e| format!("security.trusted_keys: {e}"))?;
        }
        flotilla_schemas::subjects::Subjects::new(&self.nats.prefix)
            .map_err(|e| format!("nats.prefix: {e}"))?;
        self.http.address()?;
        check_labels(&self.agent.labels)
    }
}

/// Every label is a valid Kubernetes label. The error names the key, never the value.
fn check_labels(labels: &flotilla_schemas::labels::Labels) -> Result<(), String> {
    use flotilla_schemas::labels::{check_declared_key, check_value};
    for (key, value) in labels {
        check_declared_key(key).map_err(|e| format!("agent.labels: key {key:?}: {e}"))?;
        check_value(value).map_err(|e| format!("agent.labels: the value of {key:?}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("agent.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = r#"
[agent]
instance = "a"
state_dir = "/var/lib/flotilla/inference"
[service]
name = "inference"
root = "/srv/inference"
command = ["flotilla-sample", "--role", "inference"]
health_url = "http://127.0.0.1:18081/health"
startup_timeout = "5s"
"#;

    #[test]
    fn loads_a_valid_file_with_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig::load(&write(dir.path(), GOOD)).unwrap();
        assert_eq!(config.service.name.as_str(), "inference");
        assert_eq!(config.service.startup_timeout, Duration::from_secs(5));
        assert_eq!(config.nats.prefix, "flotilla");
        assert!(config.commands.allow.is_empty());
    }

    #[test]
    fn the_nats_url_is_a_toml_array_or_a_comma_separated_variable() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("[nats]\nurl = [\"nats://a:4222\", \"nats://b:4222\"]\n{GOOD}");
        let config = AgentConfig::load_with(&write(dir.path(), &text), Default::default()).unwrap();
        assert_eq!(
            config.nats.url.as_slice(),
            ["nats://a:4222", "nats://b:4222"]
        );
        let env = [(
            "FLOTILLA_NATS__URL".to_owned(),
            "nats://c:4222, nats://d:4222,nats://e:4222".to_owned(),
        )];
        let config = AgentConfig::load_with(&write(dir.path(), &text), env.into()).unwrap();
        assert_eq!(
            config.nats.url.as_slice(),
            ["nats://c:4222", "nats://d:4222", "nats://e:4222"],
            "the variable beats the file"
        );
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("health_url", "helth_url");
        let err = AgentConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("helth_url"), "{err}");
    }

    #[test]
    fn a_bad_service_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace("name = \"inference\"", "name = \"../x\"");
        let err = AgentConfig::load(&write(dir.path(), &text))
            .unwrap_err()
            .to_string();
        assert!(err.contains("may only hold"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let err = AgentConfig::load(Path::new("/nonexistent/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    }

    /// Two valid public keys, as `flotilla keys generate` prints them.
    fn two_keys() -> [String; 2] {
        [(); 2].map(|()| {
            flotilla_bus::signing::SigningKey::generate()
                .unwrap()
                .public_key_text()
        })
    }

    fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        AgentConfig::load_with(&write(dir.path(), text), env)
    }

    #[test]
    fn trusted_keys_come_from_the_environment_separated_by_commas() {
        let [one, two] = two_keys();
        let list = format!("{one},{two}");
        let config = load_with_env(GOOD, &[("FLOTILLA_SECURITY__TRUSTED_KEYS", &list)]).unwrap();
        assert_eq!(config.security.trusted_keys, [one.clone(), two]);

        let config = load_with_env(GOOD, &[("FLOTILLA_SECURITY__TRUSTED_KEYS", &one)]).unwrap();
        assert_eq!(config.security.trusted_keys, [one]);
    }

    #[test]
    fn a_bad_trusted_key_from_the_environment_is_refused() {
        let [one, _] = two_keys();
        let list = format!("{one},not-a-key");
        let err = load_with_env(GOOD, &[("FLOTILLA_SECURITY__TRUSTED_KEYS", &list)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("security.trusted_keys"), "{err}");
    }

    #[test]
    fn other_lists_cannot_come_from_the_environment() {
        let err = load_with_env(
            GOOD,
            &[("FLOTILLA_COMMANDS__ALLOW", "/bin/true,/bin/false")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("commands.allow"), "{err}");
    }

    #[test]
    fn inherit_env_comes_from_the_environment_separated_by_commas() {
        let config =
            load_with_env(GOOD, &[("FLOTILLA_SERVICE__INHERIT_ENV", "A_VAR,B_VAR")]).unwrap();
        assert_eq!(config.service.inherit_env, ["A_VAR", "B_VAR"]);
    }

    #[test]
    fn labels_come_from_the_file_and_the_environment() {
        let text = GOOD.replace(
            "instance = \"a\"",
            "instance = \"a\"\nlabels = { region = \"eu\", \"example.com/tier\" = \"canary\", Zone = \"A\" }",
        );
        let config = load_with_env(&text, &[("FLOTILLA_AGENT__LABELS__REGION", "us")]).unwrap();
        let labels: Vec<_> = config.agent.labels.iter().collect();
        assert_eq!(
            labels,
            [
                (&"Zone".to_owned(), &"A".to_owned()),
                (&"example.com/tier".to_owned(), &"canary".to_owned()),
                (&"region".to_owned(), &"us".to_owned())
            ]
        );
        assert!(load_with_env(GOOD, &[]).unwrap().agent.labels.is_empty());
    }

    #[test]
    fn bad_labels_are_refused_naming_the_key_and_the_rule_not_the_value() {
        for (labels, expected) in [
            ("{ \"-tier\" = \"x\" }", "key \"-tier\": the name part"),
            (
                "{ tier = \"canary one\" }",
                "the value of \"tier\": a label value",
            ),
            (
                "{ service = \"x\" }",
                "key \"service\": the label key \"service\" is reserved",
            ),
        ] {
            let text = GOOD.replace(
                "instance = \"a\"",
                &format!("instance = \"a\"\nlabels = {labels}"),
            );
            let err = load_with_env(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("canary one"), "{err}");
        }
    }

    #[test]
    fn supervisor_none_needs_no_command() {
        let dir = tempfile::tempdir().unwrap();
        let text = GOOD.replace(
            "command = [\"flotilla-sample\", \"--role\", \"inference\"]",
            "supervisor = \"none\"",
        );
        let config = AgentConfig::load(&write(dir.path(), &text)).unwrap();
        assert_eq!(config.service.supervisor, SupervisorKind::Noop);
    }
}
