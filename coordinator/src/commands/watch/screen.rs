//! The in-place view of `flotilla watch` on a terminal: a header, the counters, one line per
//! wave, as many service rows as the terminal's height leaves room for, and a `+N more` line
//! for the rows that do not fit (a wrapped or scrolled-off view would break the redraw).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::RunRecord;

/// Lines the view keeps free besides its own: the cursor's line, and one for the lines printed
/// above the view (a failed phase) while it is redrawn.
const SPARE_LINES: usize = 2;
/// The height assumed when the terminal does not say.
const DEFAULT_HEIGHT: usize = 24;
/// Service rows shown however small the terminal: the failures come first.
const MIN_ROWS: usize = 3;

/// The in-place view's lines, one bar each.
pub(super) struct Screen {
    pub(super) multi: MultiProgress,
    pub(super) header: ProgressBar,
    pub(super) counters: ProgressBar,
    pub(super) waves: Vec<ProgressBar>,
    /// The service rows, filled each redraw with the rows to show, failures first.
    pub(super) rows: Vec<ProgressBar>,
    /// `+N more`: empty when every row fits.
    pub(super) more: ProgressBar,
}

// === impl Screen ===

impl Screen {
    /// A view of `record` with at most `services` service rows, fitted to the terminal.
    pub(super) fn new(record: &RunRecord, services: usize) -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        let style =
            // `wide_msg` cuts lines to the terminal's width: a wrapped line would break the redraw.
            ProgressStyle::with_template("{wide_msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let line = |multi: &MultiProgress| multi.add(ProgressBar::new(1).with_style(style.clone()));
        let header = line(&multi);
        let counters = line(&multi);
        let waves: Vec<_> = record.waves.iter().map(|_| line(&multi)).collect();
        let fixed = 3 + waves.len() + SPARE_LINES;
        let room = height().saturating_sub(fixed).max(MIN_ROWS);
        let rows = (0..services.min(room)).map(|_| line(&multi)).collect();
        let more = line(&multi);
        Screen {
            multi,
            header,
            counters,
            waves,
            rows,
            more,
        }
    }

    /// Every line of the view.
    pub(super) fn lines(&self) -> impl Iterator<Item = &ProgressBar> {
        [&self.header, &self.counters]
            .into_iter()
            .chain(&self.waves)
            .chain(&self.rows)
            .chain(std::iter::once(&self.more))
    }
}

/// The terminal's height in lines.
fn height() -> usize {
    console::Term::stdout()
        .size_checked()
        .map_or(DEFAULT_HEIGHT, |(rows, _)| usize::from(rows))
}
