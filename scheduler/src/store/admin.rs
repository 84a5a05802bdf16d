//! Statements behind the internal API: registering, prioritizing, canceling and listing
//! repositories, previewing the queue, and recent throughput.

use super::{NewRepository, REPOSITORY_COLUMNS, RepositoryRecord, SchedulerStore};

/// States from which a migration can be canceled (everything but done and skipped).
const CANCELABLE: [&str; 5] = [
    "default",
    "pre_importing",
    "pre_import_done",
    "importing",
    "import_aborted",
];

/// The ready-queue filter shared by the claim and the preview (`r` repositories, `s` settings).
pub(super) const READY: &str = "r.migration_state = 'default' \
    AND (s.created_before IS NULL OR r.created_at < s.created_before) \
    AND (s.target_plans IS NULL OR COALESCE(r.migration_plan, 'free') = ANY(s.target_plans)) \
    AND NOT (split_part(r.path, '/', 1) = ANY(s.deny_root_namespaces))";

impl SchedulerStore {
    /// Registers one repository (a create event): `default`, or `import_done` with
    /// `native_import` when it was created on the new platform. An existing one is left alone.
    /// Returns the repository as it now is.
    pub async fn register_one(
        &self,
        repository: &NewRepository,
        on_new_platform: bool,
    ) -> Result<RepositoryRecord, sqlx::Error> {
        sqlx::query(
            "INSERT INTO projects (full_path) VALUES ($1) ON CONFLICT (full_path) DO NOTHING",
        )
        .bind(&repository.project_path)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "INSERT INTO container_repositories (project_id, name, path, migration_state, \
                 migration_skipped_reason, migration_import_done_at) \
             SELECT p.id, $2, $3, CASE WHEN $4 THEN 'import_done' ELSE 'default' END, \
                    CASE WHEN $4 THEN 'native_import' END, CASE WHEN $4 THEN now() END \
             FROM projects p WHERE p.full_path = $1 \
             ON CONFLICT (path) DO NOTHING",
        )
        .bind(&repository.project_path)
        .bind(&repository.name)
        .bind(&repository.path)
        .bind(on_new_platform)
        .execute(&self.pool)
        .await?;
        let record = self.repository(&repository.path).await?;
        record.ok_or(sqlx::Error::RowNotFound)
    }

    /// Puts a `default` or `import_aborted` repository at the front of the queue. Returns false
    /// when it is in another state.
    pub async fn prioritize(&self, path: &str) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE container_repositories SET migration_priority = 1, updated_at = now() \
             WHERE path = $1 AND migration_state IN ('default', 'import_aborted')",
        )
        .bind(path)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Skips a repository that is not done or skipped yet with `reason` (`migration_canceled` or
    /// `migration_forced_canceled`). Returns false when it was done or skipped already.
    pub async fn cancel_migration(&self, path: &str, reason: &str) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE container_repositories SET migration_state = 'import_skipped', \
                 migration_skipped_reason = $2, migration_skipped_at = now(), \
                 migration_aborted_in_state = CASE WHEN migration_state IN ('default', 'pre_importing', 'pre_import_done', 'importing') \
                     THEN migration_state ELSE migration_aborted_in_state END, \
                 migration_last_error = 'canceled by an operator', updated_at = now() \
             WHERE path = $1 AND migration_state = ANY($3)",
        )
        .bind(path)
        .bind(reason)
        .bind(&CANCELABLE[..])
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Repositories in `state` (or any state), by path after `after`, at most `limit`.
    pub async fn list_repositories(
        &self,
        state: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<RepositoryRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id \
             WHERE ($1::text IS NULL OR r.migration_state = $1) AND r.path > $2 \
             ORDER BY r.path LIMIT $3"
        ))
        .bind(state)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The next ready repository (as the loop would take it), the next aborted one, and how many
    /// are ready.
    pub async fn preview_queue(
        &self,
    ) -> Result<(Option<RepositoryRecord>, Option<RepositoryRecord>, i64), sqlx::Error> {
        let next_ready = sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id, \
                 migration_settings s WHERE {READY} ORDER BY r.migration_priority DESC, r.path LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        let next_aborted = sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id \
             WHERE r.migration_state = 'import_aborted' ORDER BY r.migration_priority DESC, r.path LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        let ready: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM container_repositories r, migration_settings s WHERE {READY}"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok((next_ready, next_aborted, ready))
    }

    /// Repositories that reached `import_done` in the last `minutes` minutes.
    pub async fn done_recently(&self, minutes: f64) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM container_repositories WHERE migration_state = 'import_done' \
               AND migration_import_done_at > now() - make_interval(secs => $1)",
        )
        .bind(minutes * 60.0)
        .fetch_one(&self.pool)
        .await
    }
}
