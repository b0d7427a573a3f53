//! Where each service of a watched run stands, as its record says (the report's statuses,
//! grouped): the counters of the view, and the order its rows are shown in, failures first.

use std::fmt::Write as _;

use crate::report::{RunReport, ServiceStatus};
use crate::store::RunRecord;

/// A service's standing, in the order the view shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(super) enum Standing {
    /// It failed on its own (refused, rolled back after a failed apply or validation, timed
    /// out, not delivered, rollback failed).
    Failed,
    InFlight,
    /// Restored without a failure of its own: another service failed, on request, a rehearsal.
    RolledBack,
    #[default]
    Pending,
    Succeeded,
}

/// How many services stand where.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Tally([usize; 5]);

// === impl Standing ===

impl Standing {
    const ALL: [Standing; 5] = [
        Standing::Succeeded,
        Standing::Failed,
        Standing::InFlight,
        Standing::Pending,
        Standing::RolledBack,
    ];

    fn name(self) -> &'static str {
        match self {
            Standing::Failed => "failed",
            Standing::InFlight => "in flight",
            Standing::RolledBack => "rolled back",
            Standing::Pending => "pending",
            Standing::Succeeded => "succeeded",
        }
    }
}

/// Every target's standing, in the record's order.
pub(super) fn standings(record: &RunRecord) -> Vec<Standing> {
    RunReport::from_record(record)
        .services
        .iter()
        .map(|s| match (s.failure, s.status) {
            (Some(_), _) => Standing::Failed,
            (None, ServiceStatus::Succeeded) => Standing::Succeeded,
            (None, ServiceStatus::InFlight) => Standing::InFlight,
            (None, ServiceStatus::RolledBack) => Standing::RolledBack,
            (None, ServiceStatus::NotStarted) => Standing::Pending,
            // Statuses that always carry a failure.
            (None, _) => Standing::Failed,
        })
        .collect()
}

// === impl Tally ===

impl Tally {
    /// The tally of `standings`.
    pub(super) fn of(standings: impl IntoIterator<Item = Standing>) -> Self {
        let mut tally = Tally::default();
        for s in standings {
            tally.0[s as usize] += 1;
        }
        tally
    }

    /// `12 succeeded, 1 failed, 5 in flight, 182 pending, 0 rolled back`: every count, always in
    /// this order, so that the line does not jump about.
    pub(super) fn line(&self) -> String {
        let mut out = String::new();
        for (i, s) in Standing::ALL.into_iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}{} {}", self.0[s as usize], s.name());
        }
        out
    }

    /// Only the counts that are not zero: `170 succeeded, 2 pending`.
    pub(super) fn nonzero(&self) -> String {
        Standing::ALL
            .into_iter()
            .filter(|&s| self.0[s as usize] > 0)
            .map(|s| format!("{} {}", self.0[s as usize], s.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_names_every_count_and_failures_sort_first() {
        let tally = Tally::of([
            Standing::Succeeded,
            Standing::Failed,
            Standing::Pending,
            Standing::Pending,
        ]);
        assert_eq!(
            tally.line(),
            "1 succeeded, 1 failed, 0 in flight, 2 pending, 0 rolled back"
        );
        assert_eq!(tally.nonzero(), "1 succeeded, 1 failed, 2 pending");
        let mut order = [Standing::Succeeded, Standing::Pending, Standing::Failed];
        order.sort();
        assert_eq!(order[0], Standing::Failed);
    }
}
