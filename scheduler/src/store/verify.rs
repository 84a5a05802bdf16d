//! Verification bookkeeping: which repositories a verification covers, and each one's last
//! outcome, recorded only while the repository is still done at the step that was verified.

use sqlx::Row;

use ferry_shared::step::{MaybeStep, Step};

use super::SchedulerStore;
use crate::state::{MigrationState, VerifyResult};

/// A repository a verification was asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyTarget {
    /// Its path.
    pub path: String,
    /// Its state (`None`: the scheduler does not know it).
    pub state: Option<MigrationState>,
    /// The step that brought it to its state.
    pub step: Option<Step>,
}

/// A verification's outcome, as recorded on the repository.
#[derive(Debug, Clone, Copy)]
pub struct VerificationRecord<'a> {
    /// The repository.
    pub path: &'a str,
    /// The step that was verified: nothing is recorded if the repository moved on since.
    pub step: Option<Step>,
    /// How it came out.
    pub result: VerifyResult,
    /// Differences found.
    pub differences: u64,
    /// The first difference or the failure, in words (cut to 1,024 characters).
    pub detail: &'a str,
}

impl SchedulerStore {
    /// Repositories in `import_done`.
    #[tracing::instrument(name = "db.count_done", skip_all, err(level = "warn"))]
    pub async fn count_done(&self) -> Result<u64, sqlx::Error> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM container_repositories WHERE migration_state = 'import_done'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Up to `limit` repositories in `import_done` after `after`, by path (byte order).
    #[tracing::instrument(name = "db.done_page", skip_all, err(level = "warn"))]
    pub async fn done_page(
        &self,
        after: &str,
        limit: i64,
    ) -> Result<Vec<VerifyTarget>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, migration_step FROM container_repositories \
             WHERE migration_state = 'import_done' AND path COLLATE \"C\" > $1 \
             ORDER BY path COLLATE \"C\" LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(VerifyTarget {
                    path: row.try_get("path")?,
                    state: Some(MigrationState::ImportDone),
                    step: Step::from_db(row.try_get("migration_step")?),
                })
            })
            .collect()
    }

    /// The state and step of each of `paths`, in the order given (an unknown path has none).
    #[tracing::instrument(name = "db.verify_targets", skip_all, err(level = "warn"))]
    pub async fn verify_targets(&self, paths: &[String]) -> Result<Vec<VerifyTarget>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, migration_state, migration_step FROM container_repositories \
             WHERE path = ANY($1)",
        )
        .bind(paths)
        .fetch_all(&self.pool)
        .await?;
        let mut known = std::collections::HashMap::new();
        for row in rows {
            let path: String = row.try_get("path")?;
            let state: MigrationState = row.try_get("migration_state")?;
            let step = Step::from_db(row.try_get("migration_step")?);
            known.insert(path, (state, step));
        }
        Ok(paths
            .iter()
            .map(|path| {
                let found = known.get(path);
                VerifyTarget {
                    path: path.clone(),
                    state: found.map(|(state, _)| *state),
                    step: found.and_then(|(_, step)| *step),
                }
            })
            .collect())
    }

    /// Records a verification's outcome if the repository is still `import_done` at the step
    /// that was verified. Returns whether it was recorded.
    #[tracing::instrument(name = "db.record_verification", skip_all, err(level = "warn"))]
    pub async fn record_verification(
        &self,
        record: VerificationRecord<'_>,
    ) -> Result<bool, sqlx::Error> {
        let detail: String = record.detail.chars().take(1024).collect();
        let updated = sqlx::query(
            "UPDATE container_repositories SET verified_at = now(), verify_outcome = $3, \
                 verify_differences = $4, verify_detail = NULLIF($5, '') \
             WHERE path = $1 AND migration_state = 'import_done' AND migration_step = $2",
        )
        .bind(record.path)
        .bind(record.step.db())
        .bind(record.result)
        .bind(i64::try_from(record.differences).unwrap_or(i64::MAX))
        .bind(detail)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

    /// Repositories in `import_done` by their last verification's outcome (`None`: never
    /// verified).
    #[tracing::instrument(name = "db.verification_counts", skip_all, err(level = "warn"))]
    pub async fn verification_counts(
        &self,
    ) -> Result<Vec<(Option<VerifyResult>, i64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT verify_outcome, count(*) AS n FROM container_repositories \
             WHERE migration_state = 'import_done' GROUP BY verify_outcome",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| Ok((row.try_get("verify_outcome")?, row.try_get("n")?)))
            .collect()
    }
}
