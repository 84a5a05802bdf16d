//! The importers' records of many repositories at once, for the state rebuild.

use ferry_proto::common::v1::MigrationStatus;
use ferry_proto::importer::v1::ListMigrationStatusesRequest;
use ferry_shared::step::Step;

use super::{ImporterError, ImporterPool, LISTING_DEADLINE};

/// A repository's record in the metadata database, as an importer reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStatus {
    /// The repository.
    pub path: String,
    /// Its status; `None` when it has no row.
    pub status: Option<MigrationStatus>,
    /// The step the status belongs to (`None`: none numbered).
    pub step: Option<Step>,
    /// The recorded failure reason (empty when none).
    pub error: String,
    /// When the row last changed (`None`: no row, or the importer did not say).
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The highest fencing token a step of it was started with (0: none).
    pub fence: u64,
}

impl ImporterPool {
    /// The records of `paths` (at most the importers' batch limit, 1000) from any reachable
    /// importer (they share the metadata database), in the order asked. An answer that does not
    /// match the request, or names a step out of range, is a refusal (`OUT_OF_RANGE`).
    pub async fn recorded_statuses(
        &self,
        paths: &[String],
    ) -> Result<Vec<RecordedStatus>, ImporterError> {
        let answer = self
            .ask_any(|mut client| {
                let mut call = tonic::Request::new(ListMigrationStatusesRequest {
                    paths: paths.to_vec(),
                });
                call.set_timeout(LISTING_DEADLINE);
                async move { client.list_migration_statuses(call).await }
            })
            .await?;
        let refused = |message: String| ImporterError::Refused {
            code: tonic::Code::OutOfRange,
            message,
        };
        if answer.statuses.len() != paths.len() {
            return Err(refused(format!(
                "asked for {} repositories, answered {}",
                paths.len(),
                answer.statuses.len()
            )));
        }
        answer
            .statuses
            .into_iter()
            .zip(paths)
            .map(|(recorded, path)| {
                if &recorded.path != path {
                    return Err(refused(format!(
                        "answered {} where {path} was asked",
                        recorded.path
                    )));
                }
                let step = Step::from_wire(recorded.step)
                    .map_err(|e| refused(format!("{path}: the importer's status names {e}")))?;
                Ok(RecordedStatus {
                    status: recorded
                        .found
                        .then(|| MigrationStatus::try_from(recorded.status).unwrap_or_default()),
                    step,
                    error: recorded.error,
                    updated_at: chrono::DateTime::from_timestamp_micros(
                        recorded.updated_at_unix_micros,
                    )
                    .filter(|_| recorded.found && recorded.updated_at_unix_micros > 0),
                    fence: recorded.fence,
                    path: recorded.path,
                })
            })
            .collect()
    }
}
