//! Reads of repositories and their figures: one by path, the ones that need attention, counts
//! by state and the sums of every repository's step figures.

use sqlx::Row as _;

use ferry_proto::common::v1::ImportStats;

use super::{REPOSITORY_COLUMNS, RepositoryRecord, SchedulerStore};
use crate::state::MigrationState;

impl SchedulerStore {
    /// One repository by path.
    #[tracing::instrument(name = "db.repository", skip_all, err(level = "warn"))]
    pub async fn repository(&self, path: &str) -> Result<Option<RepositoryRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id \
             WHERE r.path = $1"
        ))
        .bind(path)
        .fetch_optional(&self.pool)
        .await
    }

    /// Repositories that ended skipped, aborted, or done without being imported (at most `limit`).
    #[tracing::instrument(name = "db.problems", skip_all, err(level = "warn"))]
    pub async fn problems(&self, limit: i64) -> Result<Vec<RepositoryRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id \
             WHERE r.migration_state IN ('import_skipped', 'import_aborted') \
                OR (r.migration_state = 'import_done' AND r.migration_skipped_reason IS NOT NULL) \
             ORDER BY r.path LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Repository counts by state.
    #[tracing::instrument(name = "db.state_counts", skip_all, err(level = "warn"))]
    pub async fn state_counts(&self) -> Result<Vec<(MigrationState, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT migration_state, count(*) AS n FROM container_repositories GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("migration_state"), row.get("n")))
            .collect())
    }

    /// Sums of every repository's step figures.
    #[tracing::instrument(name = "db.totals", skip_all, err(level = "warn"))]
    pub async fn totals(&self) -> Result<ImportStats, sqlx::Error> {
        let row = sqlx::query(
            "SELECT COALESCE(sum(import_manifests), 0)::bigint AS manifests, COALESCE(sum(import_tags), 0)::bigint AS tags, \
                    COALESCE(sum(import_blobs), 0)::bigint AS blobs, COALESCE(sum(import_blobs_copied), 0)::bigint AS blobs_copied, \
                    COALESCE(sum(import_bytes_copied), 0)::bigint AS bytes_copied, \
                    COALESCE(sum(import_blobs_present), 0)::bigint AS blobs_present, \
                    COALESCE(sum(import_tags_skipped), 0)::bigint AS tags_skipped, \
                    COALESCE(sum(import_duration_ms), 0)::bigint AS duration_ms, \
                    COALESCE(sum(import_manifests_skipped), 0)::bigint AS manifests_skipped, \
                    COALESCE(sum(import_layers_skipped), 0)::bigint AS layers_skipped \
             FROM container_repositories",
        )
        .fetch_one(&self.pool)
        .await?;
        let get = |name: &str| u64::try_from(row.get::<i64, _>(name)).unwrap_or(0);
        Ok(ImportStats {
            manifests: get("manifests"),
            tags: get("tags"),
            blobs: get("blobs"),
            blobs_copied: get("blobs_copied"),
            bytes_copied: get("bytes_copied"),
            blobs_present: get("blobs_present"),
            tags_skipped: get("tags_skipped"),
            duration_ms: get("duration_ms"),
            manifests_skipped: get("manifests_skipped"),
            layers_skipped: get("layers_skipped"),
        })
    }
}
