//! The timeline and charts the HTML page's script draws: every command's phases on one time
//! axis (from the results' phases, which carry each phase's start, or from the progress events
//! agents older than live progress stored), the
//! waves around them, the moments worth a line (the fleet rollback, the finalize, the
//! cross-service checks), and every service's gates. Times are milliseconds from the run's start.

use std::collections::{HashMap, HashSet};

use flotilla_schemas::{CommandId, Phase, PhaseStatus, RunResult};
use serde::Serialize;
use time::OffsetDateTime;

use super::super::gate::{Gate, Unit};
use super::super::{RunReport, ServiceReport};
use crate::events::RunEvent;
use crate::store::{ActionKind, CommandRecord, RunRecord, TargetRecord, WaveRecord};

/// The page's data for its script: times in milliseconds from the run's start.
#[derive(Debug, Serialize)]
pub(super) struct PageData {
    pub(super) duration_ms: i64,
    pub(super) waves: Vec<WaveSpan>,
    pub(super) rows: Vec<Row>,
    pub(super) marks: Vec<Mark>,
    pub(super) charts: Vec<Chart>,
}

/// A wave: its rows and when its migrations ran.
#[derive(Debug, Serialize)]
pub(super) struct WaveSpan {
    pub(super) name: String,
    pub(super) status: &'static str,
    pub(super) start: Option<i64>,
    pub(super) end: Option<i64>,
    /// Indices into [`PageData::rows`].
    pub(super) rows: Vec<usize>,
}

/// One target on the timeline.
#[derive(Debug, Serialize)]
pub(super) struct Row {
    pub(super) target: String,
    pub(super) service: String,
    pub(super) status: &'static str,
    pub(super) bars: Vec<Bar>,
}

/// One phase of one command.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Bar {
    pub(super) phase: &'static str,
    /// The command: `migrate`, `rollback` or `finalize`.
    pub(super) kind: &'static str,
    pub(super) start: i64,
    pub(super) end: i64,
    /// `succeeded`, `failed`, `running` (no end seen), or `interrupted` (no end seen, but the
    /// command has a result).
    pub(super) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) detail: Option<String>,
}

/// A moment worth a line across the timeline.
#[derive(Debug, Serialize)]
pub(super) struct Mark {
    pub(super) at: i64,
    pub(super) label: String,
    pub(super) kind: &'static str,
}

/// One service's figures.
#[derive(Debug, Serialize)]
pub(super) struct Chart {
    pub(super) target: String,
    pub(super) service: String,
    pub(super) status: &'static str,
    pub(super) gates: Vec<ChartGate>,
}

/// One gate (or a bare measurement, without a limit).
#[derive(Debug, Serialize)]
pub(super) struct ChartGate {
    pub(super) name: String,
    /// The figures as the script shows them, written by the one gate renderer
    /// ([`super::super::gate`]): `before 55 ms`, `after 62 ms`, `limit ≤ 155 ms`.
    pub(super) text: ChartText,
    pub(super) before: f64,
    pub(super) after: Option<f64>,
    pub(super) limit: Option<f64>,
    pub(super) passed: Option<bool>,
    pub(super) higher_is_better: bool,
    pub(super) inconclusive: bool,
}

/// A chart's figures, in words with their unit.
#[derive(Debug, Serialize)]
pub(super) struct ChartText {
    /// [`Gate::verdict`], or `measured` for a figure without a gate.
    pub(super) verdict: &'static str,
    pub(super) before: String,
    pub(super) after: Option<String>,
    pub(super) limit: Option<String>,
}

/// The commands of the run being placed on the timeline.
struct Placing<'a> {
    record: &'a RunRecord,
    /// Which target and which kind of command every command ID is.
    commands: HashMap<CommandId, (usize, &'static str)>,
    /// Every target by `service/instance`, for the commands the record does not hold.
    by_name: HashMap<String, usize>,
    bars: Vec<Vec<Bar>>,
    /// The last moment seen.
    latest: i64,
}

// === impl Placing ===

impl<'a> Placing<'a> {
    fn new(report: &RunReport, record: &'a RunRecord) -> Self {
        let mut commands = HashMap::new();
        for (t, target) in record.targets.iter().enumerate() {
            for (kind, command) in commands_of(target) {
                commands.insert(command.command.command_id, (t, kind));
            }
        }
        let by_name = record
            .targets
            .iter()
            .enumerate()
            .map(|(t, target)| (format!("{}/{}", target.service, target.instance), t))
            .collect();
        let mut placing = Placing {
            record,
            commands,
            by_name,
            bars: vec![Vec::new(); record.targets.len()],
            latest: 0,
        };
        placing.latest = placing.rel(report.finished_at.unwrap_or(report.updated_at));
        placing
    }

    fn rel(&self, t: OffsetDateTime) -> i64 {
        (t - self.record.started_at).whole_milliseconds() as i64
    }

    /// The bars the stored progress events tell (agents older than live progress stored it);
    /// returns the commands they covered. The results of inspections (commands the record does
    /// not hold) are placed here too, from their phases, when no progress told them.
    fn place_events(&mut self, events: &[RunEvent]) -> HashSet<CommandId> {
        let mut open: HashMap<(CommandId, Phase), i64> = HashMap::new();
        let mut with_events = HashSet::new();
        let mut inspections = Vec::new();
        for event in events {
            self.latest = self.latest.max(self.rel(event.at()));
            let p = match event {
                RunEvent::Progress(p) => p,
                RunEvent::Result(r) => {
                    if !self.commands.contains_key(&r.command_id) {
                        inspections.push(r);
                    }
                    continue;
                }
            };
            // Commands the record does not hold are the cross-service stage's inspections.
            let Some((t, kind)) = self.commands.get(&p.command_id).copied().or_else(|| {
                let &t = self.by_name.get(&format!("{}/{}", p.service, p.instance))?;
                self.commands.insert(p.command_id, (t, "inspect"));
                Some((t, "inspect"))
            }) else {
                continue;
            };
            with_events.insert(p.command_id);
            let at = self.rel(p.at);
            match p.status {
                PhaseStatus::Started => {
                    open.insert((p.command_id, p.phase), at);
                }
                PhaseStatus::Succeeded | PhaseStatus::Failed => {
                    let begin = open.remove(&(p.command_id, p.phase)).unwrap_or_else(|| {
                        at - p.duration_ms.map_or(0, |d| i64::try_from(d).unwrap_or(0))
                    });
                    self.bars[t].push(Bar {
                        phase: p.phase.as_str(),
                        kind,
                        start: begin,
                        end: at,
                        status: phase_status(p.status),
                        detail: p.detail.clone(),
                    });
                }
            }
        }
        self.close(open);
        for r in inspections {
            let Some(&t) = self.by_name.get(&format!("{}/{}", r.service, r.instance)) else {
                continue;
            };
            if with_events.insert(r.command_id) {
                self.commands.insert(r.command_id, (t, "inspect"));
                let bars = bars_from_result(r, "inspect", self.rel(r.at), |at| self.rel(at));
                self.bars[t].extend(bars);
            }
        }
        with_events
    }

    /// Phases whose end never came: cut at their command's result, or still running.
    fn close(&mut self, open: HashMap<(CommandId, Phase), i64>) {
        let answered: HashMap<CommandId, i64> = self
            .record
            .commands()
            .filter_map(|c| Some((c.command.command_id, self.rel(c.result.as_ref()?.at))))
            .collect();
        for ((command_id, phase), begin) in open {
            if let Some(&(t, kind)) = self.commands.get(&command_id) {
                let end = answered.get(&command_id).copied();
                self.bars[t].push(Bar {
                    phase: phase.as_str(),
                    kind,
                    start: begin,
                    end: end.unwrap_or(self.latest).max(begin),
                    status: if end.is_some() {
                        "interrupted"
                    } else {
                        "running"
                    },
                    detail: None,
                });
            }
        }
    }

    /// Commands without stored progress (every command of an agent that streams progress
    /// live, or one whose events are gone): their results' phases, each from its start.
    fn place_results(&mut self, with_events: &HashSet<CommandId>) {
        for (t, target) in self.record.targets.iter().enumerate() {
            for (kind, command) in commands_of(target) {
                let Some(result) = &command.result else {
                    continue;
                };
                if !with_events.contains(&result.command_id) {
                    let end = self.rel(result.at);
                    let bars = bars_from_result(result, kind, end, |at| self.rel(at));
                    self.bars[t].extend(bars);
                }
            }
            self.bars[t].sort_by_key(|b| (b.start, b.end));
        }
    }
}

/// The page's data for `report`, drawn from `events` and, for commands without events, from the
/// phases their results carry.
pub(super) fn page_data(report: &RunReport, record: &RunRecord, events: &[RunEvent]) -> PageData {
    let mut placing = Placing::new(report, record);
    let with_events = placing.place_events(events);
    placing.place_results(&with_events);
    let rows: Vec<Row> = record
        .targets
        .iter()
        .zip(std::mem::take(&mut placing.bars))
        .zip(&report.services)
        .map(|((target, bars), service)| Row {
            target: format!("{}/{}", target.service, target.instance),
            service: target.service.to_string(),
            status: service.status.as_str(),
            bars,
        })
        .collect();
    let waves = record
        .waves
        .iter()
        .map(|w| wave_span(&placing, w, &rows))
        .collect();
    let marks = marks(&placing, &rows);
    let latest = rows
        .iter()
        .flat_map(|r| &r.bars)
        .map(|b| b.end)
        .fold(placing.latest, i64::max);
    PageData {
        duration_ms: latest.max(1),
        waves,
        rows,
        marks,
        charts: report.services.iter().map(chart).collect(),
    }
}

/// The migrate, rollback and finalize commands of `target`, those that exist.
fn commands_of(target: &TargetRecord) -> impl Iterator<Item = (&'static str, &CommandRecord)> {
    ActionKind::ALL
        .into_iter()
        .filter_map(|kind| Some((kind.as_str(), target.slot(kind).as_ref()?)))
}

/// When wave `w`'s migrations ran: from the first sent (or first bar) to the last result (or
/// last bar).
fn wave_span(placing: &Placing, w: &WaveRecord, rows: &[Row]) -> WaveSpan {
    let record = placing.record;
    let migrate = || {
        w.targets
            .iter()
            .filter_map(|&t| record.targets[t].migrate.as_ref())
    };
    let migrate_bars = || {
        w.targets
            .iter()
            .flat_map(|&t| rows[t].bars.iter().filter(|b| b.kind == "migrate"))
    };
    let first = migrate()
        .filter_map(|c| c.sent_at)
        .map(|t| placing.rel(t))
        .min();
    let bar_start = migrate_bars().map(|b| b.start).min();
    let bar_end = migrate_bars().map(|b| b.end).max();
    let result_end = migrate()
        .filter_map(|c| c.result.as_ref().map(|r| placing.rel(r.at)))
        .max();
    WaveSpan {
        name: w.name.clone(),
        status: w.status.as_str(),
        start: match (first, bar_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        end: result_end.max(bar_end),
        rows: w.targets.clone(),
    }
}

/// The first rollback (with its cause), the first finalize, and the cross-service checks.
fn marks(placing: &Placing, rows: &[Row]) -> Vec<Mark> {
    let mut marks = Vec::new();
    for kind in ["rollback", "finalize"] {
        let first = placing
            .record
            .targets
            .iter()
            .filter_map(|t| {
                if kind == "rollback" {
                    &t.rollback
                } else {
                    &t.finalize
                }
                .as_ref()
            })
            .filter_map(|c| c.sent_at.map(|at| (at, c.cause.clone())))
            .min_by_key(|(at, _)| *at);
        if let Some((at, cause)) = first {
            marks.push(Mark {
                at: placing.rel(at),
                label: match cause {
                    Some(cause) if kind == "rollback" => format!("{kind}: {cause}"),
                    _ => kind.to_owned(),
                },
                kind,
            });
        }
    }
    if let Some(at) = rows
        .iter()
        .flat_map(|r| &r.bars)
        .filter(|b| b.kind == "inspect")
        .map(|b| b.start)
        .min()
    {
        marks.push(Mark {
            at,
            label: "cross-service checks".into(),
            kind: "check",
        });
    }
    marks
}

/// The bars of `result`'s phases: each from its `started_at` (`rel` makes it a time on the
/// axis); a phase without one (an agent older than the field, a recovered result) follows the
/// one before, the first so that the last ends at the result (`end`).
fn bars_from_result(
    result: &RunResult,
    kind: &'static str,
    end: i64,
    rel: impl Fn(OffsetDateTime) -> i64,
) -> Vec<Bar> {
    let total: i64 = result
        .phases
        .iter()
        .map(|p| i64::try_from(p.duration_ms).unwrap_or(0))
        .sum();
    let mut at = end - total;
    result
        .phases
        .iter()
        .map(|p| {
            let begin = p.started_at.map_or(at, &rel);
            at = begin + i64::try_from(p.duration_ms).unwrap_or(0);
            Bar {
                phase: p.phase.as_str(),
                kind,
                start: begin,
                end: at,
                status: phase_status(p.status),
                detail: p.detail.clone(),
            }
        })
        .collect()
}

fn chart(s: &ServiceReport) -> Chart {
    let mut gates: Vec<ChartGate> = s
        .gates
        .iter()
        .map(|g| ChartGate {
            name: g.gate.clone(),
            text: ChartText {
                verdict: Gate(g).verdict(),
                before: Gate(g).figure(g.before),
                after: Some(Gate(g).figure(g.after)),
                limit: Some(format!("{} {}", Gate(g).bound(), Gate(g).figure(g.limit))),
            },
            before: g.before as f64,
            after: Some(g.after as f64),
            limit: Some(g.limit as f64),
            passed: Some(g.passed),
            higher_is_better: g.higher_is_better,
            inconclusive: g.inconclusive,
        })
        .collect();
    // Figures measured without a gate (e.g. no startup baseline): shown without a limit.
    let m = &s.measurements;
    for (name, before, after) in [
        ("startup_ms", m.startup_ms_before, m.startup_ms_after),
        ("memory_bytes", m.rss_bytes_before, m.rss_bytes_after),
    ] {
        if gates.iter().any(|g| Unit::of(&g.name) == Unit::of(name)) {
            continue;
        }
        if let Some(v) = before.or(after) {
            let unit = Unit::of(name);
            gates.push(ChartGate {
                name: name.to_owned(),
                text: ChartText {
                    verdict: "measured",
                    before: unit.figure(before.unwrap_or(v) as f64),
                    after: after.map(|a| unit.figure(a as f64)),
                    limit: None,
                },
                before: before.unwrap_or(v) as f64,
                after: after.map(|a| a as f64),
                limit: None,
                passed: None,
                higher_is_better: false,
                inconclusive: false,
            });
        }
    }
    Chart {
        target: format!("{}/{}", s.service, s.instance),
        service: s.service.to_string(),
        status: s.status.as_str(),
        gates,
    }
}

fn phase_status(status: PhaseStatus) -> &'static str {
    match status {
        PhaseStatus::Started => "running",
        PhaseStatus::Succeeded => "succeeded",
        PhaseStatus::Failed => "failed",
    }
}
