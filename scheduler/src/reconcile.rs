//! What to do with an aborted repository before retrying it, from the importer's status (the
//! original's `reconcile_import_status` / `retry_aborted_migration`): a step that in fact
//! completed is finished rather than redone, one still running is resumed without a new start,
//! and only a failed, canceled or unknown step is started again.

use ferry_proto::common::v1::MigrationStatus;

/// How to resume an aborted repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Already on the new platform, created there: `import_done` (`native_import`).
    FinishNative,
    /// Its final import completed (the notification was lost): `import_done`.
    FinishImport,
    /// A pre-import is running: back to `pre_importing`, without a new start.
    WatchPreImport,
    /// A final import is running: back to `importing`, without a new start.
    WatchImport,
    /// Start a pre-import again.
    RetryPreImport,
    /// Start the final import (again).
    RetryImport,
}

/// The resumption for `status` (`None`: the importer could not say), given whether it belongs
/// to the repository's aborted step (`same_step`) and whether its pre-import had finished. A
/// step in progress is watched only if it is the aborted step itself; an older one is taken over
/// by a new step.
pub fn resume(status: Option<MigrationStatus>, same_step: bool, pre_import_done: bool) -> Resume {
    use MigrationStatus::*;
    match status {
        Some(Native) => Resume::FinishNative,
        Some(ImportComplete) => Resume::FinishImport,
        Some(PreImportInProgress) if same_step => Resume::WatchPreImport,
        Some(ImportInProgress) if same_step => Resume::WatchImport,
        Some(PreImportInProgress | ImportInProgress) if pre_import_done => Resume::RetryImport,
        Some(PreImportInProgress | ImportInProgress) => Resume::RetryPreImport,
        Some(PreImportComplete | ImportFailed | ImportCanceled) => Resume::RetryImport,
        Some(PreImportFailed | PreImportCanceled) => Resume::RetryPreImport,
        Some(Unspecified) | None if pre_import_done => Resume::RetryImport,
        Some(Unspecified) | None => Resume::RetryPreImport,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MigrationStatus::*;

    #[test]
    fn follows_the_original_reconciliation_table() {
        assert_eq!(resume(Some(Native), true, false), Resume::FinishNative);
        assert_eq!(
            resume(Some(ImportComplete), false, true),
            Resume::FinishImport
        );
        assert_eq!(
            resume(Some(PreImportInProgress), true, false),
            Resume::WatchPreImport
        );
        assert_eq!(
            resume(Some(ImportInProgress), true, true),
            Resume::WatchImport
        );
        assert_eq!(
            resume(Some(PreImportComplete), true, false),
            Resume::RetryImport
        );
        assert_eq!(resume(Some(ImportFailed), true, true), Resume::RetryImport);
        assert_eq!(
            resume(Some(ImportCanceled), true, true),
            Resume::RetryImport
        );
        assert_eq!(
            resume(Some(PreImportFailed), true, true),
            Resume::RetryPreImport
        );
        assert_eq!(
            resume(Some(PreImportCanceled), true, false),
            Resume::RetryPreImport
        );
        assert_eq!(resume(None, false, true), Resume::RetryImport);
        assert_eq!(resume(None, false, false), Resume::RetryPreImport);
    }

    #[test]
    fn an_older_step_in_progress_is_taken_over_not_watched() {
        assert_eq!(
            resume(Some(PreImportInProgress), false, false),
            Resume::RetryPreImport
        );
        assert_eq!(
            resume(Some(ImportInProgress), false, true),
            Resume::RetryImport
        );
    }
}
