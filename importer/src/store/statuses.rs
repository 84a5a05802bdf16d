//! The scheduler's state rebuild reads the record of many repositories at once.

use sqlx::Row;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::Step;

use super::MetadataStore;

/// A repository's migration record, as [`MetadataStore::migration_statuses`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedStatus {
    /// Its path.
    pub path: String,
    /// `migration_status`.
    pub status: MigrationStatus,
    /// The step the status belongs to (`None`: no numbered step).
    pub step: Option<Step>,
    /// `migration_error`.
    pub error: Option<String>,
    /// When the row last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// The highest scheduler fencing token a step of it was started with.
    pub fence: u64,
}

impl MetadataStore {
    /// The rows of those of `paths` that have one, in one statement (any order).
    #[tracing::instrument(name = "db.migration_statuses", skip_all, err(level = "warn"))]
    pub async fn migration_statuses(
        &self,
        paths: &[RepositoryPath],
    ) -> Result<Vec<RecordedStatus>, sqlx::Error> {
        let paths: Vec<&str> = paths.iter().map(RepositoryPath::as_str).collect();
        let rows = sqlx::query(
            "SELECT path, migration_status, migration_step, migration_error, updated_at, migration_fence \
             FROM repositories WHERE path = ANY($1)",
        )
        .bind(&paths)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|row| RecordedStatus {
                path: row.get("path"),
                status: super::status_of(row),
                step: super::step_of(row),
                error: row.get("migration_error"),
                updated_at: row.get("updated_at"),
                fence: u64::try_from(row.get::<i64, _>("migration_fence")).unwrap_or(0),
            })
            .collect())
    }
}
