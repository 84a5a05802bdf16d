//! The guard's statements: stale steps, the importer each step runs on, and skipping a step that
//! had to be canceled near its retry limit.

use std::time::Duration;

use ferry_shared::step::{MaybeStep, Step};
use sqlx::FromRow;

use super::{SchedulerStore, StepColumn};
use crate::state::MigrationState;

/// A step older than the staleness threshold.
#[derive(Debug, Clone, FromRow)]
pub struct StaleStep {
    /// The repository's id.
    pub id: i64,
    /// Its path.
    pub path: String,
    /// `pre_importing`, `pre_import_done` or `importing`.
    pub migration_state: MigrationState,
    /// The importer the step was started on, if recorded.
    pub migration_importer: Option<String>,
    /// The step's number (`None`: a step from before steps were numbered).
    #[sqlx(try_from = "StepColumn")]
    pub migration_step: Option<Step>,
    /// Aborts so far.
    pub migration_retries_count: i32,
    /// Seconds since the step started (or, for `pre_import_done`, since the pre-import ended).
    pub age_seconds: f64,
    /// Tags counted when the pre-import started.
    pub migration_tags_count: Option<i32>,
}

/// When the current step of a repository in an in-process state started.
const STEP_STARTED: &str = "CASE migration_state \
     WHEN 'pre_importing' THEN migration_pre_import_started_at \
     WHEN 'pre_import_done' THEN migration_pre_import_done_at \
     ELSE migration_import_started_at END";

impl SchedulerStore {
    /// Raises the fence to a new lease holder's token before it writes anything: waits for every
    /// write still holding an older token (see `fenced`), and refuses them from then on. False
    /// if a newer token is there already.
    #[tracing::instrument(name = "db.raise_fence", skip_all, err(level = "warn"))]
    pub async fn raise_fence(&self, fence: u64) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE scheduler_fence SET fence = $1, updated_at = now() WHERE fence <= $1",
        )
        .bind(super::to_i64(fence))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The highest fencing token a lease holder has written with.
    #[tracing::instrument(name = "db.current_fence", skip_all, err(level = "warn"))]
    pub async fn current_fence(&self) -> Result<u64, sqlx::Error> {
        let fence: i64 = sqlx::query_scalar("SELECT fence FROM scheduler_fence")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(fence).unwrap_or(0))
    }

    /// Records the importer that accepted step `step`, and when (`accepted_at`, the importer's
    /// own time of its claim; now when it did not say), fenced, with the repository's tag count
    /// when the step counted them (a pre-import; the guard's limit for it grows with it). Only
    /// while the repository is at that step, whatever its state: a short step can end before its
    /// start is recorded, but a late record must never land on the next step.
    #[tracing::instrument(name = "db.record_importer", skip_all, err(level = "warn"))]
    pub async fn record_importer(
        &self,
        id: i64,
        step: Step,
        importer: &str,
        accepted_at: Option<chrono::DateTime<chrono::Utc>>,
        tags_count: Option<i32>,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = super::fenced(3);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_importer = $2, \
                 migration_step_accepted_at = COALESCE($6, now()), \
                 migration_tags_count = COALESCE($5, migration_tags_count) \
             WHERE id = $1 AND migration_step = $4 {check}"
        ))
        .bind(id)
        .bind(importer)
        .bind(super::fence_param(fence))
        .bind(step.db())
        .bind(tags_count)
        .bind(accepted_at)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Steps older than `older_than`, oldest first, at most `limit`.
    #[tracing::instrument(name = "db.stale_steps", skip_all, err(level = "warn"))]
    pub async fn stale_steps(
        &self,
        older_than: Duration,
        limit: i64,
    ) -> Result<Vec<StaleStep>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT id, path, migration_state, migration_importer, migration_step, migration_retries_count, migration_tags_count, \
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

    /// Skips a repository pre-importing at step `step` with too many tags (`too_many_tags`,
    /// fenced), recording the count.
    #[tracing::instrument(name = "db.skip_too_many_tags", skip_all, err(level = "warn"))]
    pub async fn skip_too_many_tags(
        &self,
        id: i64,
        step: Step,
        tags: i32,
        limit: i32,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = super::fenced(4);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'import_skipped', \
                 migration_skipped_reason = 'too_many_tags', migration_skipped_at = now(), migration_tags_count = $2, \
                 migration_last_error = $2 || ' tags, over the limit of ' || $3, \
                 migration_cancel_requested = NULL, updated_at = now() \
             WHERE id = $1 AND migration_state = 'pre_importing' AND migration_step = $5 {check}"
        ))
        .bind(id)
        .bind(tags)
        .bind(limit)
        .bind(super::fence_param(fence))
        .bind(step.db())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Skips a repository whose step `step` had to be canceled (`migration_canceled`), from
    /// `from` (fenced).
    #[tracing::instrument(name = "db.skip_canceled", skip_all, err(level = "warn"))]
    pub async fn skip_canceled(
        &self,
        id: i64,
        step: Option<Step>,
        from: MigrationState,
        error: &str,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = super::fenced(4);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'import_skipped', \
                 migration_skipped_reason = 'migration_canceled', migration_skipped_at = now(), \
                 migration_aborted_in_state = migration_state, migration_last_error = left($3, 1024), \
                 migration_cancel_requested = NULL, updated_at = now() \
             WHERE id = $1 AND migration_state = $2 AND migration_step = $5 {check}"
        ))
        .bind(id)
        .bind(from)
        .bind(error)
        .bind(super::fence_param(fence))
        .bind(step.db())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}
