//! The guard's statements: stale steps, the importer each step runs on, and skipping a step that
//! had to be canceled near its retry limit.

use std::time::Duration;

use sqlx::FromRow;

use super::SchedulerStore;

/// A step older than the staleness threshold.
#[derive(Debug, Clone, FromRow)]
pub struct StaleStep {
    /// The repository's id.
    pub id: i64,
    /// Its path.
    pub path: String,
    /// `pre_importing`, `pre_import_done` or `importing`.
    pub migration_state: String,
    /// The importer the step was started on, if recorded.
    pub migration_importer: Option<String>,
    /// Aborts so far.
    pub migration_retries_count: i32,
    /// Seconds since the step started (or, for `pre_import_done`, since the pre-import ended).
    pub age_seconds: f64,
}

/// When the current step of a repository in an in-process state started.
const STEP_STARTED: &str = "CASE migration_state \
     WHEN 'pre_importing' THEN migration_pre_import_started_at \
     WHEN 'pre_import_done' THEN migration_pre_import_done_at \
     ELSE migration_import_started_at END";

impl SchedulerStore {
    /// The highest fencing token a lease holder has written with.
    pub async fn current_fence(&self) -> Result<u64, sqlx::Error> {
        let fence: i64 = sqlx::query_scalar("SELECT fence FROM scheduler_fence")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(fence).unwrap_or(0))
    }

    /// Records the importer a step was started on (fenced).
    pub async fn record_importer(
        &self,
        id: i64,
        importer: &str,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = super::fenced(3);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_importer = $2 WHERE id = $1 {check}"
        ))
        .bind(id)
        .bind(importer)
        .bind(super::fence_param(fence))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Steps older than `older_than`, oldest first, at most `limit`.
    pub async fn stale_steps(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StaleStep>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT id, path, migration_state, migration_importer, migration_retries_count, \
                    EXTRACT(EPOCH FROM now() - COALESCE({STEP_STARTED}, 'epoch'))::float8 AS age_seconds \
             FROM container_repositories \
             WHERE migration_state IN ('pre_importing', 'pre_import_done', 'importing') \
               AND COALESCE({STEP_STARTED}, 'epoch') < now() - make_interval(secs => $1) \
             ORDER BY age_seconds DESC LIMIT $2"
        ))
        .bind(older_than.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Skips a repository whose step had to be canceled (`migration_canceled`), from `from`
    /// (fenced).
    pub async fn skip_canceled(
        &self,
        id: i64,
        from: &str,
        error: &str,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = super::fenced(4);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'import_skipped', \
                 migration_skipped_reason = 'migration_canceled', migration_skipped_at = now(), \
                 migration_aborted_in_state = migration_state, migration_last_error = left($3, 1024), \
                 updated_at = now() \
             WHERE id = $1 AND migration_state = $2 {check}"
        ))
        .bind(id)
        .bind(from)
        .bind(error)
        .bind(super::fence_param(fence))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Changes the guard's time limits (tests and the settings API).
    pub async fn set_step_limits(
        &self,
        max_step_duration: Duration,
        pre_import_timeout: Duration,
        import_timeout: Duration,
    ) -> Result<(), sqlx::Error> {
        let secs = |d: Duration| i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX);
        sqlx::query(
            "UPDATE migration_settings SET max_step_duration_secs = $1, pre_import_timeout_secs = $2, \
                 import_timeout_secs = $3, updated_at = now()",
        )
        .bind(secs(max_step_duration))
        .bind(secs(pre_import_timeout))
        .bind(secs(import_timeout))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
