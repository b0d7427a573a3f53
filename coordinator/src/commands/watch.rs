//! `flotilla watch`: a live view of a run from any machine. It needs nothing but the bus: the
//! run's results (an ordered consumer from the first one, so a view started late or during a
//! resumed run misses no outcome), its live progress (a core subscription, made before the
//! wait for a run to start, so a run watched from its start shows every phase), and the run
//! record (waves, stage, status), re-read as it goes. Progress is not stored: the phases of a
//! command whose progress this view did not hear are shown from its result when it comes.
//!
//! On a terminal the view is redrawn in place (waves, one row per service); otherwise it prints
//! one plain line per event, or with `--output json` one JSON object per line. Text from data
//! (reasons, details, names, gate figures) is shown on one line, controls escaped.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use flotilla_schemas::{CommandId, GateReport, PhaseStatus, Progress, RunId, RunResult};
use flotilla_telemetry::error_chain;
use serde_json::json;
use time::OffsetDateTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod screen;
mod tally;

use screen::Screen;
use tally::{Standing, Tally};

use super::{connect_reader, fail, open_store};
use crate::cli::{AgentFilter, Cli, OutputFormat};
use crate::events::{RunEvent, RunEvents};
use crate::exit::{self, CommandError, Outcome};
use crate::report::RunReport;
use crate::sanitize::one_line;
use crate::store::{ActionKind, RunRecord, RunStatus, Stage, Store, WaveStatus};

/// How long one wait for the next event lasts: the view's refresh rate when nothing happens.
const TICK: Duration = Duration::from_millis(200);
/// How often the run record is re-read (also after every result).
const RELOAD: Duration = Duration::from_millis(500);
/// How often the store is polled while waiting for a run to start.
const POLL: Duration = Duration::from_millis(250);
/// After the run ended: how long to wait for the events of recorded results not yet seen.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Watches `run` (or the newest running run, waiting up to `wait` for one to start) until it
/// ends, showing only the services `filter` passes; returns the run's exit code.
pub(super) async fn watch(
    cli: &Cli,
    run: Option<&str>,
    wait: Duration,
    filter: &AgentFilter,
    shutdown: CancellationToken,
) -> Outcome {
    let (client, subjects) = connect_reader(cli).await?;
    let store = open_store(&client, &subjects).await?;
    // Heard before the wait: the run's first phases come right after its record is written.
    let live = match client.subscribe(subjects.all_progress()).await {
        Ok(live) => Some(live),
        Err(e) => {
            tracing::warn!(error = %e, "live progress not heard; phases shown from results");
            None
        }
    };
    let Some(run_id) = run_to_watch(&store, run, wait, &shutdown).await? else {
        return Ok(exit::OK);
    };
    let (mut record, events) = open_run(&client, &subjects, &store, run_id).await?;
    let mut events = match live {
        Some(live) => events.hearing(live),
        None => events,
    };
    let mut view = View::new(cli.output, &record, filter.clone());
    view.record(&record);
    let mut reloaded = Instant::now();
    let mut unknown = HashSet::new();
    let mut results = HashSet::new();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => {
                view.close();
                eprintln!("stopped watching run {run_id}; the run goes on");
                return Ok(exit::OK);
            }
            next = events.next(TICK) => next,
        };
        let mut reload = reloaded.elapsed() >= RELOAD;
        if let Some(event) = next {
            if let RunEvent::Result(r) = &event {
                reload = true;
                results.insert(r.command_id);
            }
            // A command the record does not hold yet: the record we have is older than the
            // event (commands are recorded before they are sent), or it is an inspection.
            let command = event.command_id();
            if record.find_target(command).is_none()
                && unknown.insert(command)
                && let Ok(Some((fresh, _))) = store.load(&run_id).await
            {
                record = fresh;
                view.record(&record);
            }
            if shown(&event, &record) && view.follows(&event) {
                view.event(&event, &record);
            }
        }
        if reload {
            reloaded = Instant::now();
            match store.load(&run_id).await {
                Ok(Some((fresh, _))) => {
                    record = fresh;
                    view.record(&record);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %error_chain(&e), "cannot re-read the run"),
            }
            if ended(&record) {
                show_the_rest(&mut events, &mut view, &record, &results).await;
                return Ok(view.finish(&record));
            }
        }
        view.redraw(&record);
    }
}

/// The run ended: every result the record holds is in the stream, so the events of those not
/// seen yet (`seen` holds the results shown) are shown, for at most [`DRAIN_WAIT`].
async fn show_the_rest(
    events: &mut RunEvents,
    view: &mut View,
    record: &RunRecord,
    seen: &HashSet<CommandId>,
) {
    let deadline = Instant::now() + DRAIN_WAIT;
    let mut missing: HashSet<CommandId> = recorded_results(record)
        .filter(|id| !seen.contains(id))
        .collect();
    while !missing.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(event) = events.next(wait).await else {
            break;
        };
        // Only a result settles a command: its progress events come first.
        if let RunEvent::Result(r) = &event {
            missing.remove(&r.command_id);
        }
        if shown(&event, record) && view.follows(&event) {
            view.event(&event, record);
        }
    }
}

/// Whether `event` is shown: a result the engine does not file (another agent's, or answering
/// a copy of the command it did not send) is not an outcome, and is skipped with a warning.
fn shown(event: &RunEvent, record: &RunRecord) -> bool {
    let RunEvent::Result(result) = event else {
        return true;
    };
    let Some(why) = crate::rollout::not_filed(record, result) else {
        return true;
    };
    tracing::warn!(
        service = %result.service,
        instance = %result.instance,
        command_id = %result.command_id,
        "not showing a result that is not filed: {why}"
    );
    false
}

/// The commands of `record` that have a result.
fn recorded_results(record: &RunRecord) -> impl Iterator<Item = CommandId> + '_ {
    record
        .commands()
        .filter(|c| c.result.is_some())
        .map(|c| c.command.command_id)
}

/// A run has ended when its coordinator wrote its last stage, or stopped on a cancel or to await
/// its operator's decision.
fn ended(record: &RunRecord) -> bool {
    record.stage == Stage::Done
        || matches!(
            record.status,
            RunStatus::Cancelled | RunStatus::AwaitingFinalize | RunStatus::Paused
        )
}

/// The run's record and its events, trusting the agents' keys the record fixed.
async fn open_run(
    client: &async_nats::Client,
    subjects: &flotilla_schemas::subjects::Subjects,
    store: &Store,
    run_id: RunId,
) -> Result<(RunRecord, RunEvents), CommandError> {
    let record = match store.load(&run_id).await {
        Ok(Some((record, _))) => record,
        Ok(None) => {
            return Err(fail(
                exit::USAGE,
                format!("no run {run_id} in the run store"),
            ));
        }
        Err(e) => return Err(fail(exit::BUS, error_chain(&e))),
    };
    let trust = crate::trust::ResultTrust::of(&record);
    let events = RunEvents::open(client, subjects, run_id, trust)
        .await
        .map_err(|e| fail(exit::BUS, error_chain(&e)))?;
    Ok((record, events))
}

/// The run named by the prefix `run`, or else the newest running one (see [`newest_running`]);
/// `None` when Ctrl-C stopped the wait for one.
async fn run_to_watch(
    store: &Store,
    run: Option<&str>,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<RunId>, CommandError> {
    let Some(prefix) = run else {
        return newest_running(store, wait, shutdown).await;
    };
    match store.find(Some(prefix)).await {
        Ok(found) => {
            super::warn_unreadable(&found.unreadable);
            found.run.map(Some).map_err(|why| fail(exit::USAGE, why))
        }
        Err(e) => Err(fail(exit::BUS, error_chain(&e))),
    }
}

/// The newest run, once it is running: waits up to `wait` for one to start (or be resumed).
async fn newest_running(
    store: &Store,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<RunId>, CommandError> {
    let deadline = Instant::now() + wait;
    let mut said = false;
    loop {
        let runs = store
            .list()
            .await
            .map_err(|e| fail(exit::BUS, error_chain(&e)))?
            .runs;
        if let Some(newest) = runs.last().filter(|r| r.status == RunStatus::Running) {
            return Ok(Some(newest.run_id));
        }
        if Instant::now() >= deadline {
            return Err(fail(
                exit::FAILED,
                format!("no run started within {}", humantime::format_duration(wait)),
            ));
        }
        if !said {
            eprintln!(
                "no run is running: waiting up to {} for one to start",
                humantime::format_duration(wait)
            );
            said = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The progress a result's phases tell, for a command whose live progress was not heard (a
/// run watched after it ended, or a command that ran while no one watched): each phase's start
/// and end, from its `started_at` (or, from an agent older than that, back to back up to the
/// result).
fn history(r: &RunResult) -> Vec<Progress> {
    let total: u64 = r.phases.iter().map(|p| p.duration_ms).sum();
    let mut next = r.at - Duration::from_millis(total);
    let mut out = Vec::new();
    for phase in &r.phases {
        let took = Duration::from_millis(phase.duration_ms);
        let start = phase.started_at.unwrap_or(next);
        next = start + took;
        let progress = |at, status, duration_ms, detail| Progress {
            schema: Default::default(),
            run_id: r.run_id,
            command_id: r.command_id,
            service: r.service.clone(),
            instance: r.instance.clone(),
            at,
            phase: phase.phase,
            status,
            duration_ms,
            detail,
        };
        out.push(progress(start, PhaseStatus::Started, None, None));
        out.push(progress(
            next,
            phase.status,
            Some(phase.duration_ms),
            phase.detail.clone(),
        ));
    }
    out
}

/// Where one target of the run stands, as its events tell it.
#[derive(Debug, Default, Clone)]
struct Row {
    target: String,
    command: Option<CommandId>,
    /// The command being handled; `None` for one the record does not keep (an inspection).
    kind: Option<ActionKind>,
    phase: Option<(&'static str, PhaseStatus)>,
    started: Option<OffsetDateTime>,
    ended: Option<OffsetDateTime>,
    outcome: Option<String>,
    gates: Vec<GateReport>,
}

/// What is shown, and how.
struct View {
    mode: Mode,
    /// The services shown (the others' events are skipped; the final report is whole).
    filter: AgentFilter,
    /// Each target's standing, as the record last read says.
    standings: Vec<Standing>,
    /// The targets shown, in wave order.
    shown: Vec<usize>,
    started_at: OffsetDateTime,
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    waves: Vec<WaveStatus>,
    status: RunStatus,
    stage: Stage,
    /// The commands whose progress was shown (heard live, or told by their result).
    heard: HashSet<CommandId>,
}

enum Mode {
    Lines,
    Json,
    Terminal(Screen),
}

// === impl View ===

impl View {
    fn new(output: OutputFormat, record: &RunRecord, filter: AgentFilter) -> Self {
        let rows: Vec<Row> = record
            .targets
            .iter()
            .map(|t| Row {
                target: format!("{}/{}", t.service, t.instance),
                kind: Some(ActionKind::Migrate),
                ..Row::default()
            })
            .collect();
        let index = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.target.clone(), i))
            .collect();
        let shown = wave_order(record)
            .filter(|&t| filter.matches(record.targets[t].service.as_str()))
            .collect::<Vec<_>>();
        let mode = match output {
            OutputFormat::Json => Mode::Json,
            OutputFormat::Text if std::io::stdout().is_terminal() => {
                Mode::Terminal(Screen::new(record, shown.len()))
            }
            OutputFormat::Text => Mode::Lines,
        };
        let view = View {
            mode,
            filter,
            standings: tally::standings(record),
            shown,
            started_at: record.started_at,
            rows,
            index,
            // Empty: the first look at the record reports every wave's state, even a run seen
            // only once it has ended.
            waves: Vec::new(),
            status: record.status,
            stage: record.stage,
            heard: HashSet::new(),
        };
        match &view.mode {
            Mode::Json => view.json(run_json(record, "run")),
            _ => view.line(&format!(
                "watching run {} ({}): {} service(s) in {} wave(s), {}, stage {}",
                record.run_id,
                record.plan_name,
                record.targets.len(),
                record.waves.len(),
                status_str(record.status),
                record.stage.as_str()
            )),
        }
        view.redraw(record);
        view
    }

    fn line(&self, text: &str) {
        let text = one_line(text);
        match &self.mode {
            Mode::Terminal(screen) => {
                let _ = screen.multi.println(text);
            }
            Mode::Lines => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Mode::Json => {}
        }
    }

    fn json(&self, value: serde_json::Value) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{value}");
        let _ = out.flush();
    }

    fn offset(&self, at: OffsetDateTime) -> String {
        format!(
            "[{:>7.2}s]",
            (at - self.started_at).as_seconds_f64().max(0.0)
        )
    }

    fn event(&mut self, event: &RunEvent, record: &RunRecord) {
        match event {
            RunEvent::Progress(p) => {
                self.heard.insert(p.command_id);
                self.progress(p, record)
            }
            RunEvent::Result(r) => {
                if self.heard.insert(r.command_id) {
                    for p in history(r) {
                        self.progress(&p, record);
                    }
                }
                self.result(r, record)
            }
        }
    }

    /// The row of an event, switched to the event's command when it is a new one.
    fn row_for(
        &mut self,
        target: String,
        command: CommandId,
        at: OffsetDateTime,
        record: &RunRecord,
    ) -> Option<&mut Row> {
        let &i = self.index.get(&target)?;
        let row = &mut self.rows[i];
        if row.command != Some(command) {
            row.command = Some(command);
            row.kind = record.targets.get(i).and_then(|t| t.kind_of(command));
            row.started = Some(at);
            row.ended = None;
            row.phase = None;
        }
        Some(row)
    }

    fn progress(&mut self, p: &Progress, record: &RunRecord) {
        let target = format!("{}/{}", p.service, p.instance);
        let mut kind = "";
        if let Some(row) = self.row_for(target.clone(), p.command_id, p.at, record) {
            row.phase = Some((p.phase.as_str(), p.status));
            kind = kind_name(row.kind);
        }
        match &self.mode {
            Mode::Json => {
                let mut value = serde_json::to_value(p).unwrap_or_default();
                value["type"] = json!("progress");
                value["command"] = json!(kind);
                self.json(value);
            }
            _ => {
                let status = match p.status {
                    PhaseStatus::Started => "started".to_owned(),
                    PhaseStatus::Succeeded => "ok".to_owned(),
                    PhaseStatus::Failed => "FAILED".to_owned(),
                };
                let took = p
                    .duration_ms
                    .map(|ms| format!(" ({ms}ms)"))
                    .unwrap_or_default();
                let detail = p
                    .detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                if !matches!(self.mode, Mode::Terminal(_)) {
                    self.line(&format!(
                        "{} {target} {} {status}{took}{detail}",
                        self.offset(p.at),
                        p.phase.as_str()
                    ));
                } else if p.status == PhaseStatus::Failed {
                    self.line(&format!(
                        "{} {target} {} FAILED{took}{detail}",
                        self.offset(p.at),
                        p.phase.as_str()
                    ));
                }
            }
        }
    }

    fn result(&mut self, r: &RunResult, record: &RunRecord) {
        let target = format!("{}/{}", r.service, r.instance);
        let mut kind = None;
        if let Some(row) = self.row_for(target.clone(), r.command_id, r.at, record) {
            row.ended = Some(r.at);
            row.outcome = Some(r.outcome.as_str().to_owned());
            if !r.gates.is_empty() {
                row.gates = r.gates.clone();
            }
            kind = Some(row.kind);
        }
        match &self.mode {
            Mode::Json => {
                let mut value = serde_json::to_value(r).unwrap_or_default();
                value["type"] = json!("result");
                value["command"] = json!(kind.map_or("", kind_name));
                self.json(value);
            }
            _ => {
                let reason = r
                    .reason
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                let replayed = if r.replayed { " (replayed)" } else { "" };
                let gates = if r.gates.is_empty() {
                    String::new()
                } else {
                    format!("; gates: {}", crate::report::gate::lines(&r.gates))
                };
                let kind = match kind {
                    None | Some(Some(ActionKind::Migrate)) => String::new(),
                    Some(kind) => format!(" ({})", kind_name(kind)),
                };
                self.line(&format!(
                    "{} {target} => {}{kind}{replayed}{reason}{gates}",
                    self.offset(r.at),
                    r.outcome.as_str()
                ));
            }
        }
    }

    /// Whether `event` is about a service this view shows.
    fn follows(&self, event: &RunEvent) -> bool {
        let service = match event {
            RunEvent::Progress(p) => &p.service,
            RunEvent::Result(r) => &r.service,
        };
        self.filter.matches(service.as_str())
    }

    /// Reports what changed in the record: waves, stage, status.
    fn record(&mut self, record: &RunRecord) {
        self.standings = tally::standings(record);
        for (w, wave) in record.waves.iter().enumerate() {
            if self.waves.get(w) == Some(&wave.status) {
                continue;
            }
            match self.waves.get_mut(w) {
                Some(seen) => *seen = wave.status,
                None => self.waves.push(wave.status),
            }
            match &self.mode {
                Mode::Json => self.json(json!({
                    "type": "wave",
                    "index": w,
                    "name": wave.name,
                    "status": wave.status.as_str(),
                })),
                _ => self.line(&format!(
                    "== wave {}/{} {:?}: {}",
                    w + 1,
                    record.waves.len(),
                    wave.name,
                    wave.status.as_str()
                )),
            }
        }
        if (record.stage, record.status) != (self.stage, self.status) {
            self.stage = record.stage;
            self.status = record.status;
            match &self.mode {
                Mode::Json => self.json(run_json(record, "run")),
                _ => self.line(&format!(
                    "== run {}, stage {}",
                    status_str(record.status),
                    record.stage.as_str()
                )),
            }
        }
    }

    fn redraw(&self, record: &RunRecord) {
        let Mode::Terminal(screen) = &self.mode else {
            return;
        };
        let now = OffsetDateTime::now_utc();
        let end = record.finished_at.unwrap_or(now);
        screen.header.set_message(message(format!(
            "{}: {}, stage {}  {:.1}s",
            record.plan_name,
            status_str(record.status),
            record.stage.as_str(),
            (end - record.started_at).as_seconds_f64()
        )));
        let width = self.rows.iter().map(|r| r.target.len()).max().unwrap_or(8);
        for (w, (bar, wave)) in screen.waves.iter().zip(&record.waves).enumerate() {
            let done = wave
                .targets
                .iter()
                .filter(|&&t| self.rows[t].outcome.is_some())
                .count();
            bar.set_message(message(format!(
                "wave {}/{} {} ({} at a time): {}  {done}/{}",
                w + 1,
                record.waves.len(),
                wave.name,
                wave.max_parallel
                    .map_or_else(|| "all".to_owned(), |n| n.to_string()),
                wave.status.as_str(),
                wave.targets.len()
            )));
        }
        let mut order = self.shown.clone();
        let standing = |t: usize| self.standings.get(t).copied().unwrap_or_default();
        // Stable: within a standing, rows stay in wave order.
        order.sort_by_key(|&t| standing(t));
        let tally = Tally::of(order.iter().map(|&t| standing(t)));
        let of_all = if self.filter.service.is_empty() {
            String::new()
        } else {
            format!(
                " (of {}; --service {})",
                self.rows.len(),
                self.filter.service.join(",")
            )
        };
        screen.counters.set_message(message(format!(
            "{} service(s){of_all}: {}",
            order.len(),
            tally.line()
        )));
        let hidden = order.split_off(screen.rows.len().min(order.len()));
        screen.more.set_message(if hidden.is_empty() {
            String::new()
        } else {
            let tally = Tally::of(hidden.iter().map(|&t| standing(t)));
            format!("  +{} more ({})", hidden.len(), tally.nonzero())
        });
        for (bar, &t) in screen.rows.iter().zip(&order) {
            let row = &self.rows[t];
            let phase = match row.phase {
                // Sent, and not picked up yet: the agent's first event says when it is.
                None if standing(t) == Standing::InFlight => "sent".to_owned(),
                None => "waiting".to_owned(),
                Some((phase, PhaseStatus::Started)) => format!("{phase} …"),
                Some((phase, PhaseStatus::Succeeded)) => format!("{phase} ok"),
                Some((phase, PhaseStatus::Failed)) => format!("{phase} FAILED"),
            };
            let elapsed = row
                .started
                .map(|s| format!("{:.1}s", (row.ended.unwrap_or(now) - s).as_seconds_f64()))
                .unwrap_or_else(|| "-".into());
            let outcome = match (&row.outcome, row.kind) {
                (Some(o), Some(ActionKind::Migrate)) => o.clone(),
                (Some(o), kind) => format!("{o} ({})", kind_name(kind)),
                (None, kind) if row.started.is_some() => format!("{} …", kind_name(kind)),
                (None, _) => "-".into(),
            };
            bar.set_message(message(format!(
                "  {:width$}  {phase:16}  {elapsed:>6}  {outcome:22}  {}",
                row.target,
                crate::report::gate::compact(&row.gates)
            )));
        }
        // Each line's update above is drawn only as the terminal's rate limit allows (20 a
        // second, bursts of 20): a 40-line view's last update could stay undrawn until the next
        // tick, leaving a frame whose rows do not match its counters. One forced draw shows it whole.
        screen.more.force_draw();
    }

    /// Rows whose last result was not heard (the event stream still behind when the drain gave
    /// up, on a loaded machine) take it from the record, which is the truth: the last view
    /// never shows a finished command in flight.
    fn settle(&mut self, record: &RunRecord) {
        for (row, target) in self.rows.iter_mut().zip(&record.targets) {
            let last = target
                .commands()
                .filter_map(|c| Some((c.command.command_id, c.result.as_ref()?)))
                .max_by_key(|(_, r)| r.at);
            let Some((command, result)) = last else {
                continue;
            };
            if row.command == Some(command) && row.outcome.is_some() {
                continue;
            }
            if row.command != Some(command) {
                row.command = Some(command);
                row.kind = target.kind_of(command);
                row.started = result.phases.first().and_then(|p| p.started_at);
            }
            if let Some(p) = result.phases.last() {
                row.phase = Some((p.phase.as_str(), p.status));
            }
            row.ended = Some(result.at);
            row.outcome = Some(result.outcome.as_str().to_owned());
            if !result.gates.is_empty() {
                row.gates = result.gates.clone();
            }
        }
    }

    /// The run ended: the last word, and the run's exit code.
    fn finish(mut self, record: &RunRecord) -> u8 {
        self.record(record);
        self.settle(record);
        self.redraw(record);
        self.close();
        let report = RunReport::from_record(record);
        match &self.mode {
            Mode::Json => {
                let mut value = run_json(record, "end");
                value["exit_code"] = json!(report.exit_code());
                value["report"] = serde_json::to_value(&report).unwrap_or_default();
                self.json(value);
            }
            Mode::Terminal(_) => {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "\n{}", report.to_text());
                let _ = out.flush();
            }
            Mode::Lines => {
                let mut out = std::io::stdout().lock();
                let _ = write!(out, "{}", report.to_text());
                let _ = out.flush();
            }
        }
        report.exit_code()
    }

    /// Leaves the terminal view on screen as it last was.
    fn close(&mut self) {
        if let Mode::Terminal(screen) = &self.mode {
            for bar in screen.lines() {
                bar.finish();
            }
        }
    }
}

/// Every target of `record`, wave by wave (and any in no wave last).
fn wave_order(record: &RunRecord) -> impl Iterator<Item = usize> + '_ {
    let in_waves: HashSet<usize> = record
        .waves
        .iter()
        .flat_map(|w| w.targets.clone())
        .collect();
    record
        .waves
        .iter()
        .flat_map(|w| w.targets.iter().copied())
        .filter(|&t| t < record.targets.len())
        .chain((0..record.targets.len()).filter(move |t| !in_waves.contains(t)))
}

/// A row of the in-place view, controls escaped.
fn message(text: String) -> String {
    one_line(&text).into_owned()
}

/// A command's kind as shown: an inspection is the command the record does not keep.
fn kind_name(kind: Option<ActionKind>) -> &'static str {
    kind.map_or("inspect", ActionKind::as_str)
}

fn status_str(status: RunStatus) -> String {
    status.as_str().to_owned()
}

fn run_json(record: &RunRecord, kind: &str) -> serde_json::Value {
    let waves: Vec<_> = record
        .waves
        .iter()
        .map(|w| {
            let services: Vec<_> = w
                .targets
                .iter()
                .filter_map(|&t| record.targets.get(t))
                .map(|t| format!("{}/{}", t.service, t.instance))
                .collect();
            json!({ "name": w.name, "status": w.status.as_str(), "services": services })
        })
        .collect();
    json!({
        "type": kind,
        "run_id": record.run_id,
        "plan": record.plan_name,
        "status": record.status,
        "stage": record.stage.as_str(),
        "waves": waves,
    })
}
