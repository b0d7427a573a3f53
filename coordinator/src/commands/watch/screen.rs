//! The in-place view of `flotilla watch` on a terminal: its lines, one bar each.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::RunRecord;

/// The in-place view: a header line, then per wave a line and one row per service.
pub(super) struct Screen {
    pub(super) multi: MultiProgress,
    pub(super) header: ProgressBar,
    pub(super) waves: Vec<ProgressBar>,
    pub(super) rows: Vec<ProgressBar>,
}

// === impl Screen ===

impl Screen {
    pub(super) fn new(record: &RunRecord) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style =
            // `wide_msg` cuts lines to the terminal's width: a wrapped line would break the redraw.
            ProgressStyle::with_template("{wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let line = |multi: &MultiProgress| multi.add(ProgressBar::new(1).with_style(style.clone()));
        let header = line(&multi);
        let mut waves = Vec::new();
        let mut rows: Vec<Option<ProgressBar>> = vec![None; record.targets.len()];
        for wave in &record.waves {
            waves.push(line(&multi));
            for &t in &wave.targets {
                if let Some(slot) = rows.get_mut(t) {
                    *slot = Some(line(&multi));
                }
            }
        }
        let rows = rows
            .into_iter()
            .map(|r| r.unwrap_or_else(|| line(&multi)))
            .collect();
        Screen {
            multi,
            header,
            waves,
            rows,
        }
    }
}
