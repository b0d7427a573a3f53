//! Resolving waves: explicit `[[wave]]` tables (named services, a `size`, a `selector`, or "the
//! rest"), or without them, an order derived from `depends_on` (one wave per dependency level).
//! A wave given by a selector takes agents, not services: which ones is known only once the
//! agents answered ([`super::place`]).

use std::collections::BTreeSet;

use flotilla_schemas::ServiceName;
use toml::Spanned;

use super::{
    Amount, Pause, PauseError, RawPlan, RawWave, RuleError, ServiceIndex, ServicePlan, Wave,
    checked_parallel,
};
use crate::selector::Selector;

/// The name of the wave that takes the services no `[[wave]]` placed.
pub(super) const IMPLICIT_WAVE: &str = "rest";

/// Which wave each service is in (an index into `raw.waves`), `None` while unplaced.
type Assignment = Vec<Option<usize>>;

/// Resolves the plan's waves; every service ends in exactly one, after its dependencies.
pub(super) fn resolve(
    raw: &RawPlan,
    services: &[ServicePlan],
    max_parallel: Option<Amount>,
) -> Result<Vec<Wave>, RuleError> {
    let index: ServiceIndex = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.clone(), i))
        .collect();
    let (order, levels) = dependency_order(raw, services, &index)?;
    if raw.waves.is_empty() {
        return Ok(waves_by_level(services, &order, &levels, max_parallel));
    }
    let (names, mut assigned) = assign_named_services(raw, services, &index)?;
    assign_sized_waves(raw, services.len(), &order, &mut assigned)?;
    let waves = collect_waves(raw, services, &order, &assigned, &names, max_parallel)?;
    check_dependencies_come_first(raw, services, &waves)?;
    Ok(waves)
}

/// Without `[[wave]]` tables: one wave per dependency level (`level-N`), or a single wave `all`
/// when nothing depends on anything.
fn waves_by_level(
    services: &[ServicePlan],
    order: &[usize],
    levels: &[usize],
    max_parallel: Option<Amount>,
) -> Vec<Wave> {
    let depth = levels.iter().copied().max().unwrap_or(0);
    let has_dependencies = services.iter().any(|s| !s.depends_on.is_empty());
    (0..=depth)
        .map(|level| Wave {
            name: if has_dependencies {
                format!("level-{}", level + 1)
            } else {
                "all".into()
            },
            services: order
                .iter()
                .filter(|&&i| levels[i] == level)
                .map(|&i| services[i].name.clone())
                .collect(),
            selector: None,
            max_parallel,
            placed: None,
            pause: None,
        })
        .collect()
}

/// Checks each wave's own fields and places the services the waves name; returns the wave
/// names and the placement so far.
fn assign_named_services(
    raw: &RawPlan,
    services: &[ServicePlan],
    index: &ServiceIndex,
) -> Result<(BTreeSet<String>, Assignment), RuleError> {
    let mut names = BTreeSet::new();
    let mut assigned: Assignment = vec![None; services.len()];
    for (w, wave) in raw.waves.iter().enumerate() {
        check_wave(w, wave, &mut names, services.len())?;
        for (j, entry) in wave.services.iter().flatten().enumerate() {
            let key = format!("wave[{w}].services[{j}]");
            let found = ServiceName::parse(entry.get_ref().as_str())
                .ok()
                .and_then(|n| index.get(&n).copied());
            let Some(i) = found else {
                return Err(RuleError::at(
                    entry,
                    key,
                    format!("{:?} is not a [[service]] of this plan", entry.get_ref()),
                ));
            };
            if let Some(other) = assigned[i] {
                return Err(RuleError::at(
                    entry,
                    key,
                    format!(
                        "service {} is already in wave {:?}",
                        services[i].name,
                        raw.waves[other].name.get_ref()
                    ),
                ));
            }
            assigned[i] = Some(w);
        }
    }
    Ok((names, assigned))
}

/// Wave `w` has a name of its own and at most one of `services` and a positive `size`.
fn check_wave(
    w: usize,
    wave: &RawWave,
    names: &mut BTreeSet<String>,
    service_count: usize,
) -> Result<(), RuleError> {
    let name = wave.name.get_ref();
    if name.trim().is_empty() {
        return Err(RuleError::at(
            &wave.name,
            format!("wave[{w}].name"),
            "a wave needs a name".into(),
        ));
    }
    if !names.insert(name.clone()) {
        return Err(RuleError::at(
            &wave.name,
            format!("wave[{w}].name"),
            format!("wave {name:?} appears twice"),
        ));
    }
    if let (Some(_), Some(size)) = (&wave.services, &wave.size) {
        return Err(RuleError::at(
            size,
            format!("wave[{w}].size"),
            "a wave takes either `services` or `size`, not both".into(),
        ));
    }
    if let Some(selector) = &wave.selector {
        if wave.services.is_some() || wave.size.is_some() {
            return Err(RuleError::at(
                selector,
                format!("wave[{w}].selector"),
                "a wave takes one of `services`, `size` and `selector` (to pick some agents of one service, select by it: \"service=ingest,tier=canary\")".into(),
            ));
        }
        parse_selector(w, selector)?;
    }
    if let Some(size) = &wave.size
        && size.get_ref().of(service_count, true) == 0
    {
        return Err(RuleError::at(
            size,
            format!("wave[{w}].size"),
            "a wave's size must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Fills the waves given by `size` (and a last wave with neither, which takes the rest) from
/// the unplaced services, in dependency order.
fn assign_sized_waves(
    raw: &RawPlan,
    service_count: usize,
    order: &[usize],
    assigned: &mut Assignment,
) -> Result<(), RuleError> {
    let last = raw.waves.len() - 1;
    for (w, wave) in raw.waves.iter().enumerate() {
        let take = match (&wave.services, &wave.size) {
            (Some(_), _) => continue,
            (None, None) if wave.selector.is_some() => continue,
            (None, Some(size)) => size.get_ref().of(service_count, true),
            (None, None) if w == last => usize::MAX,
            (None, None) => {
                return Err(RuleError::at(
                    &wave.name,
                    format!("wave[{w}]"),
                    format!(
                        "wave {:?} has neither `services` nor `size`; only the last wave may take the rest",
                        wave.name.get_ref()
                    ),
                ));
            }
        };
        let chosen: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| assigned[i].is_none())
            .take(take)
            .collect();
        for i in chosen {
            assigned[i] = Some(w);
        }
    }
    Ok(())
}

/// The waves as placed, plus an implicit last wave for services none took; empty waves are
/// left out.
fn collect_waves(
    raw: &RawPlan,
    services: &[ServicePlan],
    order: &[usize],
    assigned: &Assignment,
    names: &BTreeSet<String>,
    max_parallel: Option<Amount>,
) -> Result<Vec<Wave>, RuleError> {
    let mut waves: Vec<Wave> = Vec::new();
    for (w, wave) in raw.waves.iter().enumerate() {
        let parallel = wave
            .max_parallel
            .as_ref()
            .map(|m| checked_parallel(m, &format!("wave[{w}].max_parallel")))
            .transpose()?
            .or(max_parallel);
        let selector = wave
            .selector
            .as_ref()
            .map(|s| parse_selector(w, s))
            .transpose()?;
        let pause = wave.pause.as_ref().map(|p| parse_pause(w, p)).transpose()?;
        waves.push(Wave {
            name: wave.name.get_ref().clone(),
            services: order
                .iter()
                .filter(|&&i| assigned[i] == Some(w))
                .map(|&i| services[i].name.clone())
                .collect(),
            selector,
            max_parallel: parallel,
            placed: None,
            pause,
        });
    }
    let rest: Vec<ServiceName> = order
        .iter()
        .filter(|&&i| assigned[i].is_none())
        .map(|&i| services[i].name.clone())
        .collect();
    if !rest.is_empty() {
        waves.push(Wave {
            name: if names.contains(IMPLICIT_WAVE) {
                format!("{IMPLICIT_WAVE}-{}", waves.len() + 1)
            } else {
                IMPLICIT_WAVE.into()
            },
            services: rest,
            selector: None,
            max_parallel,
            placed: None,
            pause: None,
        });
    }
    // A selector's wave is filled from the agents later; the others are known now.
    waves.retain(|w| w.selector.is_some() || !w.services.is_empty());
    Ok(waves)
}

/// Wave `w`'s selector, parsed; the error names its line, the column and the reason.
fn parse_selector(w: usize, text: &Spanned<String>) -> Result<Selector, RuleError> {
    Selector::parse(text.get_ref()).map_err(|e| {
        RuleError::at(
            text,
            format!("wave[{w}].selector"),
            format!("column {}: {}", e.column, e.problem),
        )
    })
}

fn parse_pause(w: usize, text: &Spanned<String>) -> Result<Pause, RuleError> {
    text.get_ref()
        .parse()
        .map_err(|e: PauseError| RuleError::at(text, format!("wave[{w}].pause"), e.to_string()))
}

/// Every service's dependencies are in earlier waves than it.
fn check_dependencies_come_first(
    raw: &RawPlan,
    services: &[ServicePlan],
    waves: &[Wave],
) -> Result<(), RuleError> {
    let wave_of = |name: &ServiceName| waves.iter().position(|w| w.services.contains(name));
    for (i, s) in raw.services.iter().enumerate() {
        for (j, dep) in s.depends_on.iter().enumerate() {
            let dep_name = &services[i].depends_on[j];
            let (mine, theirs) = (wave_of(&services[i].name), wave_of(dep_name));
            if theirs >= mine {
                return Err(RuleError::at(
                    dep,
                    format!("service[{i}].depends_on[{j}]"),
                    format!(
                        "service {} depends on {dep_name}, so {dep_name} must be in an earlier wave (it is in wave {:?}, {} in {:?})",
                        services[i].name,
                        theirs.map_or("?", |w| waves[w].name.as_str()),
                        services[i].name,
                        mine.map_or("?", |w| waves[w].name.as_str()),
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The services in dependency order (plan order among equals), and each one's level: 0 for no
/// dependencies, else one more than its deepest dependency.
fn dependency_order(
    raw: &RawPlan,
    services: &[ServicePlan],
    index: &ServiceIndex,
) -> Result<(Vec<usize>, Vec<usize>), RuleError> {
    let mut levels: Vec<Option<usize>> = vec![None; services.len()];
    let mut order = Vec::new();
    while order.len() < services.len() {
        let ready: Vec<usize> = (0..services.len())
            .filter(|&i| levels[i].is_none())
            .filter(|&i| {
                services[i]
                    .depends_on
                    .iter()
                    .all(|d| levels[index[d]].is_some())
            })
            .collect();
        let Some(_) = ready.first() else {
            let stuck = (0..services.len())
                .find(|&i| levels[i].is_none())
                .unwrap_or(0);
            let cycle: Vec<String> = (0..services.len())
                .filter(|&i| levels[i].is_none())
                .map(|i| services[i].name.to_string())
                .collect();
            let reason = format!("depends_on forms a cycle between {}", cycle.join(", "));
            return Err(match raw.services[stuck].depends_on.first() {
                Some(dep) => RuleError::at(dep, format!("service[{stuck}].depends_on"), reason),
                None => RuleError::plain(&reason),
            });
        };
        for &i in &ready {
            let level = services[i]
                .depends_on
                .iter()
                .filter_map(|d| levels[index[d]])
                .map(|l| l + 1)
                .max()
                .unwrap_or(0);
            levels[i] = Some(level);
            order.push(i);
        }
    }
    // Plan order within a level keeps the order people wrote.
    let levels: Vec<usize> = levels.into_iter().map(|l| l.unwrap_or(0)).collect();
    order.sort_by_key(|&i| (levels[i], i));
    Ok((order, levels))
}
