//! Migration plans: TOML files that say which services change, how, and how to check them.
//!
//! ```toml
//! name = "t006-standard-config"
//! command_timeout = "2m"     # how long one service may take, from dispatch to result
//! on_failure = "rollback"    # or "leave": what happens to services that succeeded
//!
//! [[service]]
//! name = "inference"
//! [[service.step]]
//! action = "write_file"
//! path = "config/service.toml"
//! content = "..."
//! [[service.health]]
//! body_contains = '"layout":"standard"'
//! ```

use std::path::Path;
use std::time::Duration;

use flotilla_schemas::{Gates, HttpCheck, ServiceName, Step};
use serde::Deserialize;

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid plan {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid plan {path}: {reason}")]
    Rule { path: String, reason: String },
}

/// A parsed, checked plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// How long one service may take from dispatch to its result.
    #[serde(default = "default_command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// What happens to the services that succeeded when another one fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Steps for every service that declares none of its own.
    #[serde(rename = "step", default)]
    pub default_steps: Vec<Step>,
    /// Checks for every service that declares none of its own.
    #[serde(rename = "health", default)]
    pub default_health: Vec<HttpCheck>,
    /// Regression gates for every service that declares none of its own.
    #[serde(rename = "gates", default)]
    pub default_gates: Gates,
    #[serde(rename = "service")]
    pub services: Vec<ServicePlan>,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(120)
}

/// What to do with the rest of the run when a service fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Roll back every service that was migrated (the default): the fleet ends where it started.
    #[default]
    Rollback,
    /// Leave the services that succeeded migrated.
    Leave,
}

/// What happens to one service (every instance of it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePlan {
    pub name: ServiceName,
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
    /// Checks after the migration; none means the agent's configured health check.
    #[serde(default)]
    pub health: Vec<HttpCheck>,
    /// Regression gates; absent means the plan's `[gates]`.
    #[serde(default)]
    pub gates: Option<Gates>,
}

impl Plan {
    /// Reads and checks the plan at `path`.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            PlanError::Parse { message, .. } => PlanError::Parse {
                path: shown.clone(),
                message,
            },
            PlanError::Rule { reason, .. } => PlanError::Rule {
                path: shown.clone(),
                reason,
            },
            other => other,
        })
    }

    /// Parses and checks plan text.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        let mut plan: Plan = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: String::new(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        for service in &mut plan.services {
            if service.steps.is_empty() {
                service.steps = plan.default_steps.clone();
            }
            if service.health.is_empty() {
                service.health = plan.default_health.clone();
            }
            if service.gates.is_none() {
                service.gates = Some(plan.default_gates.clone());
            }
        }
        plan.check().map_err(|reason| PlanError::Rule {
            path: String::new(),
            reason,
        })?;
        Ok(plan)
    }

    fn check(&self) -> Result<(), String> {
        if self.services.is_empty() {
            return Err("the plan names no [[service]]".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for service in &self.services {
            if !seen.insert(&service.name) {
                return Err(format!("service {} appears twice", service.name));
            }
            if service.steps.is_empty() {
                return Err(format!(
                    "service {} has no steps: give it [[service.step]] or the plan [[step]]",
                    service.name
                ));
            }
        }
        if self.command_timeout < Duration::from_secs(1) {
            return Err("command_timeout must be at least 1s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "demo"
command_timeout = "30s"

[[service]]
name = "inference"
[[service.step]]
action = "write_file"
path = "config/service.toml"
content = "x"
[[service.step]]
action = "restart"
[[service.health]]
body_contains = "standard"
"#;

    #[test]
    fn parses_a_plan() {
        let plan = Plan::parse(GOOD).unwrap();
        assert_eq!(plan.command_timeout, Duration::from_secs(30));
        assert_eq!(plan.on_failure, OnFailure::Rollback);
        assert_eq!(plan.services[0].steps.len(), 2);
        assert_eq!(plan.services[0].health[0].url, None);
    }

    #[test]
    fn an_unknown_step_names_the_line_and_the_variants() {
        let err = Plan::parse(&GOOD.replace("action = \"restart\"", "action = \"reboot\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 12"), "{err}");
        assert!(err.contains("reboot"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let err = Plan::parse(&GOOD.replace("command_timeout", "comand_timeout"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("comand_timeout"), "{err}");
    }

    #[test]
    fn plan_level_steps_apply_to_services_without_their_own() {
        let text = "name = \"x\"\n[[step]]\naction = \"restart\"\n[[health]]\nbody_contains = \"ok\"\n[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n[[service.step]]\naction = \"delete\"\npath = \"f\"\n";
        let plan = Plan::parse(text).unwrap();
        assert_eq!(plan.services[0].steps, vec![Step::Restart]);
        assert_eq!(plan.services[1].steps[0].name(), "delete");
        assert_eq!(plan.services[1].health.len(), 1);
    }

    #[test]
    fn rules_are_checked() {
        let twice = format!(
            "{GOOD}\n[[service]]\nname = \"inference\"\n[[service.step]]\naction = \"restart\"\n"
        );
        assert!(
            Plan::parse(&twice)
                .unwrap_err()
                .to_string()
                .contains("appears twice")
        );
        assert!(
            Plan::parse("name = \"x\"\nservice = []\n")
                .unwrap_err()
                .to_string()
                .contains("no [[service]]")
        );
        let bad_name = GOOD.replace("name = \"inference\"", "name = \"In.ference\"");
        assert!(
            Plan::parse(&bad_name)
                .unwrap_err()
                .to_string()
                .contains("may only hold")
        );
    }
}
