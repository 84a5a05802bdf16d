//! The metadata database: every SQL statement the importer runs.

use std::sync::Arc;

use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::Semaphore;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::{MaybeStep, Step};

mod commit;
mod counts;
mod gc;
mod reads;
mod source;
mod statuses;
mod verify;

pub use commit::{CommitOutcome, StepCommit, WrittenCounts};
pub use counts::{EXACT_REPOSITORY_COUNT_UP_TO, RegisteredCounts};
pub use gc::{BlobRemoval, Protection, RemovalCheck};
pub use reads::{ServedRepository, StoredManifest};
pub use source::ReadTagLink;
pub use statuses::RecordedStatus;
pub use verify::RegisteredManifest;

/// Embedded migrations of the metadata database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/registry");

/// A repository's row, as the import API needs it.
#[derive(Debug, Clone)]
pub struct RepositoryRow {
    /// `migration_status`.
    pub status: MigrationStatus,
    /// `migration_error`.
    pub error: Option<String>,
    /// Seconds since `updated_at`.
    pub age_seconds: f64,
    /// The highest scheduler fencing token a step of it was started with.
    pub fence: u64,
    /// The step its status belongs to (the last step that claimed it; `None`: no numbered step
    /// has, as for a row from before steps were numbered).
    pub step: Option<Step>,
}

/// What a step may claim, for [`MetadataStore::begin_step`].
#[derive(Debug, Clone)]
pub struct StepClaim {
    /// The status the claim moves the repository to.
    pub in_progress: MigrationStatus,
    /// The statuses a repository may be claimed from.
    pub from: &'static [MigrationStatus],
    /// Whether a repository without a row gets one (a pre-import), or is refused (a final import).
    pub create: bool,
    /// The scheduler's fencing token for the start (0: unfenced).
    pub fence: u64,
    /// The step's number (`None`: the next after the row's, as the one-shot mode numbers its
    /// steps).
    pub step: Option<Step>,
}

/// A step claimed by [`MetadataStore::begin_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedStep {
    /// The repository's row.
    pub repository_id: i64,
    /// The step's number, which every later write of the step names.
    pub step: Step,
}

/// What [`MetadataStore::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The step was canceled (or, not started yet, canceled ahead of its start).
    Canceled {
        /// The status afterwards.
        status: MigrationStatus,
        /// The step it belongs to (`None`: a row from before steps were numbered, canceled
        /// without naming a step).
        step: Option<Step>,
    },
    /// Nothing was canceled: no step in progress (without force), the repository is native or
    /// its final import completed, or a newer step holds it.
    Refused {
        /// The status as it is.
        status: MigrationStatus,
        /// The step it belongs to.
        step: Option<Step>,
    },
    /// The repository has no row and no step was named.
    NoRow,
}

/// A repository as the listing APIs return it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ListedRepository {
    /// Its id (the created-since keyset's tie-breaker).
    pub id: i64,
    /// Its path.
    pub path: String,
    /// When its row was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When its row last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Repositories with at least one tag.
const TAGGED: &str = "EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = r.id)";

/// The metadata database.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    pool: PgPool,
    /// Step transactions open at once ([`commit_slots`]).
    commits: Arc<Semaphore>,
}

/// Step transactions a pool of `max_connections` lets be open at once. A step holds its
/// transaction's connection while it copies and writes its later chunks, and needs a second one
/// meanwhile for short statements (which blobs are registered, cancel polls): a quarter of the
/// pool, at least two connections, stays free of transactions, so those statements always find
/// one and steps never wait on each other in a circle. Steps beyond it wait for a turn to write.
pub fn commit_slots(max_connections: u32) -> usize {
    let max = max_connections as usize;
    if max < 3 { 1 } else { max - (max / 4).max(2) }
}

/// PostgreSQL could never grant the pool it is configured with.
#[derive(Debug, thiserror::Error)]
#[error(
    "FERRY_DB_MAX_CONNECTIONS is {configured}, but PostgreSQL accepts at most {usable} \
     connections from non-superusers (max_connections {max_connections}, \
     superuser_reserved_connections {reserved}); lower FERRY_DB_MAX_CONNECTIONS: steps share the \
     pool and wait for a connection"
)]
pub struct ConnectionLimitError {
    /// The pool's size.
    pub configured: u32,
    /// What PostgreSQL grants non-superusers in all.
    pub usable: i64,
    /// PostgreSQL's `max_connections`.
    pub max_connections: i64,
    /// PostgreSQL's `superuser_reserved_connections`.
    pub reserved: i64,
}

impl MetadataStore {
    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        let pool = ferry_shared::postgres::connect_pool(url, max_connections).await?;
        let commits = Arc::new(Semaphore::new(commit_slots(max_connections)));
        Ok(Self { pool, commits })
    }

    /// Whether PostgreSQL could never grant the pool (`Some`: why): a pool larger than
    /// `max_connections`, less the superusers' reserve, fails steps when they meet the limit,
    /// long after start-up.
    pub async fn connection_limit_problem(
        &self,
    ) -> Result<Option<ConnectionLimitError>, sqlx::Error> {
        let (max_connections, reserved): (i64, i64) = sqlx::query_as(
            "SELECT current_setting('max_connections')::bigint, \
                    current_setting('superuser_reserved_connections')::bigint",
        )
        .fetch_one(&self.pool)
        .await?;
        let configured = self.pool.options().get_max_connections();
        let usable = max_connections - reserved;
        Ok(
            (i64::from(configured) > usable).then_some(ConnectionLimitError {
                configured,
                usable,
                max_connections,
                reserved,
            }),
        )
    }

    /// Reports the pool's connections to the database metrics.
    pub fn report_pool(&self) {
        ferry_shared::metrics::DB.pool(
            "metadata",
            self.pool.size(),
            u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            self.pool.options().get_max_connections(),
        );
    }

    /// Applies pending migrations (safe to run from several replicas at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// The repository's row, if it has one.
    #[tracing::instrument(name = "db.repository", skip_all, err(level = "warn"))]
    pub async fn repository(
        &self,
        path: &RepositoryPath,
    ) -> Result<Option<RepositoryRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT migration_status, migration_error, migration_fence, migration_step, \
                    EXTRACT(EPOCH FROM now() - updated_at)::float8 AS age \
             FROM repositories WHERE path = $1",
        )
        .bind(path.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| RepositoryRow {
            status: MigrationStatus::from_db_str(row.get("migration_status")).unwrap_or_default(),
            error: row.get("migration_error"),
            age_seconds: row.get("age"),
            fence: u64::try_from(row.get::<i64, _>("migration_fence")).unwrap_or(0),
            step: step_of(&row),
        }))
    }

    /// Claims the repository for a step in one statement: moves it to `claim.in_progress` if its
    /// status is one of `claim.from` and the step is newer than the row's last one, creates its
    /// row in that status when it has none and `claim.create` allows it, and records the step and
    /// the start's fencing token (unless a start with a higher token was seen; 0: unfenced, the
    /// one-shot mode). An unnumbered step (`claim.step` of `None`) takes the row's next number.
    /// Returns the claimed step, or `None` when the row refuses it (read the row to learn why).
    #[tracing::instrument(name = "db.begin_step", skip_all, err(level = "warn"))]
    pub async fn begin_step(
        &self,
        path: &RepositoryPath,
        claim: &StepClaim,
    ) -> Result<Option<ClaimedStep>, sqlx::Error> {
        let fence = to_i64(claim.fence);
        let step = claim.step.db();
        let from: Vec<&str> = claim.from.iter().map(|s| s.as_db_str()).collect();
        // `r` is the existing row; $1 path, $2 status, $3 fence, $4 claimable statuses, $5 step.
        const CLAIMABLE: &str = "r.migration_status = ANY($4) AND ($3 = 0 OR r.migration_fence <= $3) \
             AND ($5 = 0 OR r.migration_step < $5)";
        let sql = if claim.create {
            format!(
                "INSERT INTO repositories AS r (path, name, migration_status, migration_fence, migration_step) \
                 VALUES ($1, $6, $2, $3, GREATEST($5, 1)) \
                 ON CONFLICT (path) DO UPDATE SET migration_status = EXCLUDED.migration_status, \
                     migration_error = NULL, updated_at = now(), \
                     migration_fence = GREATEST(r.migration_fence, EXCLUDED.migration_fence), \
                     migration_step = CASE WHEN $5 = 0 THEN r.migration_step + 1 ELSE $5 END \
                 WHERE {CLAIMABLE} RETURNING id, migration_step"
            )
        } else {
            format!(
                "UPDATE repositories r SET migration_status = $2, migration_error = NULL, \
                     updated_at = now(), migration_fence = GREATEST(r.migration_fence, $3), \
                     migration_step = CASE WHEN $5 = 0 THEN r.migration_step + 1 ELSE $5 END \
                 WHERE r.path = $1 AND {CLAIMABLE} RETURNING id, migration_step"
            )
        };
        let query = sqlx::query(&sql)
            .bind(path.as_str())
            .bind(claim.in_progress.as_db_str())
            .bind(fence)
            .bind(from)
            .bind(step);
        let query = if claim.create {
            query.bind(path.name())
        } else {
            query
        };
        let Some(row) = query.fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        // A claim always numbers the step (its own number, or the row's next, at least 1).
        let step = row.try_get("migration_step").and_then(|step: i64| {
            Step::try_from(step).map_err(|e| sqlx::Error::ColumnDecode {
                index: "migration_step".into(),
                source: Box::new(e),
            })
        })?;
        Ok(Some(ClaimedStep {
            repository_id: row.get("id"),
            step,
        }))
    }

    /// Whether any repository lives in the top-level namespace `namespace`.
    #[tracing::instrument(name = "db.namespace_exists", skip_all, err(level = "warn"))]
    pub async fn namespace_exists(&self, namespace: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM repositories \
                 WHERE path COLLATE \"C\" >= $1 AND path COLLATE \"C\" < $1 || '0' \
                   AND (path COLLATE \"C\" = $1 OR path COLLATE \"C\" > $1 || '/'))",
        )
        .bind(namespace)
        .fetch_one(&self.pool)
        .await
    }

    /// Tagged repositories whose path is `path` or starts with `path/`, after `last`, in byte
    /// order. One index range, `[path, path || '0')` (`'0'` is the byte after `'/'`), filtered
    /// to `path` itself and the paths past `path/`: a plan PostgreSQL keeps when it caches the
    /// statement's generic plan (an `OR` of two ranges made it scan the whole index instead).
    #[tracing::instrument(name = "db.sub_repositories", skip_all, err(level = "warn"))]
    pub async fn sub_repositories(
        &self,
        path: &RepositoryPath,
        last: &str,
        limit: i64,
    ) -> Result<Vec<ListedRepository>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT r.id, r.path, r.created_at, r.updated_at FROM repositories r \
             WHERE r.path COLLATE \"C\" >= $1 AND r.path COLLATE \"C\" < $1 || '0' \
               AND (r.path COLLATE \"C\" = $1 OR r.path COLLATE \"C\" > $1 || '/') \
               AND r.path COLLATE \"C\" > $2 AND {TAGGED} \
             ORDER BY r.path COLLATE \"C\" LIMIT $3"
        ))
        .bind(path.as_str())
        .bind(last)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// [`Self::sub_repositories`] for many paths at once: `(index into paths, repository path)`
    /// in that order, after the `(index, path)` position `after`. One statement: each path is
    /// an index range scan; a `None` path matches nothing.
    #[tracing::instrument(name = "db.sub_repositories_batch", skip_all, err(level = "warn"))]
    pub async fn sub_repositories_batch(
        &self,
        paths: &[Option<&str>],
        after: Option<(i32, &str)>,
        limit: i64,
    ) -> Result<Vec<(i32, String)>, sqlx::Error> {
        let (after_index, after_path) = after.unwrap_or((-1, ""));
        sqlx::query_as(&format!(
            "SELECT (q.ord - 1)::int, s.path FROM UNNEST($1::text[]) WITH ORDINALITY AS q(p, ord) \
             CROSS JOIN LATERAL ( \
                 SELECT r.path FROM repositories r \
                 WHERE r.path COLLATE \"C\" >= q.p AND r.path COLLATE \"C\" < q.p || '0' \
                   AND (r.path COLLATE \"C\" = q.p OR r.path COLLATE \"C\" > q.p || '/') \
                   AND (q.ord - 1 > $2 OR r.path COLLATE \"C\" > $3) AND {TAGGED} \
                 ORDER BY r.path COLLATE \"C\" LIMIT $4) s \
             WHERE q.ord - 1 >= $2 \
             ORDER BY q.ord, s.path COLLATE \"C\" LIMIT $4"
        ))
        .bind(paths)
        .bind(i64::from(after_index))
        .bind(after_path)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Tagged repositories created at or after `since`, after the `(created_at, id)` marker.
    #[tracing::instrument(name = "db.created_since", skip_all, err(level = "warn"))]
    pub async fn created_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        after: Option<(chrono::DateTime<chrono::Utc>, i64)>,
        limit: i64,
    ) -> Result<Vec<ListedRepository>, sqlx::Error> {
        let (after_at, after_id) = after.unzip();
        sqlx::query_as(&format!(
            "SELECT r.id, r.path, r.created_at, r.updated_at FROM repositories r \
             WHERE r.created_at >= $1 \
               AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3)) AND {TAGGED} \
             ORDER BY r.created_at, r.id LIMIT $4"
        ))
        .bind(since)
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Cancels the repository's step `step` (`None`: whichever it is in): `pre_import_canceled`
    /// from a pre-import's status, `import_canceled` from a final import's. A step in progress is
    /// always canceled; `force` also cancels a pre-import that completed and a failed or canceled
    /// step. Never canceled: a native repository, a completed final import (the completion won),
    /// a newer step than `step`. A step not started yet (the row's step is older, or there is no
    /// row) is canceled ahead: the row takes its number, so its start will be refused.
    #[tracing::instrument(name = "db.cancel", skip_all, err(level = "warn"))]
    pub async fn cancel(
        &self,
        path: &RepositoryPath,
        step: Option<Step>,
        force: bool,
    ) -> Result<CancelOutcome, sqlx::Error> {
        let number = step.db();
        // Two tries: a row created between the update and the insert is canceled by the second.
        // The row is locked `FOR NO KEY UPDATE`, as the update itself locks it: a step writing
        // its chunks holds only key-share locks on it, so a cancel never waits for the step.
        for _ in 0..2 {
            let canceled = sqlx::query(
                "UPDATE repositories r SET \
                     migration_status = CASE WHEN o.cancels THEN \
                         CASE WHEN o.was LIKE 'pre_import%' THEN 'pre_import_canceled' ELSE 'import_canceled' END \
                         ELSE r.migration_status END, \
                     migration_error = CASE WHEN NOT o.cancels THEN r.migration_error \
                         WHEN $2 THEN 'forced cancelation' \
                         WHEN o.was = 'pre_import_in_progress' THEN 'pre import canceled' \
                         ELSE 'final import canceled' END, \
                     migration_step = GREATEST(r.migration_step, $3), updated_at = now() \
                 FROM (SELECT id, migration_status AS was, \
                           migration_status IN ('pre_import_in_progress', 'import_in_progress') OR $2 AS cancels \
                       FROM repositories WHERE path = $1 FOR NO KEY UPDATE) o \
                 WHERE r.id = o.id AND r.migration_status NOT IN ('native', 'import_complete') \
                   AND ($3 = 0 OR r.migration_step <= $3) AND (o.cancels OR r.migration_step < $3) \
                 RETURNING r.migration_status, r.migration_step",
            )
            .bind(path.as_str())
            .bind(force)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = canceled {
                return Ok(CancelOutcome::Canceled {
                    status: status_of(&row),
                    step: step_of(&row),
                });
            }
            if let Some(row) = self.repository(path).await? {
                return Ok(CancelOutcome::Refused {
                    status: row.status,
                    step: row.step,
                });
            }
            if step.is_none() {
                return Ok(CancelOutcome::NoRow);
            }
            let ahead = sqlx::query(
                "INSERT INTO repositories (path, name, migration_status, migration_error, migration_step) \
                 VALUES ($1, $2, 'pre_import_canceled', 'canceled before it started', $3) \
                 ON CONFLICT (path) DO NOTHING RETURNING migration_status, migration_step",
            )
            .bind(path.as_str())
            .bind(path.name())
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(row) = ahead {
                return Ok(CancelOutcome::Canceled {
                    status: status_of(&row),
                    step: step_of(&row),
                });
            }
        }
        Ok(match self.repository(path).await? {
            Some(row) => CancelOutcome::Refused {
                status: row.status,
                step: row.step,
            },
            None => CancelOutcome::NoRow,
        })
    }

    /// Which of `digests` the repository already has registered as manifests. A manifest is
    /// registered with its blobs, layers and index references in one transaction, so a
    /// registered one needs nothing more.
    #[tracing::instrument(name = "db.registered_manifests", skip_all, err(level = "warn"))]
    pub async fn registered_manifests(
        &self,
        path: &RepositoryPath,
        digests: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.path = $1 AND m.digest = ANY($2)",
        )
        .bind(path.as_str())
        .bind(digests)
        .fetch_all(&self.pool)
        .await
    }

    /// Records a failed step, only if the repository is still `in_progress` in that step.
    /// Returns whether it was recorded.
    #[tracing::instrument(name = "db.fail_step", skip_all, err(level = "warn"))]
    pub async fn fail_step(
        &self,
        claimed: ClaimedStep,
        in_progress: MigrationStatus,
        failed: MigrationStatus,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE repositories SET migration_status = $3, migration_error = $4, updated_at = now() \
             WHERE id = $1 AND migration_status = $2 AND migration_step = $5",
        )
        .bind(claimed.repository_id)
        .bind(in_progress.as_db_str())
        .bind(failed.as_db_str())
        .bind(reason)
        .bind(claimed.step.db())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }
}

fn status_of(row: &sqlx::postgres::PgRow) -> MigrationStatus {
    MigrationStatus::from_db_str(row.get("migration_status")).unwrap_or_default()
}

fn step_of(row: &sqlx::postgres::PgRow) -> Option<Step> {
    Step::from_db(row.get("migration_step"))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::commit_slots;

    #[test]
    fn transactions_leave_a_quarter_of_the_pool_for_short_statements() {
        assert_eq!(commit_slots(1), 1);
        assert_eq!(commit_slots(3), 1);
        assert_eq!(commit_slots(10), 8);
        assert_eq!(commit_slots(32), 24);
        assert_eq!(commit_slots(202), 152);
    }
}
