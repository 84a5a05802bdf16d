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

/// The resumption for `status` (`None`: the importer could not say), given whether the
/// repository's pre-import had finished.
pub fn resume(status: Option<MigrationStatus>, pre_import_done: bool) -> Resume {
    use MigrationStatus::*;
    match status {
        Some(Native) => Resume::FinishNative,
        Some(ImportComplete) => Resume::FinishImport,
        Some(PreImportInProgress) => Resume::WatchPreImport,
        Some(ImportInProgress) => Resume::WatchImport,
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
        assert_eq!(resume(Some(Native), false), Resume::FinishNative);
        assert_eq!(resume(Some(ImportComplete), true), Resume::FinishImport);
        assert_eq!(
            resume(Some(PreImportInProgress), false),
            Resume::WatchPreImport
        );
        assert_eq!(resume(Some(ImportInProgress), true), Resume::WatchImport);
        assert_eq!(resume(Some(PreImportComplete), false), Resume::RetryImport);
        assert_eq!(resume(Some(ImportFailed), true), Resume::RetryImport);
        assert_eq!(resume(Some(ImportCanceled), true), Resume::RetryImport);
        assert_eq!(resume(Some(PreImportFailed), true), Resume::RetryPreImport);
        assert_eq!(
            resume(Some(PreImportCanceled), false),
            Resume::RetryPreImport
        );
        assert_eq!(resume(None, true), Resume::RetryImport);
        assert_eq!(resume(None, false), Resume::RetryPreImport);
    }
}
