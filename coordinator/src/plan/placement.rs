//! Placing agents in waves, once they answered: each target goes to the first wave that takes
//! it, a wave given by a selector taking the agents its selector matches, any other wave the
//! agents of its services. Shares of `max_parallel` are then counted against each wave's agents.

use std::collections::BTreeMap;

use flotilla_schemas::{InstanceId, Presence, ServiceName};

use super::{Amount, Placed, Plan, Wave, cap_of};
use crate::selector::Selector;

/// One target, with what selectors look at.
type Agent<'a> = (&'a ServiceName, &'a InstanceId, Option<&'a Presence>);

/// The waves of `plan` with the agents `targets` placed in them (plan order of services, then
/// instance order, within a wave). `agents` are the live agents, whose labels the wave
/// selectors read; `limit` is the operator's selector, which every target already matched.
/// Refused, with every problem named: a wave selector that matches none of the targets, and a
/// target placed in a wave that does not come after every wave holding a target of a service
/// it depends on. Waves left with no agent are dropped.
pub fn place(
    plan: &Plan,
    targets: &[(ServiceName, InstanceId)],
    agents: &[Presence],
    limit: Option<&Selector>,
) -> Result<Vec<Wave>, Vec<String>> {
    let order: BTreeMap<&ServiceName, usize> = plan
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (&s.name, i))
        .collect();
    let mut sorted: Vec<Agent<'_>> = targets
        .iter()
        .map(|(s, i)| {
            let presence = agents.iter().find(|a| &a.service == s && &a.instance == i);
            (s, i, presence)
        })
        .collect();
    sorted.sort_by_key(|(s, i, _)| (order.get(s).copied(), i.as_str().to_owned()));
    let mut problems = unmatched_selectors(plan, &sorted, limit);
    if let Some(limit) = limit {
        problems.extend(correlation_left_out(plan, &sorted, limit));
    }
    let wave_of: Vec<Option<usize>> = sorted.iter().map(|a| first_wave(plan, a)).collect();
    problems.extend(dependency_problems(plan, &sorted, &wave_of));
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut waves: Vec<Wave> = plan.waves.clone();
    for (w, wave) in waves.iter_mut().enumerate() {
        let members: Vec<(ServiceName, InstanceId)> = sorted
            .iter()
            .zip(&wave_of)
            .filter(|(_, placed)| **placed == Some(w))
            .map(|((s, i, _), _)| ((*s).clone(), (*i).clone()))
            .collect();
        wave.max_parallel = wave
            .max_parallel
            .map(|m| Amount::Count(cap_of(m, members.len())));
        wave.placed = Some(Placed {
            targets: members,
            limit: limit.cloned(),
        });
    }
    waves.retain(|w| w.placed.as_ref().is_some_and(|p| !p.targets.is_empty()));
    Ok(waves)
}

/// The first wave that takes `agent`: its selector matches it, or it holds its service.
fn first_wave(plan: &Plan, (service, _, presence): &Agent<'_>) -> Option<usize> {
    plan.waves.iter().position(|wave| match &wave.selector {
        Some(selector) => presence.is_some_and(|p| selector.matches(p)),
        None => wave.services.contains(service),
    })
}

/// A wave whose selector matches none of the run's agents: a canary that selects nothing is
/// a mistake to stop on, not a wave to skip.
fn unmatched_selectors(plan: &Plan, agents: &[Agent<'_>], limit: Option<&Selector>) -> Vec<String> {
    plan.waves
        .iter()
        .filter_map(|wave| {
            let selector = wave.selector.as_ref()?;
            let matched = agents
                .iter()
                .any(|(_, _, p)| p.is_some_and(|p| selector.matches(p)));
            (!matched).then(|| {
                format!(
                    "wave {:?}: its selector \"{selector}\" matches none of the {} agent(s) of this plan's services{}",
                    wave.name,
                    agents.len(),
                    limit.map_or_else(String::new, |l| format!(" that \"{l}\" selects")),
                )
            })
        })
        .collect()
}

/// The log-correlation checks that need an agent of a service the operator's selector left
/// out of the run: they could only fail once every service is migrated, and roll it back.
fn correlation_left_out(plan: &Plan, agents: &[Agent<'_>], limit: &Selector) -> Vec<String> {
    let checks = plan.cross_service.iter().flat_map(|c| &c.log_correlation);
    let mut problems = Vec::new();
    for (n, check) in checks.enumerate() {
        let needed = std::iter::once(&check.request.service).chain(&check.expect_in_logs);
        for service in needed {
            if !agents.iter().any(|(s, _, _)| *s == service) {
                problems.push(format!(
                    "log correlation check {} needs an agent of {service}, and \"{limit}\" selects none: select {service} too, or run without that check",
                    n + 1
                ));
            }
        }
    }
    problems
}

/// Targets that would migrate in the same wave as, or before, an agent of a service they
/// depend on.
fn dependency_problems(
    plan: &Plan,
    agents: &[Agent<'_>],
    wave_of: &[Option<usize>],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (a, (service, instance, _)) in agents.iter().enumerate() {
        let Some(service_plan) = plan.service(service) else {
            continue;
        };
        for dep in &service_plan.depends_on {
            let late = agents
                .iter()
                .zip(wave_of)
                .filter(|((s, _, _), w)| *s == dep && **w >= wave_of[a])
                .map(|((s, i, _), _)| format!("{s}/{i}"))
                .next();
            if let Some(late) = late {
                problems.push(format!(
                    "{service}/{instance} is in wave {:?}, but it depends on {dep}, and {late} is not in an earlier wave",
                    wave_name(plan, wave_of[a]),
                ));
            }
        }
    }
    problems
}

fn wave_name(plan: &Plan, w: Option<usize>) -> &str {
    w.and_then(|w| plan.waves.get(w))
        .map_or("?", |w| w.name.as_str())
}

#[cfg(test)]
mod tests;
