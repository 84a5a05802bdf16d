//! The scheduler service: the domain side of `ferry.scheduler.v1.Scheduler`.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;

use ferry_proto::common::v1::MigrationStatus;
use ferry_proto::scheduler::v1 as pb;
use ferry_proto::scheduler::v1::{
    InventoryProgress, LeaseStatus, MigrationSummary, NotifyImportResultRequest,
    NotifyImportResultResponse, Repository, SetMigrationEnabledResponse, StateCount,
};
use ferry_shared::lifecycle::Tasks;
use ferry_shared::step::MaybeStep;
use ferry_shared::storage::BlobStore;

mod admin;
mod rebuild;
mod repair;
mod streams;

use crate::enqueue::{EnqueueHandle, StepReport, Triggers};
use crate::error::SchedulerError;
use crate::importers::ImporterPool;
use crate::lease::Lease;
use crate::settings_api;
use crate::store::{RepositoryRecord, SchedulerStore};

/// What the scheduler offers, independent of gRPC.
#[async_trait]
pub trait SchedulerService: Send + Sync + 'static {
    /// Applies an importer's end-of-step report. Duplicates are acknowledged and change nothing.
    async fn notify_import_result(
        &self,
        request: NotifyImportResultRequest,
    ) -> Result<NotifyImportResultResponse, SchedulerError>;

    /// Starts an inventory; progress arrives on the returned channel, the last item has `done`.
    async fn run_inventory(
        &self,
    ) -> Result<mpsc::Receiver<Result<InventoryProgress, SchedulerError>>, SchedulerError>;

    /// Starts a state rebuild (see [`crate::rebuild`]); progress arrives on the returned channel.
    async fn rebuild_state(
        &self,
        request: pb::RebuildStateRequest,
    ) -> Result<mpsc::Receiver<Result<pb::RebuildProgress, SchedulerError>>, SchedulerError>;

    /// Starts verifying migrated repositories; one message per repository arrives on the
    /// returned channel, the last has `finished`.
    async fn verify_repositories(
        &self,
        request: pb::VerifyRepositoriesRequest,
    ) -> Result<mpsc::Receiver<Result<pb::VerifyProgress, SchedulerError>>, SchedulerError>;

    /// Starts removing abandoned copies under `gitlab/` on one importer (`ferryctl gc`);
    /// candidates and progress arrive on the returned channel, the last message has `finished`.
    async fn collect_garbage(
        &self,
        request: pb::CollectGarbageRequest,
    ) -> Result<mpsc::Receiver<Result<pb::GarbageProgress, SchedulerError>>, SchedulerError>;

    /// Sets the global switch (and optionally the capacity).
    async fn set_migration_enabled(
        &self,
        enabled: bool,
        capacity: Option<u32>,
    ) -> Result<SetMigrationEnabledResponse, SchedulerError>;

    /// Counts by state and totals.
    async fn migration_summary(&self) -> Result<MigrationSummary, SchedulerError>;

    /// One repository.
    async fn repository(&self, path: &str) -> Result<Repository, SchedulerError>;

    /// Who holds the enqueue lease.
    async fn lease(&self) -> Result<LeaseStatus, SchedulerError>;

    /// Deletes the enqueue lease if `holder` holds it.
    async fn clear_lease(&self, holder: &str) -> Result<LeaseStatus, SchedulerError>;

    /// The pending enqueue trigger.
    async fn dedup(&self) -> Result<pb::DedupStatus, SchedulerError>;

    /// Deletes the pending enqueue trigger and wakes the lease holder.
    async fn clear_dedup(&self) -> Result<pb::DedupStatus, SchedulerError>;

    /// Sets root namespaces' plans (all others removed first with `replace`).
    async fn set_namespace_plans(
        &self,
        request: pb::SetNamespacePlansRequest,
    ) -> Result<pb::NamespacePlans, SchedulerError>;

    /// Every root namespace's plan.
    async fn namespace_plans(&self) -> Result<pb::NamespacePlans, SchedulerError>;

    /// Registers a repository (a create event).
    async fn register_repository(
        &self,
        path: &str,
        on_new_platform: bool,
    ) -> Result<Repository, SchedulerError>;

    /// Puts a repository at the front of the queue.
    async fn start_migration_now(&self, path: &str) -> Result<Repository, SchedulerError>;

    /// Cancels a repository's migration, on the importer too.
    async fn cancel_migration(&self, path: &str, force: bool)
    -> Result<Repository, SchedulerError>;

    /// Repositories in a state, one page.
    async fn list_repositories(
        &self,
        state: &str,
        limit: u32,
        after: &str,
    ) -> Result<pb::RepositoryList, SchedulerError>;

    /// What the loop would take next.
    async fn preview_queue(&self) -> Result<pb::QueuePreview, SchedulerError>;

    /// The double-check for dropped create events.
    async fn double_check(
        &self,
        since_hours: u32,
        dry_run: bool,
    ) -> Result<pb::DoubleCheckReport, SchedulerError>;

    /// Whether a repository accepts writes.
    async fn check_writable(&self, path: &str) -> Result<pb::WritableAnswer, SchedulerError>;

    /// The run-time settings.
    async fn settings(&self) -> Result<ferry_proto::scheduler::v1::Settings, SchedulerError>;

    /// Changes the settings the request gives.
    async fn update_settings(
        &self,
        request: ferry_proto::scheduler::v1::UpdateSettingsRequest,
    ) -> Result<ferry_proto::scheduler::v1::Settings, SchedulerError>;

    /// Background migrations with their figures (all when `name` is empty).
    async fn list_background_migrations(
        &self,
        name: &str,
    ) -> Result<pb::BackgroundMigrationList, SchedulerError>;

    /// Pauses (or, with `resume`, resumes) background migrations (all when `name` is empty).
    async fn pause_background_migrations(
        &self,
        name: &str,
        resume: bool,
    ) -> Result<pb::BackgroundMigrationNames, SchedulerError>;

    /// The project repair scan's progress.
    async fn repair_status(&self) -> Result<pb::RepairStatus, SchedulerError>;

    /// Returns failed repair analyses to the scan.
    async fn retry_failed_repairs(&self) -> Result<pb::RetryFailedRepairsResponse, SchedulerError>;

    /// Creates repair part 2's background migration.
    async fn start_repair_restore(
        &self,
        batch_size: u32,
        force: bool,
    ) -> Result<pb::BackgroundMigration, SchedulerError>;
}

/// The scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    store: SchedulerStore,
    storage: Arc<dyn BlobStore>,
    triggers: Triggers,
    lease: Lease,
    importers: Arc<ImporterPool>,
    project_segments: usize,
    metrics: crate::metrics::MigrationMetrics,
    enqueuer: Option<EnqueueHandle>,
    /// Where background work started by a call (an inventory) runs, to stop with the service.
    tasks: Tasks,
}

impl Scheduler {
    /// A scheduler over its database and the bucket.
    pub fn new(
        store: SchedulerStore,
        storage: Arc<dyn BlobStore>,
        triggers: Triggers,
        lease: Lease,
        importers: Arc<ImporterPool>,
        project_segments: usize,
    ) -> Self {
        Self {
            store,
            storage,
            triggers,
            lease,
            importers,
            project_segments,
            metrics: crate::metrics::MigrationMetrics::default(),
            enqueuer: None,
            tasks: Tasks::new(),
        }
    }

    /// The scheduler, running background work started by a call on the service's `tasks`.
    pub fn with_tasks(self, tasks: Tasks) -> Self {
        Self { tasks, ..self }
    }

    /// The scheduler, counting step results in `metrics`.
    pub fn with_metrics(self, metrics: crate::metrics::MigrationMetrics) -> Self {
        Self { metrics, ..self }
    }

    /// The scheduler, handing step ends and wake-ups to the enqueuer of this replica. Without
    /// one (tests of the API alone), a step's end is applied here and nothing is started.
    pub fn with_enqueuer(self, enqueuer: EnqueueHandle) -> Self {
        Self {
            enqueuer: Some(enqueuer),
            ..self
        }
    }

    /// Wakes the enqueue loop here and, through Redis, on whichever replica holds the lease.
    async fn wake_enqueuer(&self) {
        if let Some(enqueuer) = &self.enqueuer {
            enqueuer.wake();
        }
        if let Err(error) = self.triggers.trigger().await {
            tracing::warn!(%error, "publishing a wake-up failed; the timer will pick the work up");
        }
    }
}

fn timestamp(value: Option<chrono::DateTime<chrono::Utc>>) -> String {
    value.map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// A state's or reason's name, or the empty string the API gives for none.
fn name(value: Option<impl std::fmt::Display>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

impl From<RepositoryRecord> for Repository {
    fn from(r: RepositoryRecord) -> Self {
        Repository {
            id: r.id,
            path: r.path,
            project_path: r.project_path,
            migration_state: r.migration_state.to_string(),
            retries_count: r.migration_retries_count,
            skipped_reason: name(r.migration_skipped_reason),
            aborted_in_state: name(r.migration_aborted_in_state),
            last_error: r.migration_last_error.unwrap_or_default(),
            pre_import_started_at: timestamp(r.migration_pre_import_started_at),
            pre_import_done_at: timestamp(r.migration_pre_import_done_at),
            import_started_at: timestamp(r.migration_import_started_at),
            import_done_at: timestamp(r.migration_import_done_at),
            aborted_at: timestamp(r.migration_aborted_at),
            skipped_at: timestamp(r.migration_skipped_at),
            importer: r.migration_importer.unwrap_or_default(),
            step_accepted_at: timestamp(r.migration_step_accepted_at),
            step: r.migration_step.wire(),
            cancel_requested: name(r.migration_cancel_requested),
            stats: Some(ferry_proto::common::v1::ImportStats {
                manifests: to_u64(r.import_manifests),
                tags: to_u64(r.import_tags),
                blobs: to_u64(r.import_blobs),
                blobs_copied: to_u64(r.import_blobs_copied),
                bytes_copied: to_u64(r.import_bytes_copied),
                blobs_present: to_u64(r.import_blobs_present),
                tags_skipped: to_u64(r.import_tags_skipped),
                duration_ms: to_u64(r.import_duration_ms),
                manifests_skipped: to_u64(r.import_manifests_skipped),
                layers_skipped: to_u64(r.import_layers_skipped),
            }),
            verified_at: timestamp(r.verified_at),
            verify_outcome: r
                .verify_outcome
                .map_or(0, |result| i32::from(crate::verify::outcome_of(result))),
            verify_differences: to_u64(r.verify_differences),
            verify_detail: r.verify_detail.unwrap_or_default(),
        }
    }
}

#[async_trait]
impl SchedulerService for Scheduler {
    async fn notify_import_result(
        &self,
        request: NotifyImportResultRequest,
    ) -> Result<NotifyImportResultResponse, SchedulerError> {
        use MigrationStatus::*;
        let status = MigrationStatus::try_from(request.status).unwrap_or_default();
        let stats = request.stats.unwrap_or_default();
        ferry_shared::ids::RepositoryPath::parse(&request.path)
            .map_err(|e| SchedulerError::InvalidArgument(format!("path: {e}")))?;
        let step = crate::limits::step(request.step)?;
        let kind = if matches!(
            status,
            PreImportComplete | PreImportFailed | PreImportCanceled
        ) {
            "pre"
        } else {
            "final"
        };
        self.metrics.result(kind, status.as_db_str());
        if !matches!(
            status,
            PreImportComplete
                | ImportComplete
                | PreImportFailed
                | PreImportCanceled
                | ImportFailed
                | ImportCanceled
        ) {
            return Err(SchedulerError::InvalidArgument(format!(
                "status {} does not end a step",
                status.as_db_str()
            )));
        }
        let report = StepReport {
            path: request.path,
            step,
            status,
            detail: request.detail,
            stats,
            handed_back: request.handed_back,
        };
        let path = report.path.clone();
        // The enqueuer applies it (holding the lease, it also claims and starts what comes
        // next) and answers before it starts anything.
        let ended = match &self.enqueuer {
            Some(enqueuer) => enqueuer.step_ended(report).await?,
            None => {
                let max_retries = self.store.settings().await?.max_retries;
                crate::enqueue::apply_step_end(&self.store, &report, None, max_retries).await?
            }
        };
        let changed = ended.is_some();
        let migration_state = match ended {
            Some(ended) => ended.migration_state,
            None => self.record(&path).await?.migration_state,
        };
        tracing::info!(
            repository = path,
            step = step.get(),
            status = status.as_db_str(),
            state = %migration_state,
            duplicate = !changed,
            "import result applied"
        );
        Ok(NotifyImportResultResponse {
            migration_state: migration_state.to_string(),
            duplicate: !changed,
        })
    }

    async fn run_inventory(
        &self,
    ) -> Result<mpsc::Receiver<Result<InventoryProgress, SchedulerError>>, SchedulerError> {
        self.do_run_inventory().await
    }

    async fn rebuild_state(
        &self,
        request: pb::RebuildStateRequest,
    ) -> Result<mpsc::Receiver<Result<pb::RebuildProgress, SchedulerError>>, SchedulerError> {
        self.do_rebuild_state(request).await
    }

    async fn verify_repositories(
        &self,
        request: pb::VerifyRepositoriesRequest,
    ) -> Result<mpsc::Receiver<Result<pb::VerifyProgress, SchedulerError>>, SchedulerError> {
        self.do_verify_repositories(request)
    }

    async fn collect_garbage(
        &self,
        request: pb::CollectGarbageRequest,
    ) -> Result<mpsc::Receiver<Result<pb::GarbageProgress, SchedulerError>>, SchedulerError> {
        self.do_collect_garbage(request).await
    }

    async fn set_migration_enabled(
        &self,
        enabled: bool,
        capacity: Option<u32>,
    ) -> Result<SetMigrationEnabledResponse, SchedulerError> {
        let request = ferry_proto::scheduler::v1::UpdateSettingsRequest {
            enabled: Some(enabled),
            capacity,
            ..Default::default()
        };
        let settings = self.update_settings(request).await?;
        Ok(SetMigrationEnabledResponse {
            enabled: settings.enabled,
            capacity: settings.capacity,
        })
    }

    async fn register_repository(
        &self,
        path: &str,
        on_new_platform: bool,
    ) -> Result<Repository, SchedulerError> {
        self.do_register(path, on_new_platform).await
    }

    async fn start_migration_now(&self, path: &str) -> Result<Repository, SchedulerError> {
        self.do_start_now(path).await
    }

    async fn cancel_migration(
        &self,
        path: &str,
        force: bool,
    ) -> Result<Repository, SchedulerError> {
        self.do_cancel(path, force).await
    }

    async fn list_repositories(
        &self,
        state: &str,
        limit: u32,
        after: &str,
    ) -> Result<pb::RepositoryList, SchedulerError> {
        self.do_list(state, limit, after).await
    }

    async fn preview_queue(&self) -> Result<pb::QueuePreview, SchedulerError> {
        self.do_preview().await
    }

    async fn double_check(
        &self,
        since_hours: u32,
        dry_run: bool,
    ) -> Result<pb::DoubleCheckReport, SchedulerError> {
        self.do_double_check(since_hours, dry_run).await
    }

    async fn check_writable(&self, path: &str) -> Result<pb::WritableAnswer, SchedulerError> {
        self.do_check_writable(path).await
    }

    async fn settings(&self) -> Result<ferry_proto::scheduler::v1::Settings, SchedulerError> {
        Ok(settings_api::to_proto(&self.store.settings().await?))
    }

    async fn list_background_migrations(
        &self,
        name: &str,
    ) -> Result<pb::BackgroundMigrationList, SchedulerError> {
        self.do_list_background_migrations(name).await
    }

    async fn pause_background_migrations(
        &self,
        name: &str,
        resume: bool,
    ) -> Result<pb::BackgroundMigrationNames, SchedulerError> {
        self.do_pause_background_migrations(name, resume).await
    }

    async fn repair_status(&self) -> Result<pb::RepairStatus, SchedulerError> {
        self.do_repair_status().await
    }

    async fn retry_failed_repairs(&self) -> Result<pb::RetryFailedRepairsResponse, SchedulerError> {
        self.do_retry_failed_repairs().await
    }

    async fn start_repair_restore(
        &self,
        batch_size: u32,
        force: bool,
    ) -> Result<pb::BackgroundMigration, SchedulerError> {
        self.do_start_repair_restore(batch_size, force).await
    }

    async fn update_settings(
        &self,
        request: ferry_proto::scheduler::v1::UpdateSettingsRequest,
    ) -> Result<ferry_proto::scheduler::v1::Settings, SchedulerError> {
        let patch = settings_api::patch_from_proto(request)?;
        let settings = self.store.update_settings(&patch).await?;
        tracing::info!(?patch, "settings changed");
        self.wake_enqueuer().await;
        Ok(settings_api::to_proto(&settings))
    }

    async fn migration_summary(&self) -> Result<MigrationSummary, SchedulerError> {
        let settings = self.store.settings().await?;
        let progress = self.store.migration_progress().await?;
        Ok(MigrationSummary {
            in_flight: to_u64(self.store.in_process_count().await?),
            done_per_minute: progress.done_per_minute,
            eta_seconds: progress.eta_seconds as u64,
            enabled: settings.enabled,
            capacity: u64::try_from(settings.capacity).unwrap_or(0),
            total: to_u64(progress.total),
            states: progress
                .states
                .into_iter()
                .map(|(state, n)| StateCount {
                    state: state.to_string(),
                    count: to_u64(n),
                })
                .collect(),
            totals: Some(self.store.totals().await?),
            problems: self
                .store
                .problems(100)
                .await?
                .into_iter()
                .map(Repository::from)
                .collect(),
        })
    }

    async fn repository(&self, path: &str) -> Result<Repository, SchedulerError> {
        let record = self.record(path).await?;
        Ok(record.into())
    }

    async fn clear_lease(&self, holder: &str) -> Result<LeaseStatus, SchedulerError> {
        self.do_clear_lease(holder).await
    }

    async fn dedup(&self) -> Result<pb::DedupStatus, SchedulerError> {
        self.do_dedup().await
    }

    async fn clear_dedup(&self) -> Result<pb::DedupStatus, SchedulerError> {
        self.do_clear_dedup().await
    }

    async fn set_namespace_plans(
        &self,
        request: pb::SetNamespacePlansRequest,
    ) -> Result<pb::NamespacePlans, SchedulerError> {
        self.do_set_namespace_plans(request).await
    }

    async fn namespace_plans(&self) -> Result<pb::NamespacePlans, SchedulerError> {
        self.do_namespace_plans().await
    }

    async fn lease(&self) -> Result<LeaseStatus, SchedulerError> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let deduplicated_triggers = self.triggers.deduplicated();
        Ok(match self.lease.describe().await? {
            Some(info) => LeaseStatus {
                held: true,
                holder: info.holder,
                fence: info.fence,
                age_ms: now_ms.saturating_sub(info.acquired_at_ms),
                ttl_left_ms: info.ttl_left_ms,
                deduplicated_triggers,
            },
            None => LeaseStatus {
                deduplicated_triggers,
                ..LeaseStatus::default()
            },
        })
    }
}
