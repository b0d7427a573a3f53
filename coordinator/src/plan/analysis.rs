//! `[analysis]` and `[[wave.analysis]]`: gates a wave passes only if the metrics the fleet
//! already has say so, read from Prometheus by the coordinator. The queries take the run's own
//! placeholders (`${run:id}`, `${service:name}`), read with the plan's placeholder syntax
//! (`flotilla_schemas::placeholder`); the wave is not a placeholder: each query is written in
//! its wave.

use flotilla_schemas::Inconclusive;
use flotilla_schemas::placeholder::{self, Piece, RunVar};
use serde::Deserialize;
use toml::Spanned;

use super::{Amount, RuleError};

/// `[analysis]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnalysis {
    prometheus: Spanned<String>,
}

/// One `[[wave.analysis]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    name: Spanned<String>,
    query: Spanned<String>,
    #[serde(default)]
    max: Option<Spanned<f64>>,
    #[serde(default)]
    max_increase: Option<Spanned<Amount>>,
    #[serde(default)]
    inconclusive: Inconclusive,
}

/// Where Prometheus is and every wave's gates.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    /// The base URL of Prometheus' HTTP API (`http://host:9090`).
    pub prometheus: String,
    pub gates: Vec<AnalysisGate>,
}

/// One gate of one wave.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisGate {
    /// The wave it belongs to.
    pub wave: String,
    pub name: String,
    /// The PromQL query as written, with its placeholders.
    pub query: String,
    pub threshold: Threshold,
    /// What no data (or no Prometheus) means.
    pub inconclusive: Inconclusive,
}

/// What the query's value must do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Stay at or below this value.
    Max(f64),
    /// Not rise by more than this share (0.1: 10 %) against the same query before the wave.
    MaxIncrease(f64),
}

/// Checks `[analysis]` and the gates of `waves` (each wave's name and its gates).
pub(super) fn resolve(
    raw: Option<&RawAnalysis>,
    waves: &[(&str, &[RawGate])],
) -> Result<Option<Analysis>, RuleError> {
    let mut gates = Vec::new();
    for (w, (wave, list)) in waves.iter().enumerate() {
        for (i, gate) in list.iter().enumerate() {
            gates.push(checked_gate(
                wave,
                gate,
                &format!("wave[{w}].analysis[{i}]"),
            )?);
        }
    }
    let Some(raw) = raw else {
        return match gates.first() {
            None => Ok(None),
            Some(gate) => Err(RuleError::plain(&format!(
                "wave {:?} has [[wave.analysis]] gates but the plan has no [analysis] prometheus = \"http://…\"",
                gate.wave
            ))),
        };
    };
    let url = raw.prometheus.get_ref().trim_end_matches('/');
    let http = url.starts_with("http://") || url.starts_with("https://");
    if !http || url.contains("${") {
        return Err(RuleError::at(
            &raw.prometheus,
            "analysis.prometheus".into(),
            format!("{url:?} is not an http:// or https:// URL (Prometheus' HTTP API)"),
        ));
    }
    Ok(Some(Analysis {
        prometheus: url.to_owned(),
        gates,
    }))
}

/// One gate: a name, a query with only the run's placeholders, exactly one threshold.
fn checked_gate(wave: &str, gate: &RawGate, key: &str) -> Result<AnalysisGate, RuleError> {
    if gate.name.get_ref().trim().is_empty() {
        return Err(RuleError::at(
            &gate.name,
            format!("{key}.name"),
            "an analysis gate needs a name".into(),
        ));
    }
    let query = gate.query.get_ref();
    if query.trim().is_empty() {
        return Err(RuleError::at(
            &gate.query,
            format!("{key}.query"),
            "an analysis gate needs a PromQL query".into(),
        ));
    }
    check_placeholders(query)
        .map_err(|reason| RuleError::at(&gate.query, format!("{key}.query"), reason))?;
    let threshold = match (&gate.max, &gate.max_increase) {
        (Some(max), None) => Threshold::Max(*max.get_ref()),
        (None, Some(increase)) => match increase.get_ref() {
            Amount::Percent(p) if *p >= 0.0 => Threshold::MaxIncrease(p / 100.0),
            _ => {
                return Err(RuleError::at(
                    increase,
                    format!("{key}.max_increase"),
                    "max_increase is a percentage, like \"10%\"".into(),
                ));
            }
        },
        (Some(_), Some(increase)) => {
            return Err(RuleError::at(
                increase,
                format!("{key}.max_increase"),
                "an analysis gate takes either `max` or `max_increase`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(RuleError::at(
                &gate.name,
                key.to_owned(),
                "an analysis gate needs `max` (a value) or `max_increase` (a percentage)".into(),
            ));
        }
    };
    Ok(AnalysisGate {
        wave: wave.to_owned(),
        name: gate.name.get_ref().clone(),
        query: query.clone(),
        threshold,
        inconclusive: gate.inconclusive,
    })
}

/// The placeholders a query may hold: `${run:id}`, `${service:name}` (and `$${`).
fn check_placeholders(query: &str) -> Result<(), String> {
    for piece in placeholder::parse(query).map_err(|e| e.to_string())? {
        match piece {
            Piece::Text(_) | Piece::Literal => {}
            Piece::Run(RunVar::Id | RunVar::ServiceName, None) => {}
            _ => {
                return Err(
                    "an analysis query takes only ${run:id} and ${service:name} (the coordinator renders it; agent variables and secrets are unknown to it)"
                        .into(),
                );
            }
        }
    }
    Ok(())
}

/// One gate rendered for one service of its wave (or for the wave).
#[derive(Debug, Clone)]
pub struct Rendered<'g> {
    pub gate: &'g AnalysisGate,
    pub service: Option<String>,
    /// The query as sent.
    pub query: String,
}

impl Analysis {
    /// The gates of wave `wave`, each rendered once per service of `services` when it names
    /// `${service:name}`, else once.
    pub fn queries(&self, wave: &str, run_id: &str, services: &[String]) -> Vec<Rendered<'_>> {
        let mut out = Vec::new();
        for gate in self.gates.iter().filter(|g| g.wave == wave) {
            if gate.per_service() {
                out.extend(services.iter().map(|s| Rendered {
                    gate,
                    service: Some(s.clone()),
                    query: gate.render(run_id, Some(s)),
                }));
            } else {
                out.push(Rendered {
                    gate,
                    service: None,
                    query: gate.render(run_id, None),
                });
            }
        }
        out
    }
}

impl AnalysisGate {
    /// Whether the gate is one query per service of its wave (`${service:name}`), or one per wave.
    pub fn per_service(&self) -> bool {
        placeholder::parse(&self.query)
            .is_ok_and(|p| p.contains(&Piece::Run(RunVar::ServiceName, None)))
    }

    /// The query with the run's values in: `service` for `${service:name}`.
    pub fn render(&self, run_id: &str, service: Option<&str>) -> String {
        let Ok(pieces) = placeholder::parse(&self.query) else {
            return self.query.clone();
        };
        pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(t) => t,
                Piece::Literal => "${",
                Piece::Run(RunVar::Id, _) => run_id,
                Piece::Run(RunVar::ServiceName, _) => service.unwrap_or(""),
                _ => "",
            })
            .collect()
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Max(max) => write!(f, "<= {max}"),
            Threshold::MaxIncrease(share) => write!(f, "rise <= {}%", share * 100.0),
        }
    }
}
