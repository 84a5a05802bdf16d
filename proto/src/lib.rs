//! Ferry's gRPC contracts, generated from the `.proto` files beside this crate.
//!
//! - [`common::v1`]: types both services share (import types, statuses, step figures).
//! - [`importer::v1`]: the importer service the scheduler drives.
//! - [`scheduler::v1`]: the scheduler service importers call back and `ferryctl` drives.

/// Shared types.
pub mod common {
    /// Version 1.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ferry.common.v1");
    }
}

/// The importer service.
pub mod importer {
    /// Version 1.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ferry.importer.v1");
    }
}

/// The scheduler service.
pub mod scheduler {
    /// Version 1.
    #[allow(missing_docs, clippy::all)]
    pub mod v1 {
        tonic::include_proto!("ferry.scheduler.v1");
    }
}

/// Encoded file descriptor set of every Ferry proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ferry_descriptor");

use common::v1::{DifferenceKind, MigrationStatus};

impl DifferenceKind {
    /// The kind's short name, as `ferryctl verify` prints it and the metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            DifferenceKind::Unspecified => "unspecified",
            DifferenceKind::NotMigrated => "not_migrated",
            DifferenceKind::TagMissing => "tag_missing",
            DifferenceKind::TagExtra => "tag_extra",
            DifferenceKind::TagMoved => "tag_moved",
            DifferenceKind::ManifestMissing => "manifest_missing",
            DifferenceKind::ManifestDiffers => "manifest_differs",
            DifferenceKind::ReferencesDiffer => "references_differ",
            DifferenceKind::BlobNotRegistered => "blob_not_registered",
            DifferenceKind::BlobMissing => "blob_missing",
            DifferenceKind::BlobSizeDiffers => "blob_size_differs",
            DifferenceKind::BlobContentDiffers => "blob_content_differs",
        }
    }
}

impl MigrationStatus {
    /// The status as stored in the metadata database (`repositories.migration_status`).
    pub fn as_db_str(self) -> &'static str {
        match self {
            MigrationStatus::Unspecified => "unspecified",
            MigrationStatus::Native => "native",
            MigrationStatus::PreImportInProgress => "pre_import_in_progress",
            MigrationStatus::PreImportComplete => "pre_import_complete",
            MigrationStatus::PreImportFailed => "pre_import_failed",
            MigrationStatus::PreImportCanceled => "pre_import_canceled",
            MigrationStatus::ImportInProgress => "import_in_progress",
            MigrationStatus::ImportComplete => "import_complete",
            MigrationStatus::ImportFailed => "import_failed",
            MigrationStatus::ImportCanceled => "import_canceled",
        }
    }

    /// Parses a stored status; `None` for an unknown string.
    pub fn from_db_str(value: &str) -> Option<Self> {
        Some(match value {
            "native" => MigrationStatus::Native,
            "pre_import_in_progress" => MigrationStatus::PreImportInProgress,
            "pre_import_complete" => MigrationStatus::PreImportComplete,
            "pre_import_failed" => MigrationStatus::PreImportFailed,
            "pre_import_canceled" => MigrationStatus::PreImportCanceled,
            "import_in_progress" => MigrationStatus::ImportInProgress,
            "import_complete" => MigrationStatus::ImportComplete,
            "import_failed" => MigrationStatus::ImportFailed,
            "import_canceled" => MigrationStatus::ImportCanceled,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::common::v1::MigrationStatus;

    #[test]
    fn every_status_round_trips_through_its_database_name() {
        for code in 1..=9 {
            let status = MigrationStatus::try_from(code).expect("known status");
            assert_eq!(
                MigrationStatus::from_db_str(status.as_db_str()),
                Some(status)
            );
        }
        assert_eq!(MigrationStatus::from_db_str("bogus"), None);
    }
}
