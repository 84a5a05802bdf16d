//! `ListMigrationStatuses`: the metadata database's record of many repositories at once, for the
//! scheduler's state rebuild.

use std::collections::HashMap;

use ferry_proto::importer::v1::{MigrationStatusList, RecordedMigrationStatus};
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::MaybeStep;

use super::Importer;
use crate::error::ApiError;

/// Most paths in one `ListMigrationStatuses` call.
pub const MAX_STATUS_PATHS: usize = 1000;

impl Importer {
    /// The record of each of `paths`, in their order (`found` false for one without a row).
    pub(super) async fn recorded_statuses(
        &self,
        paths: &[String],
    ) -> Result<MigrationStatusList, ApiError> {
        if paths.is_empty() || paths.len() > MAX_STATUS_PATHS {
            return Err(ApiError::InvalidArgument(format!(
                "paths must hold 1 to {MAX_STATUS_PATHS} paths, not {}",
                paths.len()
            )));
        }
        let parsed = paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                RepositoryPath::parse(path)
                    .map_err(|e| ApiError::InvalidArgument(format!("paths[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows: HashMap<String, _> = self
            .inner
            .db
            .migration_statuses(&parsed)
            .await?
            .into_iter()
            .map(|row| (row.path.clone(), row))
            .collect();
        let statuses = paths
            .iter()
            .map(|path| match rows.remove(path) {
                Some(row) => RecordedMigrationStatus {
                    path: path.clone(),
                    found: true,
                    status: row.status.into(),
                    step: row.step.wire(),
                    error: row.error.unwrap_or_default(),
                    updated_at_unix_micros: row.updated_at.timestamp_micros(),
                    fence: row.fence,
                },
                None => RecordedMigrationStatus {
                    path: path.clone(),
                    ..RecordedMigrationStatus::default()
                },
            })
            .collect();
        Ok(MigrationStatusList { statuses })
    }
}
