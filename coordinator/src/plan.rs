//! Migration plans: TOML files that say which services change, how, in which waves, and how to
//! check them. `docs/plan-reference.md` documents every key.
//!
//! ```toml
//! name = "t006-standard-config"
//! command_timeout = "2m"     # how long one service may take, from dispatch to result
//! on_failure = "rollback"    # or "leave" / "continue": what happens once the budget is broken
//! failure_budget = 0         # failed services tolerated (a count, or "10%")
//! max_parallel = 4           # agents migrating at once inside a wave (or a share: "25%")
//! finalize = "auto"          # or "manual": keep the backups until `flotilla finalize RUN`
//!
//! [[wave]]
//! name = "canary"
//! selector = "tier=canary"  # the agents whose labels match (kubectl's `-l` syntax)
//! [[wave]]
//! name = "first"
//! services = ["inference"]
//! [[wave]]
//! name = "rest"              # no `services` and no `size`: every service not yet placed
//!
//! [[service]]
//! name = "inference"
//! [[service.step]]
//! action = "write_file"
//! path = "config/service.toml"
//! content = "..."
//! ```

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use flotilla_schemas::{
    Check, Gates, HttpCheck, InstanceId, Precondition, ServiceName, Step, Workload,
};
use serde::{Deserialize, Serialize};
use toml::Spanned;

mod amount;
mod analysis;
mod correlation;
mod cross_service;
pub(crate) mod fields;
mod pause;
mod placement;
mod services;
mod waves;

pub use amount::Amount;
pub use analysis::{Analysis, AnalysisGate, Rendered, Threshold};
pub use correlation::LogCorrelation;
pub use cross_service::{CrossService, CrossServiceOverride, KeyAt, KeyRef, ServiceInspect};
pub use pause::{Pause, PauseError};
pub use placement::place;

use crate::selector::Selector;

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
    /// A rule between keys was broken; `at` names the line and key when known.
    #[error("invalid plan {path}: {at}{reason}")]
    Rule {
        path: String,
        at: String,
        reason: String,
    },
}

/// A parsed, checked plan, with its waves resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: Option<String>,
    /// How long one service may take from dispatch to its result, unless it says otherwise.
    pub command_timeout: Duration,
    /// What happens once the failure budget is broken.
    pub on_failure: OnFailure,
    /// Failed services the run tolerates before it stops.
    pub failure_budget: Amount,
    /// Agents migrating at once inside a wave (a count, or a share of the wave's agents),
    /// unless the wave says otherwise; `None` is no cap.
    pub max_parallel: Option<Amount>,
    /// Every service, each with the plan-level defaults filled in.
    pub services: Vec<ServicePlan>,
    /// The waves, in order; every service is in exactly one.
    pub waves: Vec<Wave>,
    /// Checks across the migrated fleet before it is finalized.
    pub cross_service: Option<CrossService>,
    /// Whether a proven run drops its backups at once or waits for an operator's decision.
    pub finalize: Finalize,
    /// What the correlation check may not prove means.
    pub correlation: CorrelationPolicy,
    /// How often a bake (a wave's `pause = "10m"`) checks the health of the services migrated
    /// so far; a failed check fails that service.
    pub bake_health_every: Duration,
    /// Where Prometheus is and the waves' analysis gates (`[analysis]`, `[[wave.analysis]]`).
    pub analysis: Option<Analysis>,
}

/// `[correlation]`: what a correlation check that could not prove correlation for want of
/// telemetry (none arrived from a service, parents lost, the backend unreadable) means: `fail`
/// (the default: no proof, no finalize) or `warn` (report it and finalize). A check that found
/// uncorrelated telemetry fails whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorrelationPolicy {
    #[serde(default)]
    pub inconclusive: flotilla_schemas::Inconclusive,
}

/// What to do when the failure budget is broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop dispatching and roll back every migrated service, latest wave first (the default):
    /// the fleet ends where it started.
    #[default]
    Rollback,
    /// Stop dispatching and leave the migrated services as they are (not finalized, so
    /// `flotilla rollback` can still restore them).
    Leave,
    /// Go on with the remaining waves; nothing is finalized when the run ends over budget.
    Continue,
}

impl OnFailure {
    /// The value as written in plans.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Rollback => "rollback",
            OnFailure::Leave => "leave",
            OnFailure::Continue => "continue",
        }
    }
}

/// What a run does once every service is migrated and the cross-service checks passed.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Finalize {
    /// The agents drop their backups at once (the default).
    #[default]
    Auto,
    /// The run stops `awaiting_finalize`, every backup kept, until `flotilla finalize RUN` or
    /// `flotilla rollback RUN` decides: production can be watched first.
    Manual,
}

impl Finalize {
    /// True for the default, which run records leave out.
    pub fn is_auto(&self) -> bool {
        *self == Finalize::Auto
    }
}

/// What happens to one service (every instance of it).
#[derive(Debug, Clone)]
pub struct ServicePlan {
    pub name: ServiceName,
    pub steps: Vec<Step>,
    /// Checks after the migration; none means the agent's configured health check.
    pub health: Vec<HttpCheck>,
    pub gates: Gates,
    /// What must hold before anything changes.
    pub preconditions: Vec<Precondition>,
    /// Functional checks after the health checks.
    pub checks: Vec<Check>,
    /// Measured workloads, gated on regression against the baseline.
    pub workloads: Vec<Workload>,
    /// Services that must be migrated in an earlier wave.
    pub depends_on: Vec<ServiceName>,
    /// This service's own `command_timeout`.
    pub command_timeout: Duration,
    /// Its own keys of the cross-service stage, in place of `[cross_service]`'s.
    pub cross_service: Option<CrossServiceOverride>,
}

/// One wave: agents migrated together, at most `max_parallel` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Wave {
    pub name: String,
    /// The services whose agents this wave takes (by name, `size`, or as the rest); empty for
    /// a wave given by `selector`.
    pub services: Vec<ServiceName>,
    /// The agents this wave takes, by their labels: every agent of the plan's services that
    /// matches it and no earlier wave took.
    pub selector: Option<Selector>,
    /// A count, or a share of the wave's agents (rounded up, at least 1); `None`: no cap.
    pub max_parallel: Option<Amount>,
    /// Set by [`place`] once the agents are known: exactly the agents of this wave, in order.
    pub placed: Option<Placed>,
    /// What the run does once this wave succeeded, before the next wave starts.
    pub pause: Option<Pause>,
}

/// The agents of one wave, as [`place`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub targets: Vec<(ServiceName, InstanceId)>,
    /// The operator's selector (`flotilla migrate -l`), which every agent of the run matched.
    pub limit: Option<Selector>,
}

/// The file as written, with the positions of the keys that rules talk about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    command_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    on_failure: OnFailure,
    #[serde(default)]
    failure_budget: Option<Spanned<Amount>>,
    #[serde(default)]
    max_parallel: Option<Spanned<Amount>>,
    #[serde(default)]
    finalize: Finalize,
    #[serde(default)]
    bake_health_every: Option<Spanned<HumanDuration>>,
    #[serde(rename = "step", default)]
    default_steps: Vec<Step>,
    #[serde(rename = "health", default)]
    default_health: Vec<HttpCheck>,
    #[serde(rename = "gates", default)]
    default_gates: Gates,
    #[serde(rename = "precondition", default)]
    default_preconditions: Vec<Precondition>,
    #[serde(rename = "check", default)]
    default_checks: Vec<Check>,
    #[serde(rename = "workload", default)]
    default_workloads: Vec<Workload>,
    #[serde(rename = "wave", default)]
    waves: Vec<RawWave>,
    #[serde(rename = "service", default)]
    services: Vec<RawService>,
    #[serde(default)]
    cross_service: Option<CrossService>,
    #[serde(default)]
    correlation: CorrelationPolicy,
    #[serde(default)]
    analysis: Option<analysis::RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: Spanned<String>,
    #[serde(default)]
    services: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    size: Option<Spanned<Amount>>,
    #[serde(default)]
    selector: Option<Spanned<String>>,
    #[serde(default)]
    max_parallel: Option<Spanned<Amount>>,
    #[serde(default)]
    pause: Option<Spanned<String>>,
    #[serde(default)]
    analysis: Vec<analysis::RawGate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<ServiceName>,
    #[serde(rename = "step", default)]
    steps: Vec<Step>,
    #[serde(default)]
    health: Vec<HttpCheck>,
    #[serde(default)]
    gates: Option<Gates>,
    #[serde(rename = "precondition", default)]
    preconditions: Vec<Precondition>,
    #[serde(rename = "check", default)]
    checks: Vec<Check>,
    #[serde(rename = "workload", default)]
    workloads: Vec<Workload>,
    #[serde(default)]
    depends_on: Vec<Spanned<String>>,
    #[serde(default)]
    command_timeout: Option<Spanned<HumanDuration>>,
    #[serde(default)]
    cross_service: Option<Spanned<CrossServiceOverride>>,
}

/// A duration written the humantime way (`"90s"`, `"2m"`).
#[derive(Debug, Clone, Copy)]
struct HumanDuration(Duration);

/// A broken rule: where (a byte range of the text and the key's name) and why.
#[derive(Debug)]
struct RuleError {
    span: Option<Range<usize>>,
    key: String,
    reason: String,
}

/// How often a bake checks the migrated services' health unless the plan says otherwise.
const DEFAULT_BAKE_HEALTH_EVERY: Duration = Duration::from_secs(10);

/// The shortest `command_timeout` accepted.
const MIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

fn default_command_timeout() -> Duration {
    Duration::from_secs(120)
}

// === impl Plan ===

impl Plan {
    /// Reads and checks the plan at `path`.
    pub fn load(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string())
    }

    /// Parses and checks plan text.
    pub fn parse(text: &str) -> Result<Self, PlanError> {
        Self::parse_named(text, "(text)")
    }

    /// Parses and checks plan text; errors name it `path`.
    pub fn parse_named(text: &str, path: &str) -> Result<Self, PlanError> {
        let raw: RawPlan = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        Self::from_raw(raw)
            .and_then(|plan| fields::check(text).map(|()| plan))
            .and_then(|plan| correlation::check(&plan).map(|()| plan))
            .map_err(|e| PlanError::Rule {
                path: path.to_owned(),
                at: match &e.span {
                    Some(span) => format!("line {}, key {}: ", line_of(text, span.start), e.key),
                    None if e.key.is_empty() => String::new(),
                    None => format!("key {}: ", e.key),
                },
                reason: e.reason,
            })
    }

    fn from_raw(raw: RawPlan) -> Result<Self, RuleError> {
        let command_timeout = match &raw.command_timeout {
            Some(t) => checked_timeout(t, "command_timeout")?,
            None => default_command_timeout(),
        };
        let max_parallel = raw
            .max_parallel
            .as_ref()
            .map(|m| checked_parallel(m, "max_parallel"))
            .transpose()?;
        if raw.services.is_empty() {
            return Err(RuleError::plain("the plan names no [[service]]"));
        }
        let mut services = raw
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| services::service_plan(&raw, i, s, command_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        services::link_dependencies(&raw.services, &mut services)?;
        if let Some(budget) = &raw.failure_budget
            && let Amount::Percent(p) = budget.get_ref()
            && !(0.0..=100.0).contains(p)
        {
            return Err(RuleError::at(
                budget,
                "failure_budget".into(),
                "a percentage must be between 0% and 100%".into(),
            ));
        }
        let overrides: Vec<_> = raw
            .services
            .iter()
            .map(|s| (s.name.get_ref(), s.cross_service.as_ref()))
            .collect();
        cross_service::check(raw.cross_service.as_ref(), &overrides)?;
        let waves = waves::resolve(&raw, &services, max_parallel)?;
        let gates: Vec<_> = raw
            .waves
            .iter()
            .map(|w| (w.name.get_ref().as_str(), w.analysis.as_slice()))
            .collect();
        let analysis = analysis::resolve(raw.analysis.as_ref(), &gates)?;
        Ok(Plan {
            name: raw.name,
            description: raw.description,
            command_timeout,
            on_failure: raw.on_failure,
            failure_budget: raw
                .failure_budget
                .map(Spanned::into_inner)
                .unwrap_or(Amount::Count(0)),
            max_parallel,
            services,
            waves,
            cross_service: raw.cross_service,
            finalize: raw.finalize,
            correlation: raw.correlation,
            bake_health_every: raw
                .bake_health_every
                .as_ref()
                .map(|t| checked_timeout(t, "bake_health_every"))
                .transpose()?
                .unwrap_or(DEFAULT_BAKE_HEALTH_EVERY),
            analysis,
        })
    }

    /// The plan of service `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&ServicePlan> {
        self.services.iter().find(|s| &s.name == name)
    }

    /// The failures tolerated among `targets` agents.
    pub fn allowed_failures(&self, targets: usize) -> usize {
        self.failure_budget.of(targets, false)
    }
}

fn or_default<T: Clone>(own: &[T], plan: &[T]) -> Vec<T> {
    if own.is_empty() {
        plan.to_vec()
    } else {
        own.to_vec()
    }
}

fn checked_timeout(t: &Spanned<HumanDuration>, key: &str) -> Result<Duration, RuleError> {
    let value = t.get_ref().0;
    if value < MIN_COMMAND_TIMEOUT {
        return Err(RuleError::at(
            t,
            key.to_owned(),
            "command_timeout must be at least 1s".into(),
        ));
    }
    Ok(value)
}

/// A cap of at least one agent: a count ≥ 1, or a share above 0% (of a wave's agents,
/// rounded up, at least 1).
fn checked_parallel(m: &Spanned<Amount>, key: &str) -> Result<Amount, RuleError> {
    let zero = match *m.get_ref() {
        Amount::Count(n) => n == 0,
        Amount::Percent(p) => p <= 0.0,
    };
    if zero {
        return Err(RuleError::at(
            m,
            key.to_owned(),
            "max_parallel must be at least 1, or a share above 0% (leave it out for no cap)".into(),
        ));
    }
    Ok(*m.get_ref())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |before| before.matches('\n').count())
        + 1
}

// === impl RuleError ===

impl RuleError {
    fn at<T>(spanned: &Spanned<T>, key: String, reason: String) -> Self {
        Self {
            span: Some(spanned.span()),
            key,
            reason,
        }
    }

    /// The error of a fleet-wide key that cannot apply to service `name`.
    fn for_service(mut self, name: &ServiceName) -> Self {
        self.reason = format!("for service {name}: {}", self.reason);
        self
    }

    fn plain(reason: &str) -> Self {
        Self {
            span: None,
            key: String::new(),
            reason: reason.to_owned(),
        }
    }
}

// === impl HumanDuration ===

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(HumanDuration)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

// === impl Wave ===

impl Wave {
    /// How many agents of this wave migrate at once: a share is of its placed agents (of its
    /// services before [`place`]), rounded up, at least 1. `None`: no cap.
    pub fn cap(&self) -> Option<u32> {
        let members = match &self.placed {
            Some(placed) => placed.targets.len(),
            None => self.services.len(),
        };
        self.cap_for(members)
    }

    /// How many of `agents` agents migrate at once (a share rounded up, at least 1).
    pub fn cap_for(&self, agents: usize) -> Option<u32> {
        self.max_parallel.map(|m| cap_of(m, agents))
    }

    /// Whether the agent `service`/`instance` is in this wave: one of its placed agents, or
    /// before [`place`], an agent of one of its services.
    pub fn takes(&self, service: &ServiceName, instance: &InstanceId) -> bool {
        match &self.placed {
            Some(placed) => placed
                .targets
                .iter()
                .any(|(s, i)| s == service && i == instance),
            None => self.services.contains(service),
        }
    }
}

/// `amount` of `members` agents as a cap: rounded up, at least 1.
fn cap_of(amount: Amount, members: usize) -> u32 {
    u32::try_from(amount.of(members, true).max(1)).unwrap_or(u32::MAX)
}

/// Services by name → their index in the plan, for wave resolution.
type ServiceIndex = BTreeMap<ServiceName, usize>;

#[cfg(test)]
mod tests;
