//! Views of the whole migration: the summary (`status`, `migrate --wait`) and the progress lines
//! of `migrate --wait` and `inventory`.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use ferry_proto::scheduler::v1::{InventoryProgress, MigrationSummary};

use super::{RepositoryView, StatsView, as_map, on_off};
use crate::state::MigrationState;

/// What one `migrate --wait` saw: its duration and how many repositories finished during it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFigures {
    /// How long the run took.
    pub elapsed: Duration,
    /// Repositories that finished during it.
    pub finished: u64,
}

impl RunFigures {
    /// Repositories finished per second.
    pub fn rate(self) -> f64 {
        self.finished as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
}

/// The migration summary: `status`, and the end of `migrate --wait` (with its run's figures).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SummaryView {
    /// The global switch.
    pub enabled: bool,
    /// Repositories in process at once.
    pub capacity: u64,
    /// Repositories registered.
    pub total: u64,
    /// Repositories per state, for every state that has some (a JSON object).
    #[serde(serialize_with = "as_map")]
    pub states: Vec<(String, u64)>,
    /// Sums over every repository's completed steps.
    pub totals: StatsView,
    /// `migrate --wait`: the run's duration, in seconds; `null` otherwise.
    pub elapsed_seconds: Option<f64>,
    /// `migrate --wait`: repositories that finished during the run; `null` otherwise.
    pub finished_in_run: Option<u64>,
    /// `migrate --wait`: the run's rate; `null` otherwise.
    pub repositories_per_second: Option<f64>,
    /// Repositories that need attention (at most 100).
    pub problems: Vec<RepositoryView>,
    /// Repositories in pre_importing, pre_import_done or importing.
    pub in_flight: u64,
    /// Repositories done per minute over the last 10 minutes.
    pub done_per_minute: f64,
    /// Seconds until the repositories with work left are done at that rate; 0 when unknown.
    pub eta_seconds: u64,
}

impl SummaryView {
    /// The view of `summary` (`status`: without a run's figures).
    pub fn new(summary: MigrationSummary) -> Self {
        Self {
            enabled: summary.enabled,
            capacity: summary.capacity,
            total: summary.total,
            states: summary
                .states
                .into_iter()
                .map(|s| (s.state, s.count))
                .collect(),
            totals: summary.totals.into(),
            elapsed_seconds: None,
            finished_in_run: None,
            repositories_per_second: None,
            problems: summary.problems.into_iter().map(Into::into).collect(),
            in_flight: summary.in_flight,
            done_per_minute: summary.done_per_minute,
            eta_seconds: summary.eta_seconds,
        }
    }

    /// This summary with the figures of the `migrate --wait` run that ends with it.
    pub fn with_run(self, run: RunFigures) -> Self {
        Self {
            elapsed_seconds: Some(run.elapsed.as_secs_f64()),
            finished_in_run: Some(run.finished),
            repositories_per_second: Some(run.rate()),
            ..self
        }
    }

    /// Repositories in `state`.
    pub fn count(&self, state: MigrationState) -> u64 {
        self.states
            .iter()
            .filter(|(name, _)| name == state.as_str())
            .map(|(_, count)| count)
            .sum()
    }

    /// Repositories with migration work ahead.
    pub fn pending(&self) -> u64 {
        MigrationState::PENDING
            .iter()
            .map(|state| self.count(*state))
            .sum()
    }
}

impl fmt::Display for SummaryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let done = self.count(MigrationState::ImportDone);
        let skipped = self.count(MigrationState::ImportSkipped);
        let failed = self.count(MigrationState::ImportAborted);
        writeln!(f, "Ferry migration summary")?;
        writeln!(
            f,
            "  switch          {} (capacity {})",
            on_off(self.enabled),
            self.capacity
        )?;
        writeln!(
            f,
            "  repositories    {} total: {done} done, {skipped} skipped, {failed} failed (aborted, to retry)",
            self.total
        )?;
        for (state, count) in &self.states {
            writeln!(f, "    {state:<14}{count}")?;
        }
        let eta = if self.eta_seconds > 0 {
            format!("{} s", self.eta_seconds)
        } else {
            "-".to_owned()
        };
        writeln!(
            f,
            "  throughput      {} in flight, {:.1} done/min over 10 min, ETA {eta}",
            self.in_flight, self.done_per_minute
        )?;
        write!(f, "{}", self.totals)?;
        if let (Some(elapsed), Some(finished), Some(rate)) = (
            self.elapsed_seconds,
            self.finished_in_run,
            self.repositories_per_second,
        ) {
            writeln!(
                f,
                "  elapsed         {elapsed:.1} s: {finished} repositories finished in this run ({rate:.2} repositories/s)",
            )?;
        }
        if !self.problems.is_empty() {
            writeln!(f, "  needs attention")?;
            for repo in &self.problems {
                let reason = if repo.skipped_reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", repo.skipped_reason)
                };
                let error = if repo.last_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", repo.last_error)
                };
                writeln!(
                    f,
                    "    {} {}{reason}{error}",
                    repo.path, repo.migration_state
                )?;
            }
        }
        Ok(())
    }
}

/// One progress line of `migrate --wait` (a line view).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MigrateProgressView {
    /// Repositories with no work left.
    pub finished: u64,
    /// Repositories registered.
    pub total: u64,
    /// Repositories finished per second since the run started.
    pub rate: f64,
    /// Seconds left at that rate; `None` while the rate is 0.
    pub eta_seconds: Option<f64>,
    /// Repositories in process (taking a slot of the capacity).
    pub active: u64,
}

impl MigrateProgressView {
    /// The progress shown by `summary`, `elapsed` into a run that started with
    /// `initial_pending` repositories to do.
    pub fn new(summary: &SummaryView, initial_pending: u64, elapsed: Duration) -> Self {
        let left = summary.pending();
        let finished_now = initial_pending.saturating_sub(left);
        let rate = finished_now as f64 / elapsed.as_secs_f64().max(0.001);
        Self {
            finished: summary.total.saturating_sub(left),
            total: summary.total,
            rate,
            eta_seconds: (rate > 0.0).then(|| left as f64 / rate),
            active: MigrationState::IN_PROCESS
                .iter()
                .map(|state| summary.count(*state))
                .sum(),
        }
    }
}

impl fmt::Display for MigrateProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const WIDTH: u64 = 30;
        let filled = (self.finished * WIDTH)
            .checked_div(self.total)
            .unwrap_or(WIDTH)
            .min(WIDTH);
        let eta = match self.eta_seconds {
            Some(seconds) => format!("{seconds:.0} s"),
            None => "-".to_owned(),
        };
        write!(
            f,
            "[{}{}] {}/{} done · {:.1} repos/s · ETA {eta} · {} in process",
            "#".repeat(filled as usize),
            ".".repeat((WIDTH - filled) as usize),
            self.finished,
            self.total,
            self.rate,
            self.active
        )
    }
}

/// One progress line of `inventory` (a line view).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct InventoryProgressView {
    /// Repositories found in storage so far.
    pub repositories_found: u64,
    /// Repositories newly registered so far.
    pub repositories_registered: u64,
    /// Projects newly registered so far.
    pub projects_registered: u64,
    /// Storage list calls made so far.
    pub list_calls: u64,
    /// True on the last line.
    pub done: bool,
    /// Time since the inventory started, milliseconds.
    pub elapsed_ms: u64,
}

impl From<InventoryProgress> for InventoryProgressView {
    fn from(progress: InventoryProgress) -> Self {
        Self {
            repositories_found: progress.repositories_found,
            repositories_registered: progress.repositories_registered,
            projects_registered: progress.projects_registered,
            list_calls: progress.list_calls,
            done: progress.done,
            elapsed_ms: progress.elapsed_ms,
        }
    }
}

impl fmt::Display for InventoryProgressView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "inventory: {} repositories found, {} new, {} new projects, {} list calls, {:.1} s",
            self.repositories_found,
            self.repositories_registered,
            self.projects_registered,
            self.list_calls,
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::common::v1::ImportStats;
    use ferry_proto::scheduler::v1::{Repository, StateCount};

    fn sample() -> MigrationSummary {
        let state = |state: &str, count| StateCount {
            state: state.into(),
            count,
        };
        MigrationSummary {
            enabled: true,
            capacity: 4,
            total: 10,
            states: vec![
                state("default", 1),
                state("importing", 1),
                state("import_done", 7),
                state("import_skipped", 1),
            ],
            totals: Some(ImportStats {
                manifests: 12,
                tags: 9,
                tags_skipped: 1,
                blobs: 25,
                blobs_copied: 20,
                bytes_copied: 54_886,
                blobs_present: 5,
                ..ImportStats::default()
            }),
            problems: vec![Repository {
                path: "group-d/project-6/broken".into(),
                migration_state: "import_skipped".into(),
                skipped_reason: "too_many_retries".into(),
                last_error: "boom".into(),
                ..Repository::default()
            }],
            in_flight: 1,
            done_per_minute: 2.3,
            eta_seconds: 0,
        }
    }

    #[test]
    fn the_summary_prints_counts_figures_and_problems() {
        let run = RunFigures {
            elapsed: Duration::from_millis(2500),
            finished: 5,
        };
        let view = SummaryView::new(sample()).with_run(run);
        assert_eq!(
            view.to_string(),
            "Ferry migration summary\n\
             \x20 switch          on (capacity 4)\n\
             \x20 repositories    10 total: 7 done, 1 skipped, 0 failed (aborted, to retry)\n\
             \x20   default       1\n\
             \x20   importing     1\n\
             \x20   import_done   7\n\
             \x20   import_skipped1\n\
             \x20 throughput      1 in flight, 2.3 done/min over 10 min, ETA -\n\
             \x20 manifests       12 registered, 0 skipped (no revision link, schema 1 or unlinked config)\n\
             \x20 tags            9 registered, 1 skipped (no current link, or manifest skipped)\n\
             \x20 blobs           25 registered, 20 copied (53.6 KiB), 5 already under gitlab/\n\
             \x20 elapsed         2.5 s: 5 repositories finished in this run (2.00 repositories/s)\n\
             \x20 needs attention\n\
             \x20   group-d/project-6/broken import_skipped (too_many_retries): boom\n"
        );
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["states"]["import_done"], 7);
        assert_eq!(json["totals"]["bytes_copied"], 54_886);
        assert_eq!(json["elapsed_seconds"], 2.5);
        assert_eq!(json["finished_in_run"], 5);
        assert_eq!(json["repositories_per_second"], 2.0);
        assert_eq!(json["problems"][0]["skipped_reason"], "too_many_retries");
        assert_eq!(json.as_object().map(|o| o.len()), Some(12));
    }

    #[test]
    fn status_has_no_run_figures() {
        let view = SummaryView::new(sample());
        assert!(!view.to_string().contains("elapsed"));
        let json = serde_json::to_value(&view).expect("JSON");
        assert_eq!(json["elapsed_seconds"], serde_json::Value::Null);
        assert_eq!(json["finished_in_run"], serde_json::Value::Null);
        assert_eq!(json["repositories_per_second"], serde_json::Value::Null);
    }

    #[test]
    fn progress_lines() {
        let summary = SummaryView::new(sample());
        assert_eq!(summary.pending(), 2);
        let line = MigrateProgressView::new(&summary, 6, Duration::from_secs(2));
        assert_eq!(
            line.to_string(),
            "[########################......] 8/10 done · 2.0 repos/s · ETA 1 s · 1 in process"
        );
        let stalled = MigrateProgressView::new(&summary, 2, Duration::from_secs(2));
        assert!(stalled.to_string().contains("ETA - ·"), "{stalled}");
        let inventory = InventoryProgressView::from(InventoryProgress {
            repositories_found: 8,
            repositories_registered: 8,
            projects_registered: 4,
            list_calls: 30,
            done: true,
            elapsed_ms: 1234,
        });
        assert_eq!(
            inventory.to_string(),
            "inventory: 8 repositories found, 8 new, 4 new projects, 30 list calls, 1.2 s"
        );
    }
}
