//! The double-check's statements: which paths exist, and creating those created on the new
//! platform whose create events were dropped.

use std::collections::HashSet;

use super::{NewRepository, SchedulerStore};

impl SchedulerStore {
    /// Which of `paths` have a row.
    pub async fn existing_paths(&self, paths: &[String]) -> Result<HashSet<String>, sqlx::Error> {
        let found: Vec<String> =
            sqlx::query_scalar("SELECT path FROM container_repositories WHERE path = ANY($1)")
                .bind(paths)
                .fetch_all(&self.pool)
                .await?;
        Ok(found.into_iter().collect())
    }

    /// Creates repositories that live on the new platform already (`import_done`,
    /// `native_import`); existing ones are left alone. Returns how many were created.
    pub async fn register_native(&self, batch: &[NewRepository]) -> Result<u64, sqlx::Error> {
        let paths: Vec<&str> = batch.iter().map(|r| r.path.as_str()).collect();
        let projects: Vec<&str> = batch.iter().map(|r| r.project_path.as_str()).collect();
        let names: Vec<&str> = batch.iter().map(|r| r.name.as_str()).collect();
        sqlx::query(
            "INSERT INTO projects (full_path) SELECT DISTINCT p FROM UNNEST($1::text[]) AS p \
             ORDER BY p ON CONFLICT (full_path) DO NOTHING",
        )
        .bind(&projects)
        .execute(&self.pool)
        .await?;
        let created = sqlx::query(
            "INSERT INTO container_repositories (project_id, name, path, migration_state, \
                 migration_skipped_reason, migration_import_done_at) \
             SELECT p.id, i.name, i.path, 'import_done', 'native_import', now() \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS i(path, project_path, name) \
             JOIN projects p ON p.full_path = i.project_path \
             ORDER BY i.path ON CONFLICT (path) DO NOTHING",
        )
        .bind(&paths)
        .bind(&projects)
        .bind(&names)
        .execute(&self.pool)
        .await?;
        Ok(created.rows_affected())
    }

    /// When the last full repair pass finished, if one did.
    pub async fn last_full_repair_pass(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
        sqlx::query_scalar("SELECT max(finished_at) FROM repair_passes")
            .fetch_one(&self.pool)
            .await
    }
}
