//! `[cross_service]`: the fleet-wide keys of the cross-service stage, and each service's own
//! `[service.cross_service]`, which replaces them for that service. Services written by other
//! teams name one setting differently (`db.url` in a TOML file, `DATABASE_URL` in a `.env`), so
//! a setting the fleet must agree on has a name in the plan and a place in each service.
//!
//! ```toml
//! [cross_service]
//! config_files = ["config/service.toml"]      # the first one is the standard configuration
//! secret_keys = ["secrets.api_key"]           # supposed to hold a resolved secret
//! [cross_service.settings]
//! database_url = "db.url"                     # must hold one value across the fleet
//!
//! [[service]]
//! name = "preprocess"
//! [service.cross_service]
//! config_files = ["settings.env"]
//! secret_keys = ["API_TOKEN"]
//! settings = { database_url = "DATABASE_URL" }
//!
//! [[service]]
//! name = "training"                          # a job: no database
//! [service.cross_service]
//! settings = { database_url = false }
//! ```

use std::collections::BTreeMap;

use flotilla_schemas::paths::relative_path;
use flotilla_schemas::placeholder;
use flotilla_schemas::{Check, ServiceName, SettingProbe};
use serde::Deserialize;
use toml::Spanned;

use super::{LogCorrelation, RuleError};

/// The cross-service stage (T006 phase 3), run by every migrated service's agent under the
/// run's trace once the whole fleet is migrated, before anything is finalized. Its file and key
/// lists are the defaults of every service without its own `[service.cross_service]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossService {
    /// Service communication: every agent reaches every other migrated service's endpoint.
    #[serde(default)]
    pub communication: bool,
    /// Configuration files every agent reports the shape of (key names, a fingerprint, keys
    /// holding a literal secret); the first one is the standard configuration.
    #[serde(default)]
    pub config_files: Vec<String>,
    /// Keys the standard configuration of every service must have.
    #[serde(default)]
    pub required_keys: Vec<String>,
    /// Keys that are supposed to hold a resolved secret: not flagged as a literal secret, and
    /// required to hold one. A secret anywhere else is a leak.
    #[serde(default)]
    pub secret_keys: Vec<Spanned<KeyRef>>,
    /// Settings that must hold the same value in every migrated service, by name, with where
    /// each service keeps them unless it says otherwise.
    #[serde(default)]
    pub settings: BTreeMap<Spanned<String>, Spanned<KeyRef>>,
    /// Further checks every agent runs.
    #[serde(rename = "check", default)]
    pub checks: Vec<Check>,
    /// Requests to one service whose correlation ID must show in other services' logs.
    #[serde(default)]
    pub log_correlation: Vec<LogCorrelation>,
}

/// One service's `[service.cross_service]`: each key given replaces the fleet-wide one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossServiceOverride {
    #[serde(default)]
    pub config_files: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub required_keys: Option<Vec<String>>,
    #[serde(default)]
    pub secret_keys: Option<Vec<Spanned<KeyRef>>>,
    /// Where this service keeps some of the fleet's settings.
    #[serde(default)]
    pub settings: BTreeMap<Spanned<String>, Spanned<KeyRef>>,
}

/// A key of a configuration file: `"db.url"` is in the service's standard configuration (its
/// first `config_files`); `{ file = "settings.env", key = "DATABASE_URL" }` names the file. For
/// a setting, `false` says the service does not hold it (`true` is refused).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "a key (\"db.url\"), a table { file = \"settings.env\", key = \"DATABASE_URL\" }, or false (a setting the service does not hold)"
)]
pub enum KeyRef {
    Key(String),
    At(KeyAt),
    Held(bool),
}

/// A key in a named file (or, without `file`, in the standard configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAt {
    #[serde(default)]
    pub file: Option<String>,
    pub key: String,
}

/// The cross-service stage as it applies to one service: the fleet-wide keys with the
/// service's own in their place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceInspect {
    /// The files its agent reports the shape of: the service's `config_files`, then every other
    /// file a secret key or a setting names.
    pub config_files: Vec<String>,
    /// Whether `config_files[0]` is the standard configuration (the service has a list).
    pub has_standard: bool,
    pub required_keys: Vec<String>,
    /// `(file, key)` of every key supposed to hold a resolved secret.
    pub secret_keys: Vec<(String, String)>,
    /// Every fleet setting, where this service keeps it.
    pub settings: Vec<SettingProbe>,
}

// === impl CrossService ===

impl CrossService {
    /// The stage for a service with `own` keys (its `[service.cross_service]`); an error says
    /// which key cannot be placed (`plan check` refuses such a plan).
    pub fn for_service(
        &self,
        own: Option<&CrossServiceOverride>,
    ) -> Result<ServiceInspect, String> {
        self.resolve(own, "service.cross_service")
            .map_err(|e| format!("{}: {}", e.key, e.reason))
    }

    /// [`CrossService::for_service`]; an error names a key of `own` under `own_at`.
    fn resolve(
        &self,
        own: Option<&CrossServiceOverride>,
        own_at: &str,
    ) -> Result<ServiceInspect, RuleError> {
        let files: Vec<String> = match own.and_then(|o| o.config_files.as_ref()) {
            Some(files) => files.iter().map(|f| f.get_ref().clone()).collect(),
            None => self.config_files.clone(),
        };
        let standard = files.first().cloned();
        // `None`: a setting this service does not hold (`check` refuses `false` elsewhere).
        let place = |key: &Spanned<KeyRef>, at: String| match key.get_ref() {
            KeyRef::Held(_) => Ok(None),
            KeyRef::At(KeyAt {
                file: Some(file),
                key: name,
            }) => Ok(Some((file.clone(), name.clone()))),
            KeyRef::Key(name)
            | KeyRef::At(KeyAt {
                file: None,
                key: name,
            }) => match &standard {
                Some(file) => Ok(Some((file.clone(), name.clone()))),
                None => Err(RuleError::at(
                    key,
                    at,
                    format!(
                        "{name:?} names no file and the service has no config_files: write \
                         {{ file = \"…\", key = {name:?} }}"
                    ),
                )),
            },
        };
        let (secrets, secrets_at) = match own.and_then(|o| o.secret_keys.as_ref()) {
            Some(own) => (own, format!("{own_at}.secret_keys")),
            None => (&self.secret_keys, "cross_service.secret_keys".to_owned()),
        };
        let mut spec = ServiceInspect {
            has_standard: standard.is_some(),
            required_keys: own
                .and_then(|o| o.required_keys.clone())
                .unwrap_or_else(|| self.required_keys.clone()),
            config_files: files,
            ..ServiceInspect::default()
        };
        for (i, key) in secrets.iter().enumerate() {
            spec.secret_keys
                .extend(place(key, format!("{secrets_at}[{i}]"))?);
        }
        for (name, fleet) in &self.settings {
            let (key, at) = match own.and_then(|o| o.settings.get(name)) {
                Some(key) => (key, format!("{own_at}.settings.{}", name.get_ref())),
                None => (fleet, format!("cross_service.settings.{}", name.get_ref())),
            };
            let Some((file, key)) = place(key, at)? else {
                continue;
            };
            spec.settings.push(SettingProbe {
                name: name.get_ref().clone(),
                file,
                key,
            });
        }
        let named: Vec<String> = spec
            .secret_keys
            .iter()
            .map(|(file, _)| file)
            .chain(spec.settings.iter().map(|s| &s.file))
            .cloned()
            .collect();
        for file in named {
            if !spec.config_files.contains(&file) {
                spec.config_files.push(file);
            }
        }
        Ok(spec)
    }
}

/// Checks the new keys of `[cross_service]` and of each service's `[service.cross_service]`:
/// every file stays in the service root, every key and setting can be placed in every service,
/// a service places only settings the fleet declares, and no `[service.cross_service]` stands
/// without a `[cross_service]`. `services` are `(name, own keys)`, in the plan's order.
pub(super) fn check(
    cross: Option<&CrossService>,
    services: &[(&ServiceName, Option<&Spanned<CrossServiceOverride>>)],
) -> Result<(), RuleError> {
    if let Some(cross) = cross {
        keys("cross_service", &cross.secret_keys, &cross.settings)?;
    }
    for (i, &(name, own)) in services.iter().enumerate() {
        let at = format!("service[{i}].cross_service");
        let Some(cross) = cross else {
            let Some(own) = own else { continue };
            return Err(RuleError::at(
                own,
                at,
                format!(
                    "service {name} has [service.cross_service] but the plan has no \
                     [cross_service]: add one (it may be empty)"
                ),
            ));
        };
        if let Some(own) = own.map(Spanned::get_ref) {
            for (j, file) in own.config_files.iter().flatten().enumerate() {
                file_path(file, &format!("{at}.config_files[{j}]"))?;
            }
            keys(
                &at,
                own.secret_keys.as_deref().unwrap_or_default(),
                &own.settings,
            )?;
            for setting in own.settings.keys() {
                if !cross.settings.contains_key(setting) {
                    let known: Vec<&str> = cross
                        .settings
                        .keys()
                        .map(|k| k.get_ref().as_str())
                        .collect();
                    return Err(RuleError::at(
                        setting,
                        format!("{at}.settings.{}", setting.get_ref()),
                        format!(
                            "service {name} places setting {:?}, which [cross_service.settings] \
                             does not declare (it declares {known:?})",
                            setting.get_ref()
                        ),
                    ));
                }
            }
        }
        cross
            .resolve(own.map(Spanned::get_ref), &at)
            .map_err(|e| e.for_service(name))?;
    }
    Ok(())
}

/// The secret keys and settings of one table: keys not empty, files in the root.
fn keys(
    at: &str,
    secrets: &[Spanned<KeyRef>],
    settings: &BTreeMap<Spanned<String>, Spanned<KeyRef>>,
) -> Result<(), RuleError> {
    let named = secrets
        .iter()
        .enumerate()
        .map(|(i, k)| (format!("{at}.secret_keys[{i}]"), k));
    let placed = settings
        .iter()
        .map(|(name, k)| (format!("{at}.settings.{}", name.get_ref()), k));
    let placed = placed.map(|(at, k)| (at, k, true));
    for (key_at, key, is_setting) in named.map(|(at, k)| (at, k, false)).chain(placed) {
        let (file, name) = match key.get_ref() {
            KeyRef::Key(name) => (None, name),
            KeyRef::At(KeyAt { file, key }) => (file.as_ref(), key),
            KeyRef::Held(false) if is_setting => continue,
            KeyRef::Held(_) => {
                let reason = if is_setting {
                    "true is not a place: write a key, { file, key }, or false (the service does \
                     not hold the setting)"
                } else {
                    "a secret key is a key or { file, key }"
                };
                return Err(RuleError::at(key, key_at, reason.into()));
            }
        };
        if name.trim().is_empty() {
            return Err(RuleError::at(key, key_at, "the key is empty".into()));
        }
        if let Some(file) = file {
            let reason = relative_path(file)
                .err()
                .map(|e| e.to_string())
                .or_else(|| {
                    placeholder::first_secret(file)
                        .map(|s| format!("${{secret:{s}}} is not allowed in a file name"))
                });
            if let Some(reason) = reason {
                return Err(RuleError::at(key, format!("{key_at}.file"), reason));
            }
        }
    }
    Ok(())
}

fn file_path(file: &Spanned<String>, at: &str) -> Result<(), RuleError> {
    relative_path(file.get_ref())
        .map(|_| ())
        .map_err(|e| RuleError::at(file, at.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests;
