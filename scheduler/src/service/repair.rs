//! The side systems' calls: batched background migrations (list, pause, resume) and the project
//! repair scan (status, retry failed, start part 2).

use ferry_proto::scheduler::v1 as pb;

use super::{Scheduler, timestamp, to_u64};
use crate::error::SchedulerError;
use crate::repair::restore::{DEFAULT_RESTORE_BATCH, RESTORE_MISSING_REPOSITORIES, RESTORE_TABLE};
use crate::store::bbm::{BackgroundMigrationProgress, NewBackgroundMigration};

/// Full passes the status shows.
const PASSES_SHOWN: i64 = 5;

impl From<BackgroundMigrationProgress> for pb::BackgroundMigration {
    fn from(p: BackgroundMigrationProgress) -> Self {
        let m = p.migration;
        let span = (m.max_value - m.min_value + 1) as f64;
        let covered = p.covered_to.map_or(0.0, |to| (to - m.min_value + 1) as f64);
        pb::BackgroundMigration {
            name: m.name,
            job_signature_name: m.job_signature_name,
            table_name: m.table_name,
            column_name: m.column_name,
            min_value: m.min_value,
            max_value: m.max_value,
            batch_size: m.batch_size,
            status: m.status,
            failure_error_code: m.failure_error_code.unwrap_or_default(),
            created_at: timestamp(Some(m.created_at)),
            started_at: timestamp(m.started_at),
            finished_at: timestamp(m.finished_at),
            jobs: to_u64(p.jobs),
            jobs_finished: to_u64(p.jobs_finished),
            jobs_failed: to_u64(p.jobs_failed),
            attempts: to_u64(p.attempts),
            work_ms: to_u64(p.work_ms),
            progress: (covered / span).clamp(0.0, 1.0),
            last_error: p.last_error.unwrap_or_default(),
        }
    }
}

fn selector(name: &str) -> Option<&str> {
    Some(name).filter(|n| !n.is_empty())
}

impl Scheduler {
    pub(super) async fn do_list_background_migrations(
        &self,
        name: &str,
    ) -> Result<pb::BackgroundMigrationList, SchedulerError> {
        let migrations = self.store.background_migrations(selector(name)).await?;
        if migrations.is_empty() && !name.is_empty() {
            return Err(SchedulerError::UnknownBackgroundMigration(name.to_owned()));
        }
        Ok(pb::BackgroundMigrationList {
            migrations: migrations.into_iter().map(Into::into).collect(),
        })
    }

    pub(super) async fn do_pause_background_migrations(
        &self,
        name: &str,
        resume: bool,
    ) -> Result<pb::BackgroundMigrationNames, SchedulerError> {
        if !name.is_empty()
            && self
                .store
                .background_migrations(Some(name))
                .await?
                .is_empty()
        {
            return Err(SchedulerError::UnknownBackgroundMigration(name.to_owned()));
        }
        let names = if resume {
            self.store
                .resume_background_migrations(selector(name))
                .await?
        } else {
            self.store
                .pause_background_migrations(selector(name))
                .await?
        };
        tracing::info!(?names, resume, "background migrations paused or resumed");
        Ok(pb::BackgroundMigrationNames { names })
    }

    pub(super) async fn do_repair_status(&self) -> Result<pb::RepairStatus, SchedulerError> {
        let settings = self.store.settings().await?;
        let counts = self
            .store
            .repair_counts(settings.repair_stale_after)
            .await?;
        let passes = self.store.repair_passes(PASSES_SHOWN).await?;
        let without_row = counts.projects - counts.completed - counts.ongoing - counts.failed;
        let pending = to_u64(without_row.max(0) + counts.stale);
        // A rate reported long ago (the scan stopped) says nothing about the time left.
        let fresh = counts
            .reported_at
            .is_some_and(|at| chrono::Utc::now() - at < chrono::Duration::minutes(1));
        let rate = if fresh {
            counts.projects_per_second
        } else {
            0.0
        };
        let eta_seconds = if rate > 0.0 && pending > 0 {
            (pending as f64 / rate).ceil() as u64
        } else {
            0
        };
        Ok(pb::RepairStatus {
            enabled: settings.repair_enabled,
            max_concurrency: u32::try_from(settings.repair_max_concurrency).unwrap_or(0),
            projects: to_u64(counts.projects),
            completed: to_u64(counts.completed),
            ongoing: to_u64(counts.ongoing),
            failed: to_u64(counts.failed),
            pending,
            missing_repositories: to_u64(counts.missing_repositories),
            projects_with_missing: to_u64(counts.projects_with_missing),
            projects_per_second: rate,
            eta_seconds,
            scanner: counts.scanner.unwrap_or_default(),
            scanner_reported_at: timestamp(counts.reported_at),
            pass_started_at: timestamp(counts.pass_started_at),
            passes: passes
                .into_iter()
                .map(|p| pb::RepairPass {
                    started_at: timestamp(Some(p.started_at)),
                    finished_at: timestamp(Some(p.finished_at)),
                    projects: to_u64(p.projects),
                    missing: to_u64(p.missing),
                })
                .collect(),
        })
    }

    pub(super) async fn do_retry_failed_repairs(
        &self,
    ) -> Result<pb::RetryFailedRepairsResponse, SchedulerError> {
        let projects = self.store.retry_failed_repairs().await?;
        tracing::info!(projects, "failed repair analyses returned to the scan");
        Ok(pb::RetryFailedRepairsResponse { projects })
    }

    pub(super) async fn do_start_repair_restore(
        &self,
        batch_size: u32,
        force: bool,
    ) -> Result<pb::BackgroundMigration, SchedulerError> {
        let batch_size = match crate::limits::RESTORE_BATCH_SIZE.require(batch_size)? {
            0 => DEFAULT_RESTORE_BATCH,
            n => i32::try_from(n).unwrap_or(DEFAULT_RESTORE_BATCH),
        };
        if !force {
            let status = self.do_repair_status().await?;
            let left = status.pending + status.ongoing;
            if left > 0 {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "the repair scan has {left} projects left to analyze; wait for it, or force"
                )));
            }
        }
        let Some((min_value, max_value)) = self.store.repair_restore_range().await? else {
            return Err(SchedulerError::FailedPrecondition(
                "the repair scan found no missing repositories: nothing to restore".into(),
            ));
        };
        let name = RESTORE_MISSING_REPOSITORIES;
        if let Some(existing) = self.store.background_migrations(Some(name)).await?.first() {
            let status = &existing.migration.status;
            if status != "finished" && status != "failed" {
                return Err(SchedulerError::AlreadyExists(format!(
                    "background migration {name} is {status}"
                )));
            }
            self.store.delete_ended_background_migration(name).await?;
        }
        let created = self
            .store
            .create_background_migration(&NewBackgroundMigration {
                name: name.to_owned(),
                job_signature_name: name.to_owned(),
                table_name: RESTORE_TABLE.0.to_owned(),
                column_name: RESTORE_TABLE.1.to_owned(),
                min_value,
                max_value,
                batch_size,
            })
            .await?;
        tracing::info!(
            min_value,
            max_value,
            batch_size,
            "repair restore migration created"
        );
        let progress = self
            .store
            .background_migrations(Some(&created.name))
            .await?;
        progress
            .into_iter()
            .next()
            .map(Into::into)
            .ok_or_else(|| SchedulerError::UnknownBackgroundMigration(created.name))
    }
}
