//! Views of `ferryctl rebuild-state`: its progress line and its summary by state.

use std::fmt;

use serde::Serialize;

use ferry_proto::scheduler::v1::{RebuildPhase, RebuildProgress};

use super::as_map;

/// The phase's name, as the progress line and the JSON show it.
fn phase_label(phase: i32) -> &'static str {
    match RebuildPhase::try_from(phase).unwrap_or_default() {
        RebuildPhase::Inventory => "inventory",
        RebuildPhase::Statuses => "statuses",
        RebuildPhase::Native => "native",
        RebuildPhase::Done => "done",
        RebuildPhase::Unspecified => "starting",
    }
}

/// One progress line of a rebuild (stderr).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildProgressView {
    /// inventory, statuses, native or done.
    pub phase: &'static str,
    /// Repositories found in the bucket, and registered anew.
    pub repositories_found: u64,
    /// Repositories registered anew by the inventory.
    pub repositories_registered: u64,
    /// Repositories whose recorded status was asked.
    pub checked: u64,
    /// States written.
    pub rebuilt: u64,
    /// Time since the rebuild started, milliseconds.
    pub elapsed_ms: u64,
}

impl From<&RebuildProgress> for RebuildProgressView {
    fn from(progress: &RebuildProgress) -> Self {
        Self {
            phase: phase_label(progress.phase),
            repositories_found: progress.repositories_found,
            repositories_registered: progress.repositories_registered,
            checked: progress.checked,
            rebuilt: progress.rebuilt,
            elapsed_ms: progress.elapsed_ms,
        }
    }
}

impl fmt::Display for RebuildProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rebuild ({}): {} repositories found, {} new, {} statuses asked, {} states rebuilt, {:.1} s",
            self.phase,
            self.repositories_found,
            self.repositories_registered,
            self.checked,
            self.rebuilt,
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

/// The end of a rebuild (stdout): what it did and the repositories by state afterwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RebuildSummaryView {
    /// Repositories found in the bucket.
    pub repositories_found: u64,
    /// Repositories registered anew by the inventory.
    pub repositories_registered: u64,
    /// Repositories whose recorded status was asked.
    pub checked: u64,
    /// States written from the importers' records.
    pub rebuilt: u64,
    /// Repositories created on the new platform registered as done.
    pub native_registered: u64,
    /// Repositories rebuilt as import_aborted, their retry counts restarted at 0.
    pub retries_reset: u64,
    /// Repositories per state afterwards (a JSON object).
    #[serde(serialize_with = "as_map")]
    pub states: Vec<(String, u64)>,
    /// What the operator must know before turning the migration on.
    pub notes: Vec<String>,
    /// How long the rebuild took, milliseconds.
    pub elapsed_ms: u64,
}

impl From<RebuildProgress> for RebuildSummaryView {
    fn from(progress: RebuildProgress) -> Self {
        Self {
            repositories_found: progress.repositories_found,
            repositories_registered: progress.repositories_registered,
            checked: progress.checked,
            rebuilt: progress.rebuilt,
            native_registered: progress.native_registered,
            retries_reset: progress.retries_reset,
            states: progress
                .states
                .into_iter()
                .map(|s| (s.state, s.count))
                .collect(),
            notes: progress.notes,
            elapsed_ms: progress.elapsed_ms,
        }
    }
}

impl fmt::Display for RebuildSummaryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "state rebuilt in {:.1} s: {} repositories in the bucket ({} new), {} records asked, \
             {} states rebuilt, {} created on the new platform registered",
            self.elapsed_ms as f64 / 1000.0,
            self.repositories_found,
            self.repositories_registered,
            self.checked,
            self.rebuilt,
            self.native_registered
        )?;
        let total: u64 = self.states.iter().map(|(_, n)| n).sum();
        writeln!(f, "repositories by state ({total} in all):")?;
        for (state, count) in &self.states {
            writeln!(f, "  {state:<16} {count}")?;
        }
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        writeln!(
            f,
            "the migration is off: check the states, then turn it on with ferryctl migrate"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::scheduler::v1::StateCount;

    #[test]
    fn the_summary_lists_every_state_and_note() {
        let progress = RebuildProgress {
            phase: RebuildPhase::Done.into(),
            repositories_found: 9,
            checked: 9,
            rebuilt: 5,
            states: vec![
                StateCount {
                    state: "default".into(),
                    count: 4,
                },
                StateCount {
                    state: "import_done".into(),
                    count: 5,
                },
            ],
            notes: vec!["settings are defaults".into()],
            done: true,
            ..RebuildProgress::default()
        };
        let line = RebuildProgressView::from(&progress);
        assert_eq!(line.phase, "done");
        let text = RebuildSummaryView::from(progress).to_string();
        assert!(text.contains("5 states rebuilt"), "{text}");
        assert!(text.contains("repositories by state (9 in all)"), "{text}");
        assert!(text.contains("  import_done      5"), "{text}");
        assert!(text.contains("note: settings are defaults"), "{text}");
    }
}
