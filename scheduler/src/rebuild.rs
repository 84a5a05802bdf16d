//! Rebuilding the scheduler's state after its database was lost: the states each repository's
//! record in the metadata database (as the importers report it) maps to, and the phase that
//! asks the importers and writes them.
//!
//! The whole rebuild (`RebuildState`, `ferryctl rebuild-state`) runs an inventory first, so
//! every repository of the bucket has a row, then this phase, then the double-check over all
//! time, which registers the repositories created on the new platform (`native_import`). See
//! `docs/operations.md`, "Recovery".
//!
//! Only what a step has never claimed (`default` at step 0) is written, each by a
//! compare-and-set on that state: a second rebuild finds nothing left to write, and a repository
//! a step claimed meanwhile is left to the state machine. The step number written is the
//! importer's, so the scheduler's next step is numbered above it and the importer accepts it.

use std::time::Instant;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::step::Step;

use crate::importers::{ImporterError, ImporterPool, RecordedStatus};
use crate::state::{MigrationState, SkipReason};
use crate::store::SchedulerStore;

/// Repositories asked of the importers per call when the request gives no batch size.
pub const DEFAULT_BATCH: u32 = 500;
/// The importers' own limit of one call.
pub const MAX_BATCH: u32 = 1000;
/// Most paths a rebuild lists by name (the canceled ones).
pub const LISTED_PATHS: usize = 100;

/// What a repository's recorded status rebuilds it into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuilt {
    /// `import_complete`: `import_done`.
    Done,
    /// `native`: `import_done` with `native_import`, as a repository created on the new
    /// platform.
    Native,
    /// `pre_import_complete`: `pre_import_done`, its final import next.
    PreImportDone,
    /// `pre_import_in_progress`: `pre_importing` at the importer's step; the guard asks the
    /// importers once it is stale, and settles it.
    PreImporting,
    /// `import_in_progress`: `importing` at the importer's step, as for a pre-import.
    Importing,
    /// `pre_import_failed` or `pre_import_canceled`: `import_aborted` in `pre_importing`, retried
    /// with a new pre-import.
    AbortedPreImport,
    /// `import_failed` or `import_canceled`: `import_aborted` in `importing`, its pre-import
    /// counted done, retried with a new final import.
    AbortedImport,
}

impl Rebuilt {
    /// The state for `status` (`None`: no row, or a status no step records: stays `default`).
    pub fn of(status: MigrationStatus) -> Option<Self> {
        use MigrationStatus::*;
        Some(match status {
            ImportComplete => Self::Done,
            Native => Self::Native,
            PreImportComplete => Self::PreImportDone,
            PreImportInProgress => Self::PreImporting,
            ImportInProgress => Self::Importing,
            PreImportFailed | PreImportCanceled => Self::AbortedPreImport,
            ImportFailed | ImportCanceled => Self::AbortedImport,
            Unspecified => return None,
        })
    }

    /// The scheduler state written.
    pub fn state(self) -> MigrationState {
        match self {
            Self::Done | Self::Native => MigrationState::ImportDone,
            Self::PreImportDone => MigrationState::PreImportDone,
            Self::PreImporting => MigrationState::PreImporting,
            Self::Importing => MigrationState::Importing,
            Self::AbortedPreImport | Self::AbortedImport => MigrationState::ImportAborted,
        }
    }

    /// The reason recorded with the state (`native_import` for a native repository).
    pub fn skipped_reason(self) -> Option<SkipReason> {
        (self == Self::Native).then_some(SkipReason::NativeImport)
    }

    /// The state an aborted repository was aborted in.
    pub fn aborted_in_state(self) -> Option<MigrationState> {
        match self {
            Self::AbortedPreImport => Some(MigrationState::PreImporting),
            Self::AbortedImport => Some(MigrationState::Importing),
            _ => None,
        }
    }

    /// The timestamps written: pre-import started and done, final import started and done,
    /// aborted. `since` is when the record last changed (the step's claim for a step in
    /// progress, its end otherwise). A finished pre-import is stamped `now`: the guard counts
    /// its wait for the final import from then, not from before the database was lost.
    pub fn stamps(
        self,
        since: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> [Option<chrono::DateTime<chrono::Utc>>; 5] {
        let at = Some(since.unwrap_or(now));
        match self {
            Self::Done => [None, at, None, at, None],
            Self::Native => [None, None, None, at, None],
            Self::PreImportDone => [None, Some(now), None, None, None],
            Self::PreImporting => [at, None, None, None, None],
            Self::Importing => [None, at, at, None, None],
            Self::AbortedPreImport => [None, None, None, None, Some(now)],
            Self::AbortedImport => [None, at, None, None, Some(now)],
        }
    }

    /// Whether it came from a canceled step (an operator's cancel or the guard's: the importers
    /// record them alike).
    fn from_cancel(status: MigrationStatus) -> bool {
        matches!(
            status,
            MigrationStatus::PreImportCanceled | MigrationStatus::ImportCanceled
        )
    }
}

/// One repository's rebuilt state, to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltState {
    /// The repository.
    pub path: String,
    /// What it is rebuilt into.
    pub kind: Rebuilt,
    /// The importer's step (the scheduler numbers its next step above it).
    pub step: Option<Step>,
    /// `migration_last_error` (for an aborted one: the importer's recorded reason).
    pub last_error: Option<String>,
    /// When the importer's record last changed.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl RebuiltState {
    /// The state `recorded` rebuilds (`None`: it stays `default`).
    pub fn from_recorded(recorded: RecordedStatus) -> Option<Self> {
        let status = recorded.status?;
        let kind = Rebuilt::of(status)?;
        let last_error = kind.aborted_in_state().map(|_| {
            let reason = if recorded.error.is_empty() {
                status.as_db_str()
            } else {
                recorded.error.as_str()
            };
            let reason: String = reason.chars().take(900).collect();
            format!(
                "{}: {reason} (rebuilt from the importers' record; retries restart at 0)",
                status.as_db_str()
            )
        });
        Some(Self {
            path: recorded.path,
            kind,
            step: recorded.step,
            last_error,
            since: recorded.updated_at,
        })
    }
}

/// Why the statuses phase stopped.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The scheduler database failed.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
    /// No importer answered, or one refused.
    #[error("asking the importers: {0}")]
    Importers(#[from] ImporterError),
}

/// What the statuses phase did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusesReport {
    /// Repositories whose record was asked.
    pub checked: u64,
    /// States written.
    pub rebuilt: u64,
    /// Of those, `import_aborted` ones (retry counts restart at 0).
    pub retries_reset: u64,
    /// Aborted ones that came from a canceled step (at most [`LISTED_PATHS`]).
    pub canceled_paths: Vec<String>,
    /// How many came from a canceled step in all.
    pub canceled: u64,
    /// The highest fencing token the importers recorded for the repositories asked.
    pub max_fence: u64,
}

/// Asks the importers for the record of every unclaimed repository, `batch` at a time, and
/// writes the states they map to, calling `progress` after each batch.
pub async fn rebuild_statuses(
    store: &SchedulerStore,
    importers: &ImporterPool,
    batch: u32,
    mut progress: impl FnMut(&StatusesReport),
) -> Result<StatusesReport, RebuildError> {
    let mut report = StatusesReport::default();
    let mut after = String::new();
    let started = Instant::now();
    loop {
        let paths = store.unclaimed_paths(&after, i64::from(batch)).await?;
        let Some(last) = paths.last() else {
            break;
        };
        after = last.clone();
        let recorded = importers.recorded_statuses(&paths).await?;
        let mut canceled = Vec::new();
        let rows: Vec<RebuiltState> = recorded
            .into_iter()
            .filter_map(|recorded| {
                report.max_fence = report.max_fence.max(recorded.fence);
                if recorded.status.is_some_and(Rebuilt::from_cancel) {
                    canceled.push(recorded.path.clone());
                }
                RebuiltState::from_recorded(recorded)
            })
            .collect();
        let written = store.write_rebuilt(&rows).await?;
        report.checked += paths.len() as u64;
        report.rebuilt += written.states.len() as u64;
        for (path, state) in &written.states {
            if *state == MigrationState::ImportAborted {
                report.retries_reset += 1;
                if canceled.contains(path) {
                    report.canceled += 1;
                    if report.canceled_paths.len() < LISTED_PATHS {
                        report.canceled_paths.push(path.clone());
                    }
                }
            }
        }
        tracing::info!(
            checked = report.checked,
            rebuilt = report.rebuilt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuild: batch of recorded statuses applied"
        );
        progress(&report);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationStatus::*;

    #[test]
    fn every_recorded_status_maps_to_the_state_its_end_would_leave() {
        let cases = [
            (ImportComplete, MigrationState::ImportDone),
            (Native, MigrationState::ImportDone),
            (PreImportComplete, MigrationState::PreImportDone),
            (PreImportInProgress, MigrationState::PreImporting),
            (ImportInProgress, MigrationState::Importing),
            (PreImportFailed, MigrationState::ImportAborted),
            (PreImportCanceled, MigrationState::ImportAborted),
            (ImportFailed, MigrationState::ImportAborted),
            (ImportCanceled, MigrationState::ImportAborted),
        ];
        for (status, state) in cases {
            assert_eq!(
                Rebuilt::of(status).map(Rebuilt::state),
                Some(state),
                "{status:?}"
            );
        }
        assert_eq!(Rebuilt::of(Unspecified), None);
        assert_eq!(
            Rebuilt::of(Native).and_then(Rebuilt::skipped_reason),
            Some(SkipReason::NativeImport)
        );
        assert_eq!(
            Rebuilt::of(ImportFailed).and_then(Rebuilt::aborted_in_state),
            Some(MigrationState::Importing)
        );
    }

    #[test]
    fn a_failed_final_import_counts_its_pre_import_done_and_keeps_the_reason() {
        let since = chrono::DateTime::from_timestamp(1_700_000_000, 0);
        let recorded = RecordedStatus {
            path: "g/p/app".into(),
            status: Some(ImportFailed),
            step: Step::from_wire(7).unwrap(),
            error: "blob missing".into(),
            updated_at: since,
            fence: 3,
        };
        let rebuilt = RebuiltState::from_recorded(recorded).expect("rebuilt");
        assert_eq!(rebuilt.step, Step::from_wire(7).unwrap());
        assert!(
            rebuilt
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("import_failed: blob missing")),
            "{rebuilt:?}"
        );
        let now = chrono::Utc::now();
        let [_, pre_done, _, _, aborted] = rebuilt.kind.stamps(since, now);
        assert_eq!((pre_done, aborted), (since, Some(now)));
        let none = RecordedStatus {
            path: "g/p/new".into(),
            status: None,
            step: None,
            error: String::new(),
            updated_at: None,
            fence: 0,
        };
        assert_eq!(RebuiltState::from_recorded(none), None);
    }
}
