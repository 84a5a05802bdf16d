//! The project repair scan's statements: claiming projects (keyset over `projects`, never
//! OFFSET), recording results in bulk, returning stale claims, the pass record, and the figures.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};

use super::{NewRepository, SchedulerStore};

/// A project to analyze.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct RepairProject {
    /// Its id.
    pub id: i64,
    /// Its full path.
    pub full_path: String,
}

/// What a claim got.
#[derive(Debug, Clone, Default)]
pub struct RepairClaim {
    /// Projects now `ongoing` for this worker, by id.
    pub projects: Vec<RepairProject>,
    /// The highest project id the claim looked at (the next claim starts after it); `None` when
    /// no project without a row is left after the cursor.
    pub scanned_to: Option<i64>,
}

/// One project's analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairResult {
    /// The project.
    pub project_id: i64,
    /// Repositories the registry has under it that the scheduler lacks; `None` when the analysis
    /// failed.
    pub missing: Option<i32>,
}

/// A full pass of the scan.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct RepairPass {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When the last project was analyzed.
    pub finished_at: DateTime<Utc>,
    /// Projects analyzed in it.
    pub projects: i64,
    /// Repositories found missing in it.
    pub missing: i64,
}

/// The scan's figures.
#[derive(Debug, Clone, PartialEq, FromRow)]
pub struct RepairCounts {
    /// Projects known.
    pub projects: i64,
    /// Analyzed.
    pub completed: i64,
    /// Claimed, not yet recorded.
    pub ongoing: i64,
    /// Failed.
    pub failed: i64,
    /// Ongoing claims older than the stale limit (pending again).
    pub stale: i64,
    /// Missing repositories found.
    pub missing_repositories: i64,
    /// Projects with at least one.
    pub projects_with_missing: i64,
    /// When the pass in progress started.
    pub pass_started_at: Option<DateTime<Utc>>,
    /// The scanning replica.
    pub scanner: Option<String>,
    /// Its last reported rate.
    pub projects_per_second: f64,
    /// When it last reported.
    pub reported_at: Option<DateTime<Utc>>,
}

impl SchedulerStore {
    /// Claims up to `limit` projects with no repair row and an id above `after`, in id order, by
    /// inserting `ongoing` rows; projects another worker claimed first are skipped. The repeated
    /// `d.project_id > $1` bounds the anti-join's scan of the repair rows to the cursor: without
    /// it, the generic plan PostgreSQL caches after five runs merges from the first row, and a
    /// pass over 1M projects slowed to 2,600 projects/s.
    #[tracing::instrument(name = "db.claim_repair_projects", skip_all, err(level = "warn"))]
    pub async fn claim_repair_projects(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<RepairClaim, sqlx::Error> {
        let rows: Vec<(i64, String, bool)> = sqlx::query_as(
            "WITH next AS ( \
                 SELECT p.id, p.full_path FROM projects p \
                 WHERE p.id > $1 AND NOT EXISTS ( \
                     SELECT 1 FROM container_registry_data_repair_details d \
                     WHERE d.project_id = p.id AND d.project_id > $1) \
                 ORDER BY p.id LIMIT $2), \
             claimed AS ( \
                 INSERT INTO container_registry_data_repair_details (project_id) \
                 SELECT id FROM next ORDER BY id ON CONFLICT (project_id) DO NOTHING \
                 RETURNING project_id) \
             SELECT n.id, n.full_path, c.project_id IS NOT NULL \
             FROM next n LEFT JOIN claimed c ON c.project_id = n.id ORDER BY n.id",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(RepairClaim {
            scanned_to: rows.last().map(|(id, _, _)| *id),
            projects: rows
                .into_iter()
                .filter(|(_, _, claimed)| *claimed)
                .map(|(id, full_path, _)| RepairProject { id, full_path })
                .collect(),
        })
    }

    /// Claims up to `limit` `ongoing` rows older than `stale_after` (their worker died or lost
    /// its results): they are analyzed again.
    #[tracing::instrument(name = "db.claim_stale_repairs", skip_all, err(level = "warn"))]
    pub async fn claim_stale_repairs(
        &self,
        stale_after: Duration,
        limit: i64,
    ) -> Result<Vec<RepairProject>, sqlx::Error> {
        sqlx::query_as(
            "WITH stale AS ( \
                 SELECT project_id FROM container_registry_data_repair_details \
                 WHERE status = 'ongoing' AND updated_at < now() - make_interval(secs => $1) \
                 ORDER BY project_id LIMIT $2 FOR UPDATE SKIP LOCKED), \
             taken AS ( \
                 UPDATE container_registry_data_repair_details d SET updated_at = now() \
                 FROM stale WHERE d.project_id = stale.project_id RETURNING d.project_id) \
             SELECT p.id, p.full_path FROM taken JOIN projects p ON p.id = taken.project_id \
             ORDER BY p.id",
        )
        .bind(stale_after.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Records analyses in one statement (only rows still `ongoing` change) and adds them to the
    /// pass in progress. Returns the rows recorded.
    #[tracing::instrument(name = "db.record_repairs", skip_all, err(level = "warn"))]
    pub async fn record_repairs(&self, results: &[RepairResult]) -> Result<u64, sqlx::Error> {
        if results.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = results.iter().map(|r| r.project_id).collect();
        let missing: Vec<Option<i32>> = results.iter().map(|r| r.missing).collect();
        let recorded: i64 = sqlx::query_scalar(
            "WITH done AS ( \
                 UPDATE container_registry_data_repair_details d SET \
                     status = CASE WHEN r.missing IS NULL THEN 'failed' ELSE 'completed' END, \
                     missing_count = coalesce(r.missing, 0), updated_at = now() \
                 FROM UNNEST($1::bigint[], $2::int[]) AS r(project_id, missing) \
                 WHERE d.project_id = r.project_id AND d.status = 'ongoing' \
                 RETURNING d.missing_count), \
             pass AS ( \
                 UPDATE repair_scan_state SET \
                     pass_started_at = coalesce(pass_started_at, now()), \
                     pass_projects = pass_projects + (SELECT count(*) FROM done), \
                     pass_missing = pass_missing + (SELECT coalesce(sum(missing_count), 0) FROM done) \
                 RETURNING 1) \
             SELECT count(*) FROM done, pass",
        )
        .bind(&ids)
        .bind(&missing)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(recorded).unwrap_or(0))
    }

    /// Returns claimed projects to the scan at once (their analysis did not happen).
    #[tracing::instrument(name = "db.release_repairs", skip_all, err(level = "warn"))]
    pub async fn release_repairs(&self, project_ids: &[i64]) -> Result<u64, sqlx::Error> {
        let released = sqlx::query(
            "DELETE FROM container_registry_data_repair_details \
             WHERE project_id = ANY($1) AND status = 'ongoing'",
        )
        .bind(project_ids)
        .execute(&self.pool)
        .await?;
        Ok(released.rows_affected())
    }

    /// Marks the start of a pass, unless one is in progress.
    #[tracing::instrument(name = "db.begin_repair_pass", skip_all, err(level = "warn"))]
    pub async fn begin_repair_pass(&self) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE repair_scan_state SET pass_started_at = coalesce(pass_started_at, now())",
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The scanning replica's report: who it is and its rate.
    #[tracing::instrument(name = "db.report_repair_scan", skip_all, err(level = "warn"))]
    pub async fn report_repair_scan(&self, scanner: &str, rate: f64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE repair_scan_state SET scanner = $1, projects_per_second = $2, \
                 reported_at = now()",
        )
        .bind(scanner)
        .bind(rate)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ends the pass in progress if every project has a row and none is `ongoing`: records it
    /// in `repair_passes` and returns it.
    #[tracing::instrument(
        name = "db.finish_repair_pass_if_complete",
        skip_all,
        err(level = "warn")
    )]
    pub async fn finish_repair_pass_if_complete(&self) -> Result<Option<RepairPass>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let pass: Option<RepairPass> = sqlx::query_as(
            "SELECT pass_started_at AS started_at, now() AS finished_at, \
                 pass_projects AS projects, pass_missing AS missing \
             FROM repair_scan_state WHERE pass_started_at IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM container_registry_data_repair_details \
                               WHERE status = 'ongoing') \
               AND NOT EXISTS (SELECT 1 FROM projects p WHERE NOT EXISTS ( \
                   SELECT 1 FROM container_registry_data_repair_details d \
                   WHERE d.project_id = p.id)) \
             FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(pass) = &pass {
            sqlx::query(
                "INSERT INTO repair_passes (started_at, finished_at, projects, missing) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(pass.started_at)
            .bind(pass.finished_at)
            .bind(pass.projects)
            .bind(pass.missing)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE repair_scan_state SET pass_started_at = NULL, pass_projects = 0, \
                     pass_missing = 0",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(pass)
    }

    /// The scan's figures.
    #[tracing::instrument(name = "db.repair_counts", skip_all, err(level = "warn"))]
    pub async fn repair_counts(&self, stale_after: Duration) -> Result<RepairCounts, sqlx::Error> {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM projects) AS projects, \
                 count(*) FILTER (WHERE d.status = 'completed') AS completed, \
                 count(*) FILTER (WHERE d.status = 'ongoing') AS ongoing, \
                 count(*) FILTER (WHERE d.status = 'failed') AS failed, \
                 count(*) FILTER (WHERE d.status = 'ongoing' \
                     AND d.updated_at < now() - make_interval(secs => $1)) AS stale, \
                 coalesce(sum(d.missing_count), 0)::bigint AS missing_repositories, \
                 count(*) FILTER (WHERE d.missing_count > 0) AS projects_with_missing, \
                 s.pass_started_at, s.scanner, s.projects_per_second, s.reported_at \
             FROM repair_scan_state s \
             LEFT JOIN container_registry_data_repair_details d ON true \
             GROUP BY s.id",
        )
        .bind(stale_after.as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }

    /// Projects the scan has left: no row yet, or an `ongoing` row older than `stale_after`.
    #[tracing::instrument(name = "db.repair_pending", skip_all, err(level = "warn"))]
    pub async fn repair_pending(&self, stale_after: Duration) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM projects) - (SELECT count(*) \
                 FROM container_registry_data_repair_details \
                 WHERE status <> 'ongoing' OR updated_at >= now() - make_interval(secs => $1))",
        )
        .bind(stale_after.as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }

    /// The latest `limit` full passes, newest first.
    #[tracing::instrument(name = "db.repair_passes", skip_all, err(level = "warn"))]
    pub async fn repair_passes(&self, limit: i64) -> Result<Vec<RepairPass>, sqlx::Error> {
        sqlx::query_as(
            "SELECT started_at, finished_at, projects, missing FROM repair_passes \
             ORDER BY finished_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes the `failed` rows, so the scan analyzes those projects again.
    #[tracing::instrument(name = "db.retry_failed_repairs", skip_all, err(level = "warn"))]
    pub async fn retry_failed_repairs(&self) -> Result<u64, sqlx::Error> {
        let deleted = sqlx::query(
            "DELETE FROM container_registry_data_repair_details WHERE status = 'failed'",
        )
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// The range of project ids with missing repositories, for repair part 2.
    #[tracing::instrument(name = "db.repair_restore_range", skip_all, err(level = "warn"))]
    pub async fn repair_restore_range(&self) -> Result<Option<(i64, i64)>, sqlx::Error> {
        let (min, max): (Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT min(project_id), max(project_id) FROM container_registry_data_repair_details \
             WHERE missing_count > 0",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(min.zip(max))
    }
}

/// The projects in `[start, end]` the scan found repositories missing under.
#[tracing::instrument(name = "db.projects_with_missing", skip_all, err(level = "warn"))]
pub async fn projects_with_missing(
    conn: &mut PgConnection,
    start: i64,
    end: i64,
) -> Result<Vec<RepairProject>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.id, p.full_path FROM container_registry_data_repair_details d \
         JOIN projects p ON p.id = d.project_id \
         WHERE d.project_id BETWEEN $1 AND $2 AND d.missing_count > 0 ORDER BY p.id",
    )
    .bind(start)
    .bind(end)
    .fetch_all(conn)
    .await
}

/// Which of `paths` have a row, on `conn`.
#[tracing::instrument(name = "db.existing_paths_on", skip_all, err(level = "warn"))]
pub async fn existing_paths_on(
    conn: &mut PgConnection,
    paths: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT path FROM container_repositories WHERE path = ANY($1)")
        .bind(paths)
        .fetch_all(conn)
        .await
}

/// Creates repositories of known projects that live on the new platform already (`import_done`,
/// `native_import`), on `conn`; existing ones are left alone. Returns how many were created.
#[tracing::instrument(name = "db.register_native_on", skip_all, err(level = "warn"))]
pub async fn register_native_on(
    conn: &mut PgConnection,
    batch: &[NewRepository],
) -> Result<u64, sqlx::Error> {
    let paths: Vec<&str> = batch.iter().map(|r| r.path.as_str()).collect();
    let projects: Vec<&str> = batch.iter().map(|r| r.project_path.as_str()).collect();
    let names: Vec<&str> = batch.iter().map(|r| r.name.as_str()).collect();
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
    .execute(conn)
    .await?;
    Ok(created.rows_affected())
}
