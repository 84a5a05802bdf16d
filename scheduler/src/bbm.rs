//! The batched background migration worker.
//!
//! Every replica runs one; a PostgreSQL session advisory lock lets one at a time do a run. A run
//! (at most [`MAX_RUN_TIME`]) takes the oldest `active` or `running` migration, checks its work
//! function, table and column, and runs one job: first it cuts new jobs over the column in
//! `batch_size` steps (keyset: the next job starts after the last one's end) until a job reaches
//! the migration's end, then it retries failed jobs, and a job that has used up its attempts
//! fails the migration with `job_exceeds_max_attempt`. With no failed job left the migration is
//! `finished`. Runs are `interval` apart plus a random jitter of up to [`JOB_INTERVAL_JITTER`].
//!
//! A job's work runs in one transaction with the job's `finished` mark, so a job's effect and its
//! record commit together. Attempts are counted before the work starts and survive a crash or a
//! timeout; a job left `running` by such an attempt is retried like a failed one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::{Connection, PgConnection};

use crate::metrics::BbmMetrics;
use crate::store::SchedulerStore;
use crate::store::bbm::{self, BackgroundMigration, BackgroundMigrationJob, TargetCheck};

/// Attempts a job gets before it fails its migration.
pub const DEFAULT_MAX_JOB_ATTEMPTS: i32 = 5;
/// Time between runs, before jitter.
pub const DEFAULT_JOB_INTERVAL: Duration = Duration::from_secs(60);
/// Most random time added to each interval, so replicas do not all wake at once.
pub const JOB_INTERVAL_JITTER: Duration = Duration::from_secs(5);
/// Cap on one run.
pub const MAX_RUN_TIME: Duration = Duration::from_secs(180);

/// Error codes a migration fails with (`failure_error_code`).
pub mod codes {
    /// The work function failed in a way not otherwise classified.
    pub const UNKNOWN: &str = "unknown";
    /// The target table does not exist.
    pub const INVALID_TABLE: &str = "invalid_table";
    /// The target column does not exist.
    pub const INVALID_COLUMN: &str = "invalid_column";
    /// No work function is registered under the migration's job signature name.
    pub const INVALID_JOB_SIGNATURE: &str = "invalid_job_signature";
    /// A job failed on each of its attempts.
    pub const JOB_EXCEEDS_MAX_ATTEMPT: &str = "job_exceeds_max_attempt";
    /// A job's attempt ran past the end of its run.
    pub const TIMEOUT: &str = "timeout";
}

/// The range a job covers, with its migration's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRange {
    /// The table paged over.
    pub table: String,
    /// Its integer column.
    pub column: String,
    /// First value (inclusive).
    pub start: i64,
    /// Last value (inclusive).
    pub end: i64,
    /// The migration's batch size.
    pub batch_size: i32,
}

/// Why a work function failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// A statement failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Anything else: a peer was unreachable, data was unexpected.
    #[error("{0}")]
    Failed(String),
}

/// A work function: what a migration's jobs do. It runs inside the job's transaction and must be
/// safe to run again over the same range (a retried job does).
#[async_trait]
pub trait Work: Send + Sync {
    /// The name migrations refer to it by (`job_signature_name`).
    fn name(&self) -> &'static str;

    /// Does the job's work.
    async fn run(&self, tx: &mut PgConnection, range: &JobRange) -> Result<(), WorkError>;
}

/// The work functions known to this scheduler, by name.
#[derive(Clone, Default)]
pub struct WorkRegistry(HashMap<&'static str, Arc<dyn Work>>);

impl std::fmt::Debug for WorkRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// Two work functions with one name.
#[derive(Debug, thiserror::Error)]
#[error("two work functions are named {0}")]
pub struct DuplicateWork(pub &'static str);

impl WorkRegistry {
    /// Registers `work`; names must be unique.
    pub fn register(&mut self, work: Arc<dyn Work>) -> Result<(), DuplicateWork> {
        let name = work.name();
        if self.0.insert(name, work).is_some() {
            return Err(DuplicateWork(name));
        }
        Ok(())
    }

    /// The work function named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Work>> {
        self.0.get(name)
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// The worker's timing and limits.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Time between runs (plus jitter); zero disables the worker.
    pub interval: Duration,
    /// Attempts per job.
    pub max_job_attempts: i32,
    /// Cap on one run.
    pub max_run_time: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            interval: DEFAULT_JOB_INTERVAL,
            max_job_attempts: DEFAULT_MAX_JOB_ATTEMPTS,
            max_run_time: MAX_RUN_TIME,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// Another worker holds the lock.
    LockInUse,
    /// No migration to run.
    Idle,
    /// The migration was paused while the run looked at it.
    Paused,
    /// A job's attempt finished.
    JobFinished {
        /// The migration.
        migration: String,
        /// The job's range.
        start: i64,
        /// The job's range.
        end: i64,
    },
    /// A job's attempt failed; it will be retried.
    JobFailed {
        /// The migration.
        migration: String,
        /// The job's range.
        start: i64,
        /// The job's range.
        end: i64,
        /// Why.
        error: String,
    },
    /// The migration has finished.
    MigrationFinished(String),
    /// The migration failed with an error code.
    MigrationFailed {
        /// The migration.
        migration: String,
        /// Its `failure_error_code`.
        code: &'static str,
    },
    /// The run hit its time cap; the job in hand stays `running` and is retried.
    TimedOut,
}

impl RunOutcome {
    /// Every outcome's name, each a `ferry_bbm_worker_runs_total` series from start-up.
    pub const LABELS: [&'static str; 8] = [
        "lock_in_use",
        "idle",
        "paused",
        "job_finished",
        "job_failed",
        "migration_finished",
        "migration_failed",
        "timed_out",
    ];

    /// The outcome's name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::LockInUse => "lock_in_use",
            RunOutcome::Idle => "idle",
            RunOutcome::Paused => "paused",
            RunOutcome::JobFinished { .. } => "job_finished",
            RunOutcome::JobFailed { .. } => "job_failed",
            RunOutcome::MigrationFinished(_) => "migration_finished",
            RunOutcome::MigrationFailed { .. } => "migration_failed",
            RunOutcome::TimedOut => "timed_out",
        }
    }
}

/// The worker.
#[derive(Debug, Clone)]
pub struct Worker {
    store: SchedulerStore,
    work: WorkRegistry,
    config: WorkerConfig,
    metrics: BbmMetrics,
}

/// What to run next.
enum Next {
    Job(Box<(BackgroundMigration, BackgroundMigrationJob)>),
    Done(RunOutcome),
}

impl Worker {
    /// A worker running `work` over the scheduler database.
    pub fn new(store: SchedulerStore, work: WorkRegistry, config: WorkerConfig) -> Self {
        Self {
            store,
            work,
            config,
            metrics: BbmMetrics::default(),
        }
    }

    /// The worker, reporting to `metrics`: every migration it can run is a series from
    /// start-up.
    pub fn with_metrics(self, metrics: BbmMetrics) -> Self {
        for name in self.work.0.keys() {
            metrics.known_migration(name);
        }
        Self { metrics, ..self }
    }

    /// Runs until `shutdown`: one run per interval (plus jitter). A run in progress finishes
    /// first (it is capped).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if self.config.interval.is_zero() {
            tracing::info!("background migration worker disabled");
            return;
        }
        // The migrations' figures from the start, not only after the first run.
        match self.store.background_migrations(None).await {
            Ok(migrations) => self.metrics.migrations(&migrations),
            Err(error) => tracing::warn!(%error, "reading the background migrations failed"),
        }
        tokio::pin!(shutdown);
        loop {
            let jitter = JOB_INTERVAL_JITTER.mul_f64(rand::random::<f64>());
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(self.config.interval + jitter) => {}
            }
            match self.run_once().await {
                Ok(RunOutcome::LockInUse | RunOutcome::Idle) => {}
                Ok(outcome) => tracing::info!(?outcome, "background migration run"),
                Err(error) => tracing::warn!(%error, "background migration run failed"),
            }
        }
    }

    /// One run: take the lock, pick a job, run it. Capped at `max_run_time`.
    pub async fn run_once(&self) -> Result<RunOutcome, sqlx::Error> {
        let outcome = self.run_capped().await?;
        self.metrics.run(outcome.label());
        if outcome != RunOutcome::LockInUse {
            self.metrics
                .migrations(&self.store.background_migrations(None).await?);
        }
        Ok(outcome)
    }

    async fn run_capped(&self) -> Result<RunOutcome, sqlx::Error> {
        let Some(mut conn) = self.store.lock_background_migrations().await? else {
            return Ok(RunOutcome::LockInUse);
        };
        match tokio::time::timeout(self.config.max_run_time, self.run_locked(&mut conn)).await {
            Ok(result) => {
                // Give the lock back; a connection that cannot is closed, which releases it.
                match bbm::unlock_background_migrations(&mut conn).await {
                    Ok(true) => {}
                    _ => drop(conn.detach()),
                }
                result
            }
            Err(_) => {
                tracing::warn!(
                    cap = ?self.config.max_run_time,
                    "background migration run timed out; its job will be retried"
                );
                // The connection may be mid-statement: close it, which releases the lock.
                drop(conn.detach());
                Ok(RunOutcome::TimedOut)
            }
        }
    }

    async fn run_locked(&self, conn: &mut PgConnection) -> Result<RunOutcome, sqlx::Error> {
        let (migration, job) = match self.find_job(conn).await? {
            Next::Done(outcome) => return Ok(outcome),
            Next::Job(next) => *next,
        };
        let Some(work) = self.work.get(&migration.job_signature_name).cloned() else {
            // Checked by find_job; a registry cannot change within a run.
            return Ok(RunOutcome::Idle);
        };
        let attempt = bbm::start_attempt(conn, job.id).await?;
        let range = JobRange {
            table: migration.table_name.clone(),
            column: migration.column_name.clone(),
            start: job.min_value,
            end: job.max_value,
            batch_size: migration.batch_size,
        };
        tracing::info!(
            migration = migration.name,
            job = job.id,
            start = job.min_value,
            end = job.max_value,
            attempt,
            "background migration job starting"
        );
        let started = Instant::now();
        let mut tx = conn.begin().await?;
        let result = work.run(&mut tx, &range).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.metrics.job(
            &migration.name,
            result.is_ok(),
            started.elapsed().as_secs_f64(),
            migration.batch_size,
        );
        match result {
            Ok(()) => {
                bbm::end_attempt(&mut tx, job.id, None, Some(duration_ms)).await?;
                tx.commit().await?;
                tracing::info!(
                    migration = migration.name,
                    job = job.id,
                    duration_ms,
                    "background migration job finished"
                );
                Ok(RunOutcome::JobFinished {
                    migration: migration.name,
                    start: job.min_value,
                    end: job.max_value,
                })
            }
            Err(error) => {
                tx.rollback().await?;
                let message = error.to_string();
                bbm::end_attempt(
                    conn,
                    job.id,
                    Some((codes::UNKNOWN, &message)),
                    Some(duration_ms),
                )
                .await?;
                tracing::warn!(
                    migration = migration.name,
                    job = job.id,
                    attempt,
                    error = message,
                    "background migration job failed"
                );
                Ok(RunOutcome::JobFailed {
                    migration: migration.name,
                    start: job.min_value,
                    end: job.max_value,
                    error: message,
                })
            }
        }
    }

    /// Picks the migration and its next job, failing or finishing the migration on the way.
    async fn find_job(&self, conn: &mut PgConnection) -> Result<Next, sqlx::Error> {
        let Some(migration) = bbm::next_runnable(conn).await? else {
            return Ok(Next::Done(RunOutcome::Idle));
        };
        if let Some(code) = self.validate(conn, &migration).await? {
            tracing::error!(
                migration = migration.name,
                code,
                job_signature_name = migration.job_signature_name,
                table = migration.table_name,
                column = migration.column_name,
                "background migration failed validation"
            );
            return self.fail(conn, migration, code).await;
        }
        if !bbm::mark_running(conn, migration.id).await? {
            return Ok(Next::Done(RunOutcome::Paused));
        }
        let last = bbm::last_job(conn, migration.id).await?;
        match last {
            // New jobs first, until one reaches the end of the range.
            None => {
                let start = migration.min_value;
                self.new_job(conn, migration, start).await
            }
            Some(last) if last.max_value < migration.max_value => {
                let start = last.max_value.saturating_add(1);
                self.new_job(conn, migration, start).await
            }
            // Then the failed ones.
            Some(_) => match self.retryable_job(conn, migration.id).await? {
                None => {
                    bbm::end_migration(conn, migration.id, None).await?;
                    tracing::info!(migration = migration.name, "background migration finished");
                    Ok(Next::Done(RunOutcome::MigrationFinished(migration.name)))
                }
                Some(job) if job.attempts >= self.config.max_job_attempts => {
                    tracing::error!(
                        migration = migration.name,
                        job = job.id,
                        attempts = job.attempts,
                        last_error = job.last_error,
                        "a job used up its attempts: failing the background migration"
                    );
                    self.fail(conn, migration, codes::JOB_EXCEEDS_MAX_ATTEMPT)
                        .await
                }
                Some(job) => Ok(Next::Job(Box::new((migration, job)))),
            },
        }
    }

    /// The next job to retry. One left `running` never reported: its attempt is recorded as
    /// timed out first.
    async fn retryable_job(
        &self,
        conn: &mut PgConnection,
        migration_id: i64,
    ) -> Result<Option<BackgroundMigrationJob>, sqlx::Error> {
        let Some(mut job) = bbm::retryable_job(conn, migration_id).await? else {
            return Ok(None);
        };
        if job.status == "running" {
            let message = "the attempt never reported: its run timed out or its process stopped";
            bbm::end_attempt(conn, job.id, Some((codes::TIMEOUT, message)), None).await?;
            job.status = "failed".into();
            job.last_error = Some(message.into());
        }
        Ok(Some(job))
    }

    async fn new_job(
        &self,
        conn: &mut PgConnection,
        migration: BackgroundMigration,
        start: i64,
    ) -> Result<Next, sqlx::Error> {
        let end = bbm::job_end(
            conn,
            &migration.table_name,
            &migration.column_name,
            start,
            migration.max_value,
            migration.batch_size,
        )
        .await?;
        let job = bbm::create_job(conn, migration.id, start, end).await?;
        Ok(Next::Job(Box::new((migration, job))))
    }

    async fn fail(
        &self,
        conn: &mut PgConnection,
        migration: BackgroundMigration,
        code: &'static str,
    ) -> Result<Next, sqlx::Error> {
        if !bbm::end_migration(conn, migration.id, Some(code)).await? {
            return Ok(Next::Done(RunOutcome::Paused));
        }
        Ok(Next::Done(RunOutcome::MigrationFailed {
            migration: migration.name,
            code,
        }))
    }

    /// The error code the migration fails validation with, if it does.
    async fn validate(
        &self,
        conn: &mut PgConnection,
        migration: &BackgroundMigration,
    ) -> Result<Option<&'static str>, sqlx::Error> {
        if !self.work.contains(&migration.job_signature_name) {
            return Ok(Some(codes::INVALID_JOB_SIGNATURE));
        }
        Ok(
            match bbm::check_target(conn, &migration.table_name, &migration.column_name).await? {
                TargetCheck::Valid => None,
                TargetCheck::UnknownTable => Some(codes::INVALID_TABLE),
                TargetCheck::UnknownColumn => Some(codes::INVALID_COLUMN),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::RunOutcome;

    #[test]
    fn every_run_outcome_is_a_metric_label() {
        let migration = || String::from("m");
        let outcomes = [
            RunOutcome::LockInUse,
            RunOutcome::Idle,
            RunOutcome::Paused,
            RunOutcome::JobFinished {
                migration: migration(),
                start: 1,
                end: 2,
            },
            RunOutcome::JobFailed {
                migration: migration(),
                start: 1,
                end: 2,
                error: String::new(),
            },
            RunOutcome::MigrationFinished(migration()),
            RunOutcome::MigrationFailed {
                migration: migration(),
                code: "unknown",
            },
            RunOutcome::TimedOut,
        ];
        let labels: Vec<&str> = outcomes.iter().map(RunOutcome::label).collect();
        assert_eq!(labels, RunOutcome::LABELS);
    }
}
