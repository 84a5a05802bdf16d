//! The double-check's statements: which paths exist, and creating those created on the new
//! platform whose create events were dropped.

use std::collections::HashSet;

use super::{NewRepository, SchedulerStore};

impl SchedulerStore {
    /// Which of `paths` have a row.
    #[tracing::instrument(name = "db.existing_paths", skip_all, err(level = "warn"))]
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
    #[tracing::instrument(name = "db.register_native", skip_all, err(level = "warn"))]
    pub async fn register_native(&self, batch: &[NewRepository]) -> Result<u64, sqlx::Error> {
        let projects: Vec<&str> = batch.iter().map(|r| r.project_path.as_str()).collect();
        sqlx::query(
            "INSERT INTO projects (full_path) SELECT DISTINCT p FROM UNNEST($1::text[]) AS p \
             ORDER BY p ON CONFLICT (full_path) DO NOTHING",
        )
        .bind(&projects)
        .execute(&self.pool)
        .await?;
        let mut conn = self.pool.acquire().await?;
        super::repair::register_native_on(&mut conn, batch).await
    }

    /// When the last full repair pass started, if one finished: the double-check's safe bound
    /// (a repository created while the pass ran may have been missed by it).
    #[tracing::instrument(name = "db.last_full_repair_pass", skip_all, err(level = "warn"))]
    pub async fn last_full_repair_pass(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, sqlx::Error> {
        sqlx::query_scalar("SELECT max(started_at) FROM repair_passes")
            .fetch_one(&self.pool)
            .await
    }
}
