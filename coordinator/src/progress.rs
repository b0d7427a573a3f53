//! Progress on stderr: on a terminal, a bar per wave and a line per service with its phase;
//! otherwise plain lines, one per phase change, wave and decision. Every line and bar message
//! holds text from agents (reasons, details): it is shown on one line, controls escaped.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use flotilla_schemas::{PhaseStatus, Progress, RunResult};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::rollout::ProgressSink;
use crate::sanitize::one_line;

/// How often the spinners redraw.
const TICK: Duration = Duration::from_millis(120);

/// Prints progress on stderr unless `quiet`.
pub struct TerminalProgress {
    started: Instant,
    quiet: bool,
    bars: Option<Bars>,
}

/// The bars of the current batch (a wave, a rollback, the finalize).
struct Bars {
    multi: MultiProgress,
    batch: Option<ProgressBar>,
    services: HashMap<String, ProgressBar>,
}

// === impl TerminalProgress ===

impl TerminalProgress {
    /// Bars on a terminal, lines elsewhere; nothing when `quiet` (JSON output).
    pub fn new(quiet: bool) -> Self {
        let bars = (!quiet && std::io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::new(),
            batch: None,
            services: HashMap::new(),
        });
        Self {
            started: Instant::now(),
            quiet,
            bars,
        }
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let text = format!("[{:>6.2}s] {}", self.elapsed(), one_line(text));
        match &self.bars {
            Some(bars) => {
                let _ = bars.multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}

impl ProgressSink for TerminalProgress {
    fn shows_progress(&self) -> bool {
        !self.quiet
    }

    fn progress(&mut self, p: &Progress) {
        let key = format!("{}/{}", p.service, p.instance);
        if let Some(bars) = &self.bars {
            if let Some(bar) = bars.services.get(&key) {
                let status = match p.status {
                    PhaseStatus::Started => "…",
                    PhaseStatus::Succeeded => "ok",
                    PhaseStatus::Failed => "FAILED",
                };
                bar.set_message(format!("{} {status}", p.phase.as_str()));
            }
            return;
        }
        if p.status == PhaseStatus::Started {
            return;
        }
        let status = if p.status == PhaseStatus::Succeeded {
            "ok"
        } else {
            "FAILED"
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
        self.line(&format!(
            "{key} {} {status}{took}{detail}",
            p.phase.as_str()
        ));
    }

    fn result(&mut self, r: &RunResult) {
        let reason = r
            .reason
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        let replayed = if r.replayed { " (replayed)" } else { "" };
        let key = format!("{}/{}", r.service, r.instance);
        if let Some(bars) = &self.bars
            && let Some(bar) = bars.services.get(&key)
            && !bar.is_finished()
        {
            bar.finish_with_message(
                one_line(&format!("=> {}{replayed}{reason}", r.outcome.as_str())).into_owned(),
            );
            if let Some(batch) = &bars.batch {
                batch.inc(1);
            }
            return;
        }
        self.line(&format!(
            "{key} => {}{replayed}{reason}",
            r.outcome.as_str()
        ));
    }

    fn stage(&mut self, what: &str) {
        self.line(&format!("== {what}"));
    }

    fn note(&mut self, note: &str) {
        self.line(&format!("!! {note}"));
    }

    fn batch(&mut self, name: &str, targets: &[String]) {
        let Some(bars) = &mut self.bars else {
            return;
        };
        if let Some(batch) = bars.batch.take() {
            batch.finish();
        }
        for (_, bar) in bars.services.drain() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let batch = bars
            .multi
            .add(ProgressBar::new(targets.len() as u64).with_style(style));
        batch.set_prefix(one_line(name).into_owned());
        let style = ProgressStyle::with_template("  {spinner} {prefix:20} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        for target in targets {
            let bar = bars.multi.add(
                ProgressBar::new_spinner()
                    .with_style(style.clone())
                    .with_prefix(one_line(target).into_owned())
                    .with_message("waiting"),
            );
            bar.enable_steady_tick(TICK);
            bars.services.insert(target.clone(), bar);
        }
        bars.batch = Some(batch);
    }
}

impl Drop for TerminalProgress {
    fn drop(&mut self) {
        if let Some(bars) = &mut self.bars {
            if let Some(batch) = bars.batch.take() {
                batch.finish();
            }
            for (_, bar) in bars.services.drain() {
                bar.finish();
            }
        }
    }
}
