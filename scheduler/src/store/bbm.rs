//! Batched background migrations: their rows, their jobs, and the advisory lock that lets one
//! worker at a time, across every replica, run a job.
//!
//! The worker's statements take the one connection that holds the session advisory lock
//! ([`SchedulerStore::lock_background_migrations`]); every status change is a compare-and-set on
//! the current status, so a pause that lands mid-run wins over the worker.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{FromRow, PgConnection, Postgres};

use super::SchedulerStore;

/// The advisory lock key of the background migration worker ("FERRYBBM" in ASCII).
const LOCK_KEY: i64 = 0x4645_5252_5942_424D;

/// Statuses the worker picks a migration in.
const RUNNABLE: [&str; 2] = ["active", "running"];

/// One batched background migration.
#[derive(Debug, Clone, FromRow)]
pub struct BackgroundMigration {
    /// Its id.
    pub id: i64,
    /// Its unique name.
    pub name: String,
    /// The registered work function that runs its jobs.
    pub job_signature_name: String,
    /// The table whose column the jobs' ranges cover.
    pub table_name: String,
    /// That column (an integer column).
    pub column_name: String,
    /// First value of the range (inclusive).
    pub min_value: i64,
    /// Last value of the range (inclusive).
    pub max_value: i64,
    /// Most rows per job.
    pub batch_size: i32,
    /// active, paused, running, finished or failed.
    pub status: String,
    /// Why it failed.
    pub failure_error_code: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its first job started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished or failed.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One job: a range of a migration's column.
#[derive(Debug, Clone, FromRow)]
pub struct BackgroundMigrationJob {
    /// Its id.
    pub id: i64,
    /// First value (inclusive).
    pub min_value: i64,
    /// Last value (inclusive).
    pub max_value: i64,
    /// active, running, finished or failed.
    pub status: String,
    /// Attempts started so far.
    pub attempts: i32,
    /// Why the last attempt failed.
    pub failure_error_code: Option<String>,
    /// The last attempt's error message.
    pub last_error: Option<String>,
}

/// A migration with figures over its jobs.
#[derive(Debug, Clone, FromRow)]
pub struct BackgroundMigrationProgress {
    /// The migration.
    #[sqlx(flatten)]
    pub migration: BackgroundMigration,
    /// Jobs created so far.
    pub jobs: i64,
    /// Jobs finished.
    pub jobs_finished: i64,
    /// Jobs whose last attempt failed.
    pub jobs_failed: i64,
    /// Attempts over all jobs.
    pub attempts: i64,
    /// Time spent in work functions over all jobs, in milliseconds.
    pub work_ms: i64,
    /// The end of the highest job created: how far the range has been cut into jobs.
    pub covered_to: Option<i64>,
    /// The last error of any failed job.
    pub last_error: Option<String>,
}

/// A migration to create.
#[derive(Debug, Clone)]
pub struct NewBackgroundMigration {
    /// Unique name.
    pub name: String,
    /// Work function name.
    pub job_signature_name: String,
    /// Table to page over.
    pub table_name: String,
    /// Integer column of that table.
    pub column_name: String,
    /// Range start.
    pub min_value: i64,
    /// Range end.
    pub max_value: i64,
    /// Rows per job.
    pub batch_size: i32,
}

/// Whether a migration's target exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetCheck {
    /// Table and column exist.
    Valid,
    /// No such table.
    UnknownTable,
    /// The table has no such column.
    UnknownColumn,
}

const MIGRATION_COLUMNS: &str = "m.id, m.name, m.job_signature_name, m.table_name, \
    m.column_name, m.min_value, m.max_value, m.batch_size, m.status, m.failure_error_code, \
    m.created_at, m.started_at, m.finished_at";

const JOB_COLUMNS: &str =
    "id, min_value, max_value, status, attempts, failure_error_code, last_error";

/// Quotes an identifier for PostgreSQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SchedulerStore {
    /// Takes the worker's session advisory lock on a connection of its own; `None` when another
    /// worker holds it. The lock lives as long as the connection's session: release it with
    /// [`unlock_background_migrations`], or close the connection (a crash does).
    #[tracing::instrument(name = "db.lock_background_migrations", skip_all, err(level = "warn"))]
    pub async fn lock_background_migrations(
        &self,
    ) -> Result<Option<PoolConnection<Postgres>>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LOCK_KEY)
            .fetch_one(&mut *conn)
            .await?;
        Ok(locked.then_some(conn))
    }

    /// Creates a migration, `active`.
    #[tracing::instrument(name = "db.create_background_migration", skip_all, err(level = "warn"))]
    pub async fn create_background_migration(
        &self,
        new: &NewBackgroundMigration,
    ) -> Result<BackgroundMigration, sqlx::Error> {
        sqlx::query_as(&format!(
            "INSERT INTO batched_background_migrations AS m (name, job_signature_name, \
                 table_name, column_name, min_value, max_value, batch_size) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {MIGRATION_COLUMNS}"
        ))
        .bind(&new.name)
        .bind(&new.job_signature_name)
        .bind(&new.table_name)
        .bind(&new.column_name)
        .bind(new.min_value)
        .bind(new.max_value)
        .bind(new.batch_size)
        .fetch_one(&self.pool)
        .await
    }

    /// Deletes a migration that is `finished` or `failed`, with its jobs, so that one of the same
    /// name can be created. Returns whether one was deleted.
    #[tracing::instrument(
        name = "db.delete_ended_background_migration",
        skip_all,
        err(level = "warn")
    )]
    pub async fn delete_ended_background_migration(&self, name: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM batched_background_migrations \
             WHERE name = $1 AND status IN ('finished', 'failed')",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Every migration (or the one named) with its figures, oldest first.
    #[tracing::instrument(name = "db.background_migrations", skip_all, err(level = "warn"))]
    pub async fn background_migrations(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<BackgroundMigrationProgress>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {MIGRATION_COLUMNS}, \
                 count(j.id) AS jobs, \
                 count(j.id) FILTER (WHERE j.status = 'finished') AS jobs_finished, \
                 count(j.id) FILTER (WHERE j.status = 'failed') AS jobs_failed, \
                 coalesce(sum(j.attempts), 0)::bigint AS attempts, \
                 coalesce(sum(j.duration_ms), 0)::bigint AS work_ms, \
                 max(j.max_value) AS covered_to, \
                 (array_agg(j.last_error ORDER BY j.updated_at DESC) \
                     FILTER (WHERE j.status = 'failed'))[1] AS last_error \
             FROM batched_background_migrations m \
             LEFT JOIN batched_background_migration_jobs j \
                 ON j.batched_background_migration_id = m.id \
             WHERE $1::text IS NULL OR m.name = $1 \
             GROUP BY m.id ORDER BY m.id"
        ))
        .bind(name)
        .fetch_all(&self.pool)
        .await
    }

    /// Pauses the `active` and `running` migrations (or the one named); returns their names.
    #[tracing::instrument(name = "db.pause_background_migrations", skip_all, err(level = "warn"))]
    pub async fn pause_background_migrations(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE batched_background_migrations SET status = 'paused', updated_at = now() \
             WHERE status IN ('active', 'running') AND ($1::text IS NULL OR name = $1) \
             RETURNING name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
    }

    /// Makes the `paused` migrations (or the one named) `active` again; returns their names.
    #[tracing::instrument(
        name = "db.resume_background_migrations",
        skip_all,
        err(level = "warn")
    )]
    pub async fn resume_background_migrations(
        &self,
        name: Option<&str>,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE batched_background_migrations SET status = 'active', updated_at = now() \
             WHERE status = 'paused' AND ($1::text IS NULL OR name = $1) RETURNING name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await
    }
}

/// Releases the worker's advisory lock. Returns whether it was held.
#[tracing::instrument(
    name = "db.unlock_background_migrations",
    skip_all,
    err(level = "warn")
)]
pub async fn unlock_background_migrations(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .fetch_one(conn)
        .await
}

/// The oldest migration the worker should run: `active` or `running`.
#[tracing::instrument(name = "db.next_runnable", skip_all, err(level = "warn"))]
pub async fn next_runnable(
    conn: &mut PgConnection,
) -> Result<Option<BackgroundMigration>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {MIGRATION_COLUMNS} FROM batched_background_migrations m \
         WHERE m.status = ANY($1) ORDER BY m.id LIMIT 1"
    ))
    .bind(&RUNNABLE[..])
    .fetch_optional(conn)
    .await
}

/// Whether the migration's table and column exist in the scheduler database.
#[tracing::instrument(name = "db.check_target", skip_all, err(level = "warn"))]
pub async fn check_target(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
) -> Result<TargetCheck, sqlx::Error> {
    let (table_exists, column_exists): (bool, bool) = sqlx::query_as(
        "SELECT \
             EXISTS (SELECT 1 FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_name = $1), \
             EXISTS (SELECT 1 FROM information_schema.columns \
                     WHERE table_schema = current_schema() AND table_name = $1 \
                       AND column_name = $2)",
    )
    .bind(table)
    .bind(column)
    .fetch_one(conn)
    .await?;
    Ok(match (table_exists, column_exists) {
        (false, _) => TargetCheck::UnknownTable,
        (true, false) => TargetCheck::UnknownColumn,
        (true, true) => TargetCheck::Valid,
    })
}

/// Moves a runnable migration to `running` (compare-and-set); false when it was paused meanwhile.
#[tracing::instrument(name = "db.mark_running", skip_all, err(level = "warn"))]
pub async fn mark_running(conn: &mut PgConnection, id: i64) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE batched_background_migrations SET status = 'running', \
             started_at = coalesce(started_at, now()), updated_at = now() \
         WHERE id = $1 AND status = ANY($2)",
    )
    .bind(id)
    .bind(&RUNNABLE[..])
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// Ends a runnable migration as `finished`, or as `failed` with `error_code`.
#[tracing::instrument(name = "db.end_migration", skip_all, err(level = "warn"))]
pub async fn end_migration(
    conn: &mut PgConnection,
    id: i64,
    error_code: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE batched_background_migrations SET \
             status = CASE WHEN $2::text IS NULL THEN 'finished' ELSE 'failed' END, \
             failure_error_code = $2, finished_at = now(), updated_at = now() \
         WHERE id = $1 AND status = ANY($3)",
    )
    .bind(id)
    .bind(error_code)
    .bind(&RUNNABLE[..])
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// The job whose range ends highest.
#[tracing::instrument(name = "db.last_job", skip_all, err(level = "warn"))]
pub async fn last_job(
    conn: &mut PgConnection,
    migration_id: i64,
) -> Result<Option<BackgroundMigrationJob>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM batched_background_migration_jobs \
         WHERE batched_background_migration_id = $1 ORDER BY max_value DESC LIMIT 1"
    ))
    .bind(migration_id)
    .fetch_optional(conn)
    .await
}

/// The oldest job to retry: one that failed, or one left `running` by an attempt that never
/// reported (its run timed out or its process died; the lock proves no one runs it now).
#[tracing::instrument(name = "db.retryable_job", skip_all, err(level = "warn"))]
pub async fn retryable_job(
    conn: &mut PgConnection,
    migration_id: i64,
) -> Result<Option<BackgroundMigrationJob>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM batched_background_migration_jobs \
         WHERE batched_background_migration_id = $1 AND status IN ('failed', 'running') \
         ORDER BY id LIMIT 1"
    ))
    .bind(migration_id)
    .fetch_optional(conn)
    .await
}

/// The end of the job starting at `start`: the `batch_size`-th value of the column from `start`
/// on (keyset, no OFFSET), capped at `last`; `last` when fewer rows remain. The table and column
/// must have been checked with [`check_target`].
#[tracing::instrument(name = "db.job_end", skip_all, err(level = "warn"))]
pub async fn job_end(
    conn: &mut PgConnection,
    table: &str,
    column: &str,
    start: i64,
    last: i64,
    batch_size: i32,
) -> Result<i64, sqlx::Error> {
    let (table, column) = (quote_ident(table), quote_ident(column));
    let end: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT max(v)::bigint FROM (SELECT {column} AS v FROM {table} \
         WHERE {column} >= $1 AND {column} <= $2 ORDER BY {column} LIMIT $3) batch \
         HAVING count(*) = $3"
    ))
    .bind(start)
    .bind(last)
    .bind(i64::from(batch_size))
    .fetch_optional(conn)
    .await?
    .flatten();
    Ok(end.unwrap_or(last))
}

/// Creates the job `[start, end]`.
#[tracing::instrument(name = "db.create_job", skip_all, err(level = "warn"))]
pub async fn create_job(
    conn: &mut PgConnection,
    migration_id: i64,
    start: i64,
    end: i64,
) -> Result<BackgroundMigrationJob, sqlx::Error> {
    sqlx::query_as(&format!(
        "INSERT INTO batched_background_migration_jobs \
             (batched_background_migration_id, min_value, max_value) \
         VALUES ($1, $2, $3) RETURNING {JOB_COLUMNS}"
    ))
    .bind(migration_id)
    .bind(start)
    .bind(end)
    .fetch_one(conn)
    .await
}

/// Counts an attempt and marks the job `running`.
#[tracing::instrument(name = "db.start_attempt", skip_all, err(level = "warn"))]
pub async fn start_attempt(conn: &mut PgConnection, job_id: i64) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE batched_background_migration_jobs SET status = 'running', \
             attempts = attempts + 1, started_at = now(), updated_at = now() \
         WHERE id = $1 RETURNING attempts",
    )
    .bind(job_id)
    .fetch_one(conn)
    .await
}

/// Records the end of an attempt: `finished`, or `failed` with a code and message; with the
/// time its work took when known.
#[tracing::instrument(name = "db.end_attempt", skip_all, err(level = "warn"))]
pub async fn end_attempt(
    conn: &mut PgConnection,
    job_id: i64,
    failure: Option<(&str, &str)>,
    duration_ms: Option<i64>,
) -> Result<(), sqlx::Error> {
    let (code, message) = failure.unzip();
    sqlx::query(
        "UPDATE batched_background_migration_jobs SET \
             status = CASE WHEN $2::text IS NULL THEN 'finished' ELSE 'failed' END, \
             failure_error_code = $2, last_error = $3, duration_ms = coalesce($4, duration_ms), \
             finished_at = CASE WHEN $2::text IS NULL THEN now() END, updated_at = now() \
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(code)
    .bind(message)
    .bind(duration_ms)
    .execute(conn)
    .await?;
    Ok(())
}
