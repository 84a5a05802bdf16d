//! The state rebuild's statements (see `crate::rebuild`): the lock that keeps a rebuild apart
//! from other rebuilds and inventories, the repositories no step has claimed yet, and writing
//! the states rebuilt from the importers' records, each a compare-and-set on that unclaimed
//! state.

use sqlx::{Connection, PgConnection, Row};

use ferry_shared::step::MaybeStep;

use super::SchedulerStore;
use crate::rebuild::RebuiltState;
use crate::state::MigrationState;

/// The advisory lock key of bulk registrations (`ferry`, then `bulk`, as bytes).
const BULK_LOCK_KEY: i64 = 0x6665_7272_7962_756c;

/// Held while an inventory (shared) or a rebuild (exclusive) runs, on every replica: a
/// PostgreSQL advisory lock on a connection of its own, taken out of the pool. [`Self::release`]
/// lets it go at once; dropped instead (a task cut short), its connection closes, and the
/// server lets the lock go when it sees the session end.
#[derive(Debug)]
pub struct BulkLock {
    conn: PgConnection,
}

impl BulkLock {
    /// Lets the lock go and closes its connection.
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut self.conn)
            .await;
        if let Err(error) = unlocked {
            tracing::warn!(%error, "releasing the bulk lock failed; it goes with its connection");
        }
        let _ = self.conn.close().await;
    }
}

/// The repository states a rebuild wrote, by the state written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Paths written, with the state each now has.
    pub states: Vec<(String, MigrationState)>,
}

impl SchedulerStore {
    /// Takes the bulk lock, shared (an inventory: several may run at once) or exclusive (a
    /// rebuild); `None` when the other kind holds it (or, for exclusive, anyone does).
    #[tracing::instrument(name = "db.try_bulk_lock", skip_all, err(level = "warn"))]
    pub async fn try_bulk_lock(&self, exclusive: bool) -> Result<Option<BulkLock>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?.detach();
        let sql = if exclusive {
            "SELECT pg_try_advisory_lock($1)"
        } else {
            "SELECT pg_try_advisory_lock_shared($1)"
        };
        let taken: bool = sqlx::query_scalar(sql)
            .bind(BULK_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if taken {
            Ok(Some(BulkLock { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Up to `limit` repositories after `after`, by path, that no step has claimed yet: `default`
    /// at step 0 with no cancel requested (all of them, after the scheduler database was lost).
    #[tracing::instrument(name = "db.unclaimed_paths", skip_all, err(level = "warn"))]
    pub async fn unclaimed_paths(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT path FROM container_repositories \
             WHERE migration_state = 'default' AND migration_step = 0 \
               AND migration_cancel_requested IS NULL AND path > $1 \
             ORDER BY path LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Writes each rebuilt state in one statement, only where the repository is still unclaimed
    /// (see [`Self::unclaimed_paths`]): a repository a step claimed meanwhile, or one written by
    /// an earlier rebuild, is left alone. Returns what was written.
    #[tracing::instrument(name = "db.write_rebuilt", skip_all, err(level = "warn"))]
    pub async fn write_rebuilt(&self, batch: &[RebuiltState]) -> Result<Written, sqlx::Error> {
        if batch.is_empty() {
            return Ok(Written::default());
        }
        let now = chrono::Utc::now();
        let mut paths = Vec::with_capacity(batch.len());
        let mut states = Vec::with_capacity(batch.len());
        let mut steps = Vec::with_capacity(batch.len());
        let mut reasons = Vec::with_capacity(batch.len());
        let mut aborted_in = Vec::with_capacity(batch.len());
        let mut errors = Vec::with_capacity(batch.len());
        let mut stamps: [Vec<Option<chrono::DateTime<chrono::Utc>>>; 5] = Default::default();
        for row in batch {
            paths.push(row.path.as_str());
            states.push(row.kind.state().as_str());
            steps.push(row.step.db());
            reasons.push(row.kind.skipped_reason().map(|r| r.as_str()));
            aborted_in.push(row.kind.aborted_in_state().map(MigrationState::as_str));
            errors.push(row.last_error.as_deref());
            for (column, stamp) in stamps.iter_mut().zip(row.kind.stamps(row.since, now)) {
                column.push(stamp);
            }
        }
        let [pre_started, pre_done, started, done, aborted] = stamps;
        let rows = sqlx::query(
            "UPDATE container_repositories r SET migration_state = v.state, \
                 migration_step = v.step, migration_skipped_reason = v.reason, \
                 migration_aborted_in_state = v.aborted_in, migration_last_error = v.error, \
                 migration_pre_import_started_at = v.pre_started, \
                 migration_pre_import_done_at = v.pre_done, \
                 migration_import_started_at = v.started, migration_import_done_at = v.done, \
                 migration_aborted_at = v.aborted, migration_retries_count = 0, \
                 migration_importer = NULL, migration_step_accepted_at = NULL, updated_at = now() \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], \
                         $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], \
                         $11::timestamptz[]) \
                 AS v(path, state, step, reason, aborted_in, error, pre_started, pre_done, started, done, aborted) \
             WHERE r.path = v.path AND r.migration_state = 'default' AND r.migration_step = 0 \
               AND r.migration_cancel_requested IS NULL \
             RETURNING r.path, r.migration_state",
        )
        .bind(&paths)
        .bind(&states)
        .bind(&steps)
        .bind(&reasons)
        .bind(&aborted_in)
        .bind(&errors)
        .bind(&pre_started)
        .bind(&pre_done)
        .bind(&started)
        .bind(&done)
        .bind(&aborted)
        .fetch_all(&self.pool)
        .await?;
        Ok(Written {
            states: rows
                .iter()
                .map(|row| (row.get("path"), row.get("migration_state")))
                .collect(),
        })
    }
}
