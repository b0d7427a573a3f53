//! Configuration consistency: the verdicts on what the agents reported of their configuration
//! files and settings. Pure functions of the reports and the plan; they name keys, files and
//! services, never a value (the agents send none: key names, and digests keyed by the run).

use std::collections::BTreeMap;

use flotilla_schemas::{ConfigShape, Inspection, SettingReport};

use crate::plan::ServiceInspect;

/// The problems of one agent's configuration files: the standard configuration (the first of
/// the service's own files) missing or lacking a required key, a resolved secret where the plan
/// does not declare one (a leak), a declared secret key missing or holding none, and a setting
/// the agent could not find. `name` is `service/instance`.
pub(crate) fn config_problems(
    name: &str,
    inspection: &Inspection,
    spec: &ServiceInspect,
) -> Vec<String> {
    let mut problems = Vec::new();
    // The agent answers in the order of the files it was sent: match by position, so that a
    // file name the agent rendered (`${var:…}`) still matches the plan's.
    let files: Vec<(&str, &ConfigShape)> = inspection
        .config
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let file = spec.config_files.get(i).map_or(shape.path.as_str(), |f| f);
            (file, shape)
        })
        .collect();
    if spec.has_standard
        && let Some((_, standard)) = files.first()
    {
        let missing: Vec<&String> = spec
            .required_keys
            .iter()
            .filter(|k| !standard.keys.contains(k))
            .collect();
        if !standard.exists {
            problems.push(format!("{name}: {} does not exist", standard.path));
        } else if !missing.is_empty() {
            problems.push(format!(
                "{name}: {} lacks required key(s) {missing:?}",
                standard.path
            ));
        }
    }
    for (file, shape) in &files {
        problems.extend(leaks(name, file, shape, &spec.secret_keys));
    }
    for (file, key) in &spec.secret_keys {
        let Some((_, shape)) = files.iter().find(|(f, _)| f == file) else {
            continue;
        };
        if !shape.exists {
            if !(spec.has_standard && files[0].0 == file) {
                problems.push(format!(
                    "{name}: {} does not exist (it holds secret key {key})",
                    shape.path
                ));
            }
        } else if !shape.keys.contains(key) {
            problems.push(format!("{name}: {} lacks secret key {key}", shape.path));
        } else if !shape.literal_secrets.contains(key) {
            problems.push(format!(
                "{name}: {} key {key} is declared to hold a resolved secret but holds none of \
                 the agent's secrets (a literal value, or a placeholder left unresolved?)",
                shape.path
            ));
        }
    }
    problems.extend(unfound_settings(name, &inspection.settings, spec));
    problems
}

/// The resolved secrets of one file that the plan does not declare there.
fn leaks(
    name: &str,
    file: &str,
    shape: &ConfigShape,
    declared: &[(String, String)],
) -> Vec<String> {
    let declared_here = |key: &String| declared.iter().any(|(f, k)| f == file && k == key);
    let mut problems: Vec<String> = shape
        .literal_secrets
        .iter()
        .filter(|key| !declared_here(key))
        .map(|key| {
            format!(
                "{name}: {} holds a literal secret in {key}, which is not one of its \
                 secret_keys (a leak; the value is not shown)",
                shape.path
            )
        })
        .collect();
    if shape.secret_outside_keys {
        problems.push(format!(
            "{name}: {} holds a literal secret outside any key's value (in a comment, a key \
             name or a line that does not parse; the value is not shown)",
            shape.path
        ));
    }
    problems
}

/// The settings the agent did not report, or reported not found.
fn unfound_settings(name: &str, reports: &[SettingReport], spec: &ServiceInspect) -> Vec<String> {
    let mut problems = Vec::new();
    // In the probes' order: the agent reports the file name as it rendered it.
    for (i, probe) in spec.settings.iter().enumerate() {
        let report = reports
            .get(i)
            .filter(|r| r.name == probe.name && r.key == probe.key);
        match report {
            None => problems.push(format!(
                "{name}: setting {} was not reported (an agent older than per-service settings?)",
                probe.name
            )),
            Some(r) if !r.found => problems.push(format!(
                "{name}: setting {} ({} in {}) not found: {}",
                probe.name,
                probe.key,
                probe.file,
                r.detail.as_deref().unwrap_or("no value")
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The settings that do not hold one value across the fleet. `reports` are each agent's
/// `(service/instance, settings)`; each distinct value is named by a number, never shown.
pub(crate) fn settings_problems(reports: &[(String, Vec<SettingReport>)]) -> Vec<String> {
    // setting → (digest → the agents holding it, as `name (key in file)`), in report order.
    let mut by_setting: BTreeMap<&str, Vec<(&str, Vec<String>)>> = BTreeMap::new();
    for (agent, settings) in reports {
        for setting in settings {
            let Some(digest) = setting.digest.as_deref() else {
                continue;
            };
            let holders = by_setting.entry(setting.name.as_str()).or_default();
            let at = format!("{agent} ({} in {})", setting.key, setting.file);
            match holders.iter_mut().find(|(d, _)| *d == digest) {
                Some((_, agents)) => agents.push(at),
                None => holders.push((digest, vec![at])),
            }
        }
    }
    by_setting
        .into_iter()
        .filter(|(_, values)| values.len() > 1)
        .map(|(setting, values)| {
            let groups: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(i, (_, agents))| format!("value {}: {}", i + 1, agents.join(", ")))
                .collect();
            format!(
                "setting {setting} differs across services ({} values; values are not shown): {}",
                values.len(),
                groups.join("; ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
