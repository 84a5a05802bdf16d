//! The scheduler database: every SQL statement the scheduler runs. Every state change is a
//! compare-and-set `UPDATE ... WHERE migration_state = ANY(...)`, so replicas and retries cannot
//! move a repository along a path the state machine does not allow.

use sqlx::postgres::PgPool;
use sqlx::{FromRow, Row};

use ferry_proto::common::v1::ImportStats;
use ferry_shared::step::{MaybeStep, Step};

use crate::state::{MigrationState, SkipReason, VerifyResult};

mod admin;
pub mod bbm;
mod double_check;
mod guard;
mod reads;
mod rebuild;
pub mod repair;
mod settings;
mod step;
mod step_end;
mod verify;

pub use admin::{MigrationProgress, QueueHead};
pub use guard::StaleStep;
pub use rebuild::{BulkLock, Written};
pub use settings::{Change, Settings, SettingsPatch};
pub use step::{AbortedRepo, Claimed, StepColumn};
pub use verify::{VerificationRecord, VerifyTarget};

/// Embedded migrations of the scheduler database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/scheduler");

/// Holds for a repository (`r`) whose cancel is not in flight: none recorded, or one left by a
/// replica that stopped mid-cancel more than a minute ago. New claims and retries wait while a
/// cancel is in flight.
pub(crate) const NO_CANCEL_IN_FLIGHT: &str = "(r.migration_cancel_requested IS NULL \
    OR r.migration_cancel_requested_at < now() - interval '1 minute')";

/// A step's end, as applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndedStep {
    /// The importer that had accepted the step, if it was recorded.
    pub importer: Option<String>,
    /// The repository's state afterwards.
    pub migration_state: MigrationState,
    /// The step the lease holder claimed with the end, to be started now: the finished
    /// pre-import's final import, or the next ready repository's pre-import in the freed slot.
    pub next: Option<Claimed>,
}

/// An abort of a repository's step, for [`SchedulerStore::abort`].
#[derive(Debug, Clone, Copy)]
pub struct Abort<'a> {
    /// The repository.
    pub key: RepoKey<'a>,
    /// The step being aborted: nothing changes if the repository is at another step (`None`:
    /// a repository whose step is from before steps were numbered).
    pub step: Option<Step>,
    /// The states it may be aborted from.
    pub from: &'a [MigrationState],
    /// Why (recorded as `migration_last_error`).
    pub error: &'a str,
    /// Retries before the repository is skipped with `too_many_retries`.
    pub max_retries: i32,
    /// Whether the abort counts as a retry: not when the step was handed back by an importer
    /// shutting down.
    pub counted: bool,
    /// The lease holder's fencing token (`None`: any replica may apply it).
    pub fence: Option<u64>,
}

/// One repository's row. Each field is the `container_repositories` column of the same name
/// (`project_path` is the project's `full_path`).
#[allow(missing_docs)]
#[derive(Debug, Clone, FromRow)]
pub struct RepositoryRecord {
    pub id: i64,
    pub path: String,
    pub project_path: String,
    pub migration_state: MigrationState,
    pub migration_retries_count: i32,
    pub migration_skipped_reason: Option<SkipReason>,
    pub migration_aborted_in_state: Option<MigrationState>,
    pub migration_last_error: Option<String>,
    pub migration_pre_import_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_pre_import_done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_import_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_import_done_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_aborted_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_skipped_at: Option<chrono::DateTime<chrono::Utc>>,
    pub migration_importer: Option<String>,
    pub migration_step_accepted_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `None`: no numbered step has claimed it yet (the column's 0).
    #[sqlx(try_from = "StepColumn")]
    pub migration_step: Option<Step>,
    pub migration_cancel_requested: Option<SkipReason>,
    pub import_manifests: i64,
    pub import_tags: i64,
    pub import_blobs: i64,
    pub import_blobs_copied: i64,
    pub import_bytes_copied: i64,
    pub import_blobs_present: i64,
    pub import_tags_skipped: i64,
    pub import_duration_ms: i64,
    pub import_manifests_skipped: i64,
    pub import_layers_skipped: i64,
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub verify_outcome: Option<VerifyResult>,
    pub verify_differences: i64,
    pub verify_detail: Option<String>,
}

pub(crate) const REPOSITORY_COLUMNS: &str = "r.id, r.path, p.full_path AS project_path, r.migration_state, \
    r.migration_retries_count, r.migration_skipped_reason, r.migration_aborted_in_state, \
    r.migration_last_error, r.migration_pre_import_started_at, r.migration_pre_import_done_at, \
    r.migration_import_started_at, r.migration_import_done_at, r.migration_aborted_at, \
    r.migration_skipped_at, r.migration_importer, r.migration_step_accepted_at, r.migration_step, \
    r.migration_cancel_requested, r.import_manifests, r.import_tags, r.import_blobs, r.import_blobs_copied, \
    r.import_bytes_copied, r.import_blobs_present, r.import_tags_skipped, r.import_duration_ms, \
    r.import_manifests_skipped, r.import_layers_skipped, r.verified_at, r.verify_outcome, \
    r.verify_differences, r.verify_detail";

/// Counts of what an inventory batch registered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registered {
    /// New projects.
    pub projects: u64,
    /// New repositories.
    pub repositories: u64,
}

/// A repository to register: path, project path, name below the project.
#[derive(Debug, Clone)]
pub struct NewRepository {
    /// Full path.
    pub path: String,
    /// The project's full path.
    pub project_path: String,
    /// The path below the project ('' when they are the same).
    pub name: String,
}

/// The scheduler database.
#[derive(Debug, Clone)]
pub struct SchedulerStore {
    pool: PgPool,
}

/// The fencing clauses for a statement whose fencing token is parameter `$n`: a `WITH` prefix
/// and a condition that holds only if no newer token has written. A `NULL` token (a write any
/// replica may make) is not fenced.
///
/// The usual case, the token already in `scheduler_fence`, takes that row `FOR SHARE`: the lease
/// holder's writes do not wait for one another, and none of them writes the row. A new holder's
/// raise ([`SchedulerStore::raise_fence`]) needs the row exclusively, so it waits until every
/// write still holding the old token has committed, and once it has committed, an old-token
/// write that was waiting re-reads the row, finds the newer token and is refused. A token newer
/// than the row (a holder whose raise has not landed) raises it in the same statement.
fn fenced(n: usize) -> (String, String) {
    (
        format!(
            "WITH fence_raised AS (UPDATE scheduler_fence SET fence = ${n}::bigint, updated_at = now() \
                 WHERE ${n}::bigint IS NOT NULL AND fence < ${n}::bigint RETURNING 1), \
             fence_held AS MATERIALIZED (SELECT 1 FROM scheduler_fence \
                 WHERE ${n}::bigint IS NOT NULL AND fence = ${n}::bigint FOR SHARE) "
        ),
        format!("AND (${n}::bigint IS NULL OR {FENCE_HOLDS})"),
    )
}

/// The condition, under [`fenced`]'s `WITH` prefix, that its token holds (false for `NULL`).
const FENCE_HOLDS: &str =
    "(EXISTS (SELECT 1 FROM fence_held) OR EXISTS (SELECT 1 FROM fence_raised))";

fn fence_param(fence: Option<u64>) -> Option<i64> {
    fence.map(to_i64)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SchedulerStore {
    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let pool = ferry_shared::postgres::connect_pool(url, max_connections).await?;
        Ok(Self { pool })
    }

    /// Reports the pool's connections to the database metrics.
    pub fn report_pool(&self) {
        ferry_shared::metrics::DB.pool(
            "scheduler",
            self.pool.size(),
            u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            self.pool.options().get_max_connections(),
        );
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// Registers repositories and their projects; already known ones are left alone.
    #[tracing::instrument(name = "db.register", skip_all, err(level = "warn"))]
    pub async fn register(&self, batch: &[NewRepository]) -> Result<Registered, sqlx::Error> {
        let paths: Vec<&str> = batch.iter().map(|r| r.path.as_str()).collect();
        let projects: Vec<&str> = batch.iter().map(|r| r.project_path.as_str()).collect();
        let names: Vec<&str> = batch.iter().map(|r| r.name.as_str()).collect();
        let new_projects = sqlx::query(
            "INSERT INTO projects (full_path) SELECT DISTINCT p FROM UNNEST($1::text[]) AS p \
             ORDER BY p ON CONFLICT (full_path) DO NOTHING",
        )
        .bind(&projects)
        .execute(&self.pool)
        .await?;
        let new_repositories = sqlx::query(
            "INSERT INTO container_repositories (project_id, name, path) \
             SELECT p.id, i.name, i.path \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS i(path, project_path, name) \
             JOIN projects p ON p.full_path = i.project_path \
             ORDER BY i.path ON CONFLICT (path) DO NOTHING",
        )
        .bind(&paths)
        .bind(&projects)
        .bind(&names)
        .execute(&self.pool)
        .await?;
        Ok(Registered {
            projects: new_projects.rows_affected(),
            repositories: new_repositories.rows_affected(),
        })
    }

    /// Refreshes the planner's statistics of the repositories and projects after a bulk
    /// registration. Until autovacuum gets to it (up to a minute, and plans cached meanwhile
    /// keep the old estimate), the planner takes a freshly filled table for a nearly empty one:
    /// every claim then sorts all ready repositories instead of reading the first one off the
    /// ready index (9 ms against 2 ms a claim at 2,000 repositories, and growing with them).
    #[tracing::instrument(name = "db.refresh_statistics", skip_all, err(level = "warn"))]
    pub async fn refresh_statistics(&self) -> Result<(), sqlx::Error> {
        sqlx::query("ANALYZE container_repositories, projects")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Repositories in pre_importing, pre_import_done or importing.
    #[tracing::instrument(name = "db.in_process_count", skip_all, err(level = "warn"))]
    pub async fn in_process_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM container_repositories WHERE migration_state = ANY($1)",
        )
        .bind(&MigrationState::IN_PROCESS[..])
        .fetch_one(&self.pool)
        .await
    }

    /// Moves the next ready `default` repository to `pre_importing` (fenced by the lease holder's
    /// token), whatever the capacity. Ready: registered before `created_before`, on a target plan,
    /// not under a denied root namespace.
    #[tracing::instrument(name = "db.claim_next_default", skip_all, err(level = "warn"))]
    pub async fn claim_next_default(
        &self,
        fence: Option<u64>,
    ) -> Result<Option<Claimed>, sqlx::Error> {
        let claimed = self.claim_defaults(fence, None).await?;
        Ok(claimed.into_iter().next())
    }

    /// Moves as many ready `default` repositories to `pre_importing` as `capacity` has free
    /// slots, in one statement (fenced): the repositories in process are counted in the same
    /// statement, so a pass needs no separate count. Highest priority first, then by path.
    #[tracing::instrument(name = "db.claim_ready", skip_all, err(level = "warn"))]
    pub async fn claim_ready(
        &self,
        fence: Option<u64>,
        capacity: i32,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        self.claim_defaults(fence, Some(capacity)).await
    }

    /// Claims ready repositories: one whatever the capacity (`None`), or the free slots of
    /// `capacity`.
    async fn claim_defaults(
        &self,
        fence: Option<u64>,
        capacity: Option<i32>,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let (with, check) = fenced(1);
        let ready = admin::ready();
        sqlx::query_as(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'pre_importing', migration_priority = 0, \
                 migration_pre_import_started_at = now(), migration_pre_import_done_at = NULL, \
                 migration_importer = NULL, migration_step_accepted_at = NULL, \
                 migration_step = migration_step + 1, updated_at = now() \
             WHERE id = ANY(ARRAY(SELECT r.id FROM container_repositories r, migration_settings s \
                         WHERE {ready} ORDER BY r.migration_priority DESC, r.path \
                         LIMIT CASE WHEN $2::int IS NULL THEN 1 ELSE GREATEST($2::int - \
                             (SELECT count(*) FROM container_repositories WHERE migration_state = ANY($3)), 0) END \
                         FOR UPDATE OF r SKIP LOCKED)) \
               AND migration_state = 'default' {check} \
             RETURNING id, path, migration_step AS step"
        ))
        .bind(fence_param(fence))
        .bind(capacity)
        .bind(&MigrationState::IN_PROCESS[..])
        .fetch_all(&self.pool)
        .await
    }

    /// Moves up to `limit` `pre_import_done` repositories to `importing`, oldest first, in one
    /// statement (fenced). Their slots are taken already.
    #[tracing::instrument(name = "db.claim_pre_import_done", skip_all, err(level = "warn"))]
    pub async fn claim_pre_import_done(
        &self,
        fence: Option<u64>,
        limit: i64,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let (with, check) = fenced(1);
        sqlx::query_as(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'importing', \
                 migration_import_started_at = now(), migration_import_done_at = NULL, \
                 migration_importer = NULL, migration_step_accepted_at = NULL, \
                 migration_step = migration_step + 1, updated_at = now() \
             WHERE id = ANY(ARRAY(SELECT id FROM container_repositories r WHERE migration_state = 'pre_import_done' \
                         AND {NO_CANCEL_IN_FLIGHT} \
                         ORDER BY migration_pre_import_done_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
               AND migration_state = 'pre_import_done' {check} \
             RETURNING id, path, migration_step AS step"
        ))
        .bind(fence_param(fence))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The next `import_aborted` repository to retry, with whether its pre-import had finished.
    #[tracing::instrument(name = "db.next_aborted", skip_all, err(level = "warn"))]
    pub async fn next_aborted(&self) -> Result<Option<(AbortedRepo, bool)>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT id, path, migration_step, migration_pre_import_done_at IS NOT NULL AS pre_import_done \
             FROM container_repositories r WHERE migration_state = 'import_aborted' \
               AND {NO_CANCEL_IN_FLIGHT} \
             ORDER BY migration_priority DESC, path LIMIT 1"
        ))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| {
            let aborted = AbortedRepo {
                id: row.get("id"),
                path: row.get("path"),
                step: Step::from_db(row.get("migration_step")),
            };
            (aborted, row.get("pre_import_done"))
        }))
    }

    /// Moves an `import_aborted` repository (still at `repo.step`, no cancel requested) back
    /// into a step (fenced): `importing` (`to_final`, its pre-import counted done) or
    /// `pre_importing`. With `new_step` the step is a new one, numbered next, to be started;
    /// without, the repository goes back to watching the step it had, which still runs. Returns
    /// the step it is at now (`Some(None)`: watching a step from before steps were numbered; a
    /// new step is always numbered), or `None` if it was no longer aborted at that step.
    #[tracing::instrument(name = "db.resume_aborted", skip_all, err(level = "warn"))]
    pub async fn resume_aborted(
        &self,
        repo: &AbortedRepo,
        to_final: bool,
        new_step: bool,
        fence: Option<u64>,
    ) -> Result<Option<Option<Step>>, sqlx::Error> {
        let (with, check) = fenced(3);
        let step: Option<i64> = sqlx::query_scalar(&format!(
            "{with}UPDATE container_repositories r SET \
                 migration_state = CASE WHEN $2 THEN 'importing' ELSE 'pre_importing' END, \
                 migration_pre_import_started_at = CASE WHEN $2 THEN migration_pre_import_started_at ELSE now() END, \
                 migration_pre_import_done_at = CASE WHEN $2 THEN COALESCE(migration_pre_import_done_at, now()) ELSE NULL END, \
                 migration_import_started_at = CASE WHEN $2 THEN now() ELSE migration_import_started_at END, \
                 migration_import_done_at = NULL, \
                 migration_aborted_at = NULL, migration_aborted_in_state = NULL, migration_priority = 0, \
                 migration_step = CASE WHEN $5 THEN migration_step + 1 ELSE migration_step END, \
                 migration_importer = CASE WHEN $5 THEN NULL ELSE migration_importer END, \
                 migration_step_accepted_at = CASE WHEN $5 THEN NULL ELSE migration_step_accepted_at END, \
                 updated_at = now() \
             WHERE id = $1 AND migration_state = 'import_aborted' AND migration_step = $4 \
               AND {NO_CANCEL_IN_FLIGHT} {check} \
             RETURNING migration_step"
        ))
        .bind(repo.id)
        .bind(to_final)
        .bind(fence_param(fence))
        .bind(repo.step.db())
        .bind(new_step)
        .fetch_optional(&self.pool)
        .await?;
        Ok(step.map(Step::from_db))
    }

    /// `pre_importing` → `pre_import_done` at step `step`, adding the step's figures (fenced
    /// when `fence` is set). `None` if the repository was not pre-importing in that step (a
    /// duplicate or stale notification). A `step` of `None` is the unnumbered step of a
    /// repository from before steps were numbered (as for every statement that names the step
    /// a repository must be at).
    #[tracing::instrument(name = "db.finish_pre_import", skip_all, err(level = "warn"))]
    pub async fn finish_pre_import(
        &self,
        path: &str,
        step: impl Into<Option<Step>>,
        stats: &ImportStats,
        fence: Option<u64>,
    ) -> Result<Option<EndedStep>, sqlx::Error> {
        use step_end::{Apply, Pass};
        self.end_step(path, step.into(), Pass::Pre, stats, Apply::EndOnly(fence))
            .await
    }

    /// `importing` → `import_done` at step `step`, adding the step's figures (fenced when
    /// `fence` is set).
    #[tracing::instrument(name = "db.finish_import", skip_all, err(level = "warn"))]
    pub async fn finish_import(
        &self,
        path: &str,
        step: impl Into<Option<Step>>,
        stats: &ImportStats,
        fence: Option<u64>,
    ) -> Result<Option<EndedStep>, sqlx::Error> {
        use step_end::{Apply, Pass};
        self.end_step(path, step.into(), Pass::Final, stats, Apply::EndOnly(fence))
            .await
    }

    /// Like [`Self::finish_pre_import`] (unfenced: any replica may apply an end), applied by the
    /// lease holder whose token is `holder`: the repository moves straight on to `importing`,
    /// its final import claimed (`EndedStep::next`), when the token holds and the migration is
    /// enabled. See `store/step_end.rs`.
    #[tracing::instrument(
        name = "db.finish_pre_import_and_start_import",
        skip_all,
        err(level = "warn")
    )]
    pub async fn finish_pre_import_and_start_import(
        &self,
        path: &str,
        step: Step,
        stats: &ImportStats,
        holder: u64,
    ) -> Result<Option<EndedStep>, sqlx::Error> {
        use step_end::{Apply, Pass};
        self.end_step(path, Some(step), Pass::Pre, stats, Apply::HandOver(holder))
            .await
    }

    /// Like [`Self::finish_import`] (unfenced), applied by the lease holder whose token is
    /// `holder`: the freed slot's next ready repository is claimed for its pre-import in the same
    /// statement (`EndedStep::next`) when nothing else has to go first. See `store/step_end.rs`.
    #[tracing::instrument(
        name = "db.finish_import_and_claim_next",
        skip_all,
        err(level = "warn")
    )]
    pub async fn finish_import_and_claim_next(
        &self,
        path: &str,
        step: Step,
        stats: &ImportStats,
        holder: u64,
    ) -> Result<Option<EndedStep>, sqlx::Error> {
        use step_end::{Apply, Pass};
        self.end_step(
            path,
            Some(step),
            Pass::Final,
            stats,
            Apply::HandOver(holder),
        )
        .await
    }

    /// Finishes a repository at step `step` as `import_done` from any active or default state:
    /// with `reason` `native_import` or `not_found` when nothing was imported, or none when the
    /// importer reports an import it completed (whose notification was lost, or which won the
    /// race against a cancel).
    #[tracing::instrument(name = "db.finish_import_as", skip_all, err(level = "warn"))]
    pub async fn finish_import_as(
        &self,
        id: i64,
        step: impl Into<Option<Step>>,
        reason: Option<SkipReason>,
        fence: Option<u64>,
    ) -> Result<bool, sqlx::Error> {
        let (with, check) = fenced(4);
        let result = sqlx::query(&format!(
            "{with}UPDATE container_repositories SET migration_state = 'import_done', migration_import_done_at = now(), \
                 migration_skipped_reason = $2, migration_cancel_requested = NULL, updated_at = now() \
             WHERE id = $1 AND migration_state = ANY($3) AND migration_step = $5 {check}"
        ))
        .bind(id)
        .bind(reason)
        .bind(&MigrationState::PENDING[..])
        .bind(fence_param(fence))
        .bind(step.into().db())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Aborts a repository's step as `abort` says: only from its states and at its step (fenced
    /// when it names a token). A counted abort adds a retry, and skips the repository with
    /// `too_many_retries` once retries reach `max_retries`; a repository whose cancel was
    /// requested is skipped with that cancel's reason instead. Returns the end as applied (the
    /// new state, and the importer the step had, so that its slot is counted free again), or
    /// `None` when the repository was not in that step.
    #[tracing::instrument(name = "db.abort", skip_all, err(level = "warn"))]
    pub async fn abort(&self, abort: Abort<'_>) -> Result<Option<EndedStep>, sqlx::Error> {
        let (by_id, by_path) = match abort.key {
            RepoKey::Id(id) => (Some(id), None),
            RepoKey::Path(path) => (None, Some(path)),
        };
        let (with, check) = fenced(6);
        // $7: whether it counts; $8: the step.
        let row = sqlx::query(&format!(
            "{with}UPDATE container_repositories r SET \
                 migration_aborted_in_state = r.migration_state, \
                 migration_aborted_at = now(), \
                 migration_retries_count = r.migration_retries_count + v.added, \
                 migration_state = CASE WHEN v.skip IS NOT NULL THEN 'import_skipped' ELSE 'import_aborted' END, \
                 migration_skipped_reason = COALESCE(v.skip, r.migration_skipped_reason), \
                 migration_skipped_at = CASE WHEN v.skip IS NOT NULL THEN now() ELSE r.migration_skipped_at END, \
                 migration_last_error = left($5, 1024), updated_at = now() \
             FROM (SELECT id, CASE WHEN $7 THEN 1 ELSE 0 END AS added, \
                       CASE WHEN $7 AND migration_retries_count + 1 >= $4 \
                           THEN 'too_many_retries' END AS skip \
                   FROM container_repositories WHERE id = $1 OR path = $2) v \
             WHERE r.id = v.id AND r.migration_state = ANY($3) AND r.migration_step = $8 {check} \
             RETURNING r.migration_importer AS importer, r.migration_state, NULL::bigint AS next_id, \
                 NULL::text AS next_path, NULL::bigint AS next_step"
        ))
        .bind(by_id)
        .bind(by_path)
        .bind(abort.from)
        .bind(abort.max_retries)
        .bind(abort.error)
        .bind(fence_param(abort.fence))
        .bind(abort.counted)
        .bind(abort.step.db())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(step_end::ended_step))
    }
}

/// How to find the repository an update is for.
#[derive(Debug, Clone, Copy)]
pub enum RepoKey<'a> {
    /// By id.
    Id(i64),
    /// By path.
    Path(&'a str),
}
