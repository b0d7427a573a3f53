//! A plan's services: each with the plan-level defaults filled in, and their dependencies
//! linked once every service is known.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_schemas::ServiceName;
use toml::Spanned;

use super::{RawPlan, RawService, RuleError, ServicePlan, checked_timeout, or_default};

/// Service `i` of the plan, with the plan-level defaults filled in; its dependencies are linked
/// once every service is known ([`link_dependencies`]).
pub(super) fn service_plan(
    raw: &RawPlan,
    i: usize,
    s: &RawService,
    plan_timeout: Duration,
) -> Result<ServicePlan, RuleError> {
    let name = s.name.get_ref().clone();
    if raw.services[..i]
        .iter()
        .any(|earlier| *earlier.name.get_ref() == name)
    {
        return Err(RuleError::at(
            &s.name,
            format!("service[{i}].name"),
            format!("service {name} appears twice"),
        ));
    }
    let steps = or_default(&s.steps, &raw.default_steps);
    if steps.is_empty() {
        return Err(RuleError::at(
            &s.name,
            format!("service[{i}]"),
            format!("service {name} has no steps: give it [[service.step]] or the plan [[step]]"),
        ));
    }
    let command_timeout = match &s.command_timeout {
        Some(t) => checked_timeout(t, &format!("service[{i}].command_timeout"))?,
        None => plan_timeout,
    };
    Ok(ServicePlan {
        name,
        steps,
        health: or_default(&s.health, &raw.default_health),
        gates: s.gates.clone().unwrap_or_else(|| raw.default_gates.clone()),
        preconditions: or_default(&s.preconditions, &raw.default_preconditions),
        checks: or_default(&s.checks, &raw.default_checks),
        workloads: or_default(&s.workloads, &raw.default_workloads),
        depends_on: Vec::new(),
        command_timeout,
        cross_service: s.cross_service.clone().map(Spanned::into_inner),
    })
}

/// Fills in each service's `depends_on`: every name must be another service of the plan.
pub(super) fn link_dependencies(
    raw: &[RawService],
    services: &mut [ServicePlan],
) -> Result<(), RuleError> {
    let known: BTreeSet<ServiceName> = services.iter().map(|s| s.name.clone()).collect();
    for (i, s) in raw.iter().enumerate() {
        for (j, dep) in s.depends_on.iter().enumerate() {
            let key = format!("service[{i}].depends_on[{j}]");
            let found = ServiceName::parse(dep.get_ref().as_str())
                .ok()
                .filter(|d| known.contains(d));
            let Some(dep_name) = found else {
                return Err(RuleError::at(
                    dep,
                    key,
                    format!(
                        "service {} depends on {:?}, which is not a [[service]] of this plan",
                        s.name.get_ref(),
                        dep.get_ref()
                    ),
                ));
            };
            if &dep_name == s.name.get_ref() {
                return Err(RuleError::at(
                    dep,
                    key,
                    format!("service {dep_name} depends on itself"),
                ));
            }
            services[i].depends_on.push(dep_name);
        }
    }
    Ok(())
}
