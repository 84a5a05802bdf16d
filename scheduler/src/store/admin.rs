//! Statements behind the internal API: registering, prioritizing, canceling and listing
//! repositories, previewing the queue, and recent throughput.

use ferry_shared::step::{MaybeStep, Step};

use super::{NewRepository, REPOSITORY_COLUMNS, RepositoryRecord, SchedulerStore};
use crate::state::{MigrationState, SkipReason};

/// The ready-queue filter shared by the claim and the preview (`r` repositories, `s` settings).
pub(super) fn ready() -> String {
    format!(
        "r.migration_state = 'default' AND {} \
         AND (s.created_before IS NULL OR r.created_at < s.created_before) \
         AND (s.target_plans IS NULL OR COALESCE((SELECT np.plan FROM namespace_plans np \
              WHERE np.namespace = split_part(r.path, '/', 1)), 'free') = ANY(s.target_plans)) \
         AND NOT (split_part(r.path, '/', 1) = ANY(s.deny_root_namespaces))",
        super::NO_CANCEL_IN_FLIGHT
    )
}

/// The head of the queue, as [`SchedulerStore::preview_queue`] reads it.
#[derive(Debug, Clone)]
pub struct QueueHead {
    /// The ready repository the enqueue loop would claim next.
    pub next_ready: Option<RepositoryRecord>,
    /// The aborted repository it would retry next.
    pub next_aborted: Option<RepositoryRecord>,
    /// How many repositories are ready.
    pub ready: i64,
}

impl SchedulerStore {
    /// Registers one repository (a create event): `default`, or `import_done` with
    /// `native_import` when it was created on the new platform. An existing one is left alone.
    /// Returns the repository as it now is.
    #[tracing::instrument(name = "db.register_one", skip_all, err(level = "warn"))]
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

    /// Puts a `default` or `import_aborted` repository at the front of the queue, and queues a
    /// skipped one again from the start (`default`, no retries counted, at the front): the
    /// runbook's "retry later" of a canceled, force-canceled or too-often-failed repository.
    /// Returns false when it is in another state.
    #[tracing::instrument(name = "db.prioritize", skip_all, err(level = "warn"))]
    pub async fn prioritize(&self, path: &str) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE container_repositories SET migration_priority = 1, updated_at = now(), \
                 migration_state = CASE WHEN migration_state = 'import_skipped' THEN 'default' ELSE migration_state END, \
                 migration_retries_count = CASE WHEN migration_state = 'import_skipped' THEN 0 ELSE migration_retries_count END, \
                 migration_skipped_reason = CASE WHEN migration_state = 'import_skipped' THEN NULL ELSE migration_skipped_reason END, \
                 migration_skipped_at = CASE WHEN migration_state = 'import_skipped' THEN NULL ELSE migration_skipped_at END \
             WHERE path = $1 AND migration_state IN ('default', 'import_aborted', 'import_skipped')",
        )
        .bind(path)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Records an operator's cancel of the repository at step `step` (its skip reason,
    /// `migration_canceled` or `migration_forced_canceled`) before the importer is asked: from
    /// then on no new step is claimed for it, and its step's failed or canceled end skips it.
    /// False when it is done, skipped, or at another step. A `step` of `None` is a repository no
    /// numbered step has claimed yet (a `default` one), here and in the cancel's other statements.
    #[tracing::instrument(name = "db.request_cancel", skip_all, err(level = "warn"))]
    pub async fn request_cancel(
        &self,
        path: &str,
        step: Option<Step>,
        reason: SkipReason,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE container_repositories SET migration_cancel_requested = $3, \
                 migration_cancel_requested_at = now(), updated_at = now() \
             WHERE path = $1 AND migration_step = $2 AND migration_state = ANY($4)",
        )
        .bind(path)
        .bind(step.db())
        .bind(reason)
        .bind(&MigrationState::PENDING[..])
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Withdraws a cancel requested at step `step` that could not be carried out.
    #[tracing::instrument(name = "db.withdraw_cancel", skip_all, err(level = "warn"))]
    pub async fn withdraw_cancel(&self, path: &str, step: Option<Step>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE container_repositories SET migration_cancel_requested = NULL \
             WHERE path = $1 AND migration_step = $2",
        )
        .bind(path)
        .bind(step.db())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Skips a repository at step `step` that is not done or skipped yet with `reason`
    /// (`migration_canceled` or `migration_forced_canceled`). Returns false when it was done or
    /// skipped already, or is at another step.
    #[tracing::instrument(name = "db.cancel_migration", skip_all, err(level = "warn"))]
    pub async fn cancel_migration(
        &self,
        path: &str,
        step: Option<Step>,
        reason: SkipReason,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE container_repositories SET migration_state = 'import_skipped', \
                 migration_skipped_reason = $2, migration_skipped_at = now(), \
                 migration_aborted_in_state = CASE WHEN migration_state IN ('default', 'pre_importing', 'pre_import_done', 'importing') \
                     THEN migration_state ELSE migration_aborted_in_state END, \
                 migration_cancel_requested = NULL, \
                 migration_last_error = 'canceled by an operator', updated_at = now() \
             WHERE path = $1 AND migration_state = ANY($3) AND migration_step = $4",
        )
        .bind(path)
        .bind(reason)
        .bind(&MigrationState::PENDING[..])
        .bind(step.db())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Sets the plan of each root namespace in `plans` (an empty plan removes the entry: the
    /// namespace is on `free`), after removing every other entry when `replace`, in one
    /// transaction. Returns every entry afterwards.
    #[tracing::instrument(name = "db.set_namespace_plans", skip_all, err(level = "warn"))]
    pub async fn set_namespace_plans(
        &self,
        plans: &[(String, String)],
        replace: bool,
    ) -> Result<Vec<(String, String)>, sqlx::Error> {
        let (namespaces, names): (Vec<&str>, Vec<&str>) = plans
            .iter()
            .map(|(namespace, plan)| (namespace.as_str(), plan.as_str()))
            .unzip();
        let mut tx = self.pool.begin().await?;
        if replace {
            sqlx::query("DELETE FROM namespace_plans")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "DELETE FROM namespace_plans WHERE namespace IN \
                 (SELECT n FROM UNNEST($1::text[], $2::text[]) AS u(n, p) WHERE p = '')",
        )
        .bind(&namespaces)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO namespace_plans (namespace, plan) \
             SELECT DISTINCT ON (n) n, p FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS u(n, p, o) \
             WHERE p <> '' ORDER BY n, o DESC \
             ON CONFLICT (namespace) DO UPDATE SET plan = EXCLUDED.plan, updated_at = now()",
        )
        .bind(&namespaces)
        .bind(&names)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.namespace_plans().await
    }

    /// Every root namespace's plan, by namespace.
    #[tracing::instrument(name = "db.namespace_plans", skip_all, err(level = "warn"))]
    pub async fn namespace_plans(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        sqlx::query_as("SELECT namespace, plan FROM namespace_plans ORDER BY namespace")
            .fetch_all(&self.pool)
            .await
    }

    /// Repositories in `state` (or any state), by path after `after`, at most `limit`.
    #[tracing::instrument(name = "db.list_repositories", skip_all, err(level = "warn"))]
    pub async fn list_repositories(
        &self,
        state: Option<MigrationState>,
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
    #[tracing::instrument(name = "db.preview_queue", skip_all, err(level = "warn"))]
    pub async fn preview_queue(&self) -> Result<QueueHead, sqlx::Error> {
        let filter = ready();
        let next_ready = sqlx::query_as(&format!(
            "SELECT {REPOSITORY_COLUMNS} FROM container_repositories r JOIN projects p ON p.id = r.project_id, \
                 migration_settings s WHERE {filter} ORDER BY r.migration_priority DESC, r.path LIMIT 1"
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
            "SELECT count(*) FROM container_repositories r, migration_settings s WHERE {filter}"
        ))
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueHead {
            next_ready,
            next_aborted,
            ready,
        })
    }

    /// Repositories that reached `import_done` in the last `minutes` minutes.
    #[tracing::instrument(name = "db.done_recently", skip_all, err(level = "warn"))]
    pub async fn done_recently(&self, minutes: f64) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM container_repositories WHERE migration_state = 'import_done' \
               AND migration_import_done_at > now() - make_interval(secs => $1)",
        )
        .bind(minutes * 60.0)
        .fetch_one(&self.pool)
        .await
    }

    /// Counts per state, what is left, and the recent rate with the time left at that rate.
    pub async fn migration_progress(&self) -> Result<MigrationProgress, sqlx::Error> {
        let states = self.state_counts().await?;
        let total = states.iter().map(|(_, n)| *n).sum();
        let pending = states
            .iter()
            .filter(|(state, _)| MigrationState::PENDING.contains(state))
            .map(|(_, n)| *n)
            .sum::<i64>();
        let done_per_minute =
            self.done_recently(RATE_WINDOW_MINUTES).await? as f64 / RATE_WINDOW_MINUTES;
        let eta_seconds = if done_per_minute > 0.0 {
            pending as f64 / done_per_minute * 60.0
        } else {
            0.0
        };
        Ok(MigrationProgress {
            states,
            total,
            pending,
            done_per_minute,
            eta_seconds,
        })
    }
}

/// The window of the completion rate.
const RATE_WINDOW_MINUTES: f64 = 10.0;

/// The migration's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationProgress {
    /// Repositories per state.
    pub states: Vec<(MigrationState, i64)>,
    /// Repositories in all.
    pub total: i64,
    /// Repositories with migration work ahead.
    pub pending: i64,
    /// Repositories done per minute over the last 10 minutes.
    pub done_per_minute: f64,
    /// Seconds to finish `pending` at that rate; 0 when the rate is 0.
    pub eta_seconds: f64,
}
