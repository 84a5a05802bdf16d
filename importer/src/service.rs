//! The import service: the domain side of `ferry.importer.v1.Importer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_proto::importer::v1::{
    CancelImportResponse, GetImportStatusResponse, RepositoryPage, StartImportResponse,
    StartOutcome,
};
use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, CopyOutcome, StorageError};

use crate::error::{ApiError, StepError};
use crate::listing;
use crate::notifier::Notifier;
use crate::plan::{self, ImportPlan};
use crate::running::{self, RunningStep, RunningSteps, StopReason};
use crate::store::{CommitOutcome, MetadataStore};

/// What the importer offers, independent of gRPC.
#[async_trait]
pub trait ImportService: Send + Sync + 'static {
    /// Starts a step in the background, answering at once.
    async fn start_import(
        &self,
        path: &str,
        import_type: ImportType,
        fencing_token: u64,
    ) -> Result<StartImportResponse, ApiError>;

    /// The repository's status in the metadata database.
    async fn import_status(&self, path: &str) -> Result<GetImportStatusResponse, ApiError>;

    /// Cancels the repository's step (see the proto for the rules).
    async fn cancel_import(
        &self,
        path: &str,
        force: bool,
    ) -> Result<CancelImportResponse, ApiError>;

    /// One page of the tagged repositories at or under `path`.
    async fn list_sub_repositories(
        &self,
        path: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError>;

    /// One page of the tagged repositories created at or after `since` (RFC 3339).
    async fn list_repositories_created_since(
        &self,
        since: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError>;
}

/// Limits of import steps.
#[derive(Debug, Clone)]
pub struct StepLimits {
    /// Imports run at once on this importer.
    pub max_concurrent_imports: usize,
    /// Time limit of a pre-import.
    pub pre_import_timeout: Duration,
    /// Time limit of a final import.
    pub import_timeout: Duration,
    /// Blob copies in flight per import.
    pub copy_concurrency: usize,
    /// After a cancellation, a new pre-import is refused for this long, so that a step still
    /// stopping somewhere cannot race the new one (seed 004).
    pub cancel_settle: Duration,
    /// How often a running step checks the database for a cancellation made elsewhere.
    pub cancel_poll: Duration,
}

/// The importer.
#[derive(Debug, Clone)]
pub struct Importer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    notifier: Notifier,
    limits: StepLimits,
    permits: Arc<Semaphore>,
    running: Arc<RunningSteps>,
    /// Background steps, so shutdown can wait for them to record their end and notify.
    tasks: TaskTracker,
    shutting_down: AtomicBool,
}

/// The statuses one kind of step moves through.
#[derive(Debug, Clone, Copy)]
struct StepStatuses {
    in_progress: MigrationStatus,
    complete: MigrationStatus,
    failed: MigrationStatus,
}

fn statuses(import_type: ImportType) -> StepStatuses {
    match import_type {
        ImportType::Final => StepStatuses {
            in_progress: MigrationStatus::ImportInProgress,
            complete: MigrationStatus::ImportComplete,
            failed: MigrationStatus::ImportFailed,
        },
        _ => StepStatuses {
            in_progress: MigrationStatus::PreImportInProgress,
            complete: MigrationStatus::PreImportComplete,
            failed: MigrationStatus::PreImportFailed,
        },
    }
}

/// Describes a status for `GetImportStatus` when no error is recorded.
pub fn status_detail(status: MigrationStatus) -> &'static str {
    match status {
        MigrationStatus::ImportComplete => "final import completed successfully",
        MigrationStatus::PreImportComplete => "pre import completed successfully",
        MigrationStatus::PreImportCanceled => "pre import was canceled manually",
        MigrationStatus::ImportCanceled => "final import was canceled manually",
        other => other.as_db_str(),
    }
}

impl Importer {
    /// An importer over `storage` and `db` that reports to `notifier`.
    pub fn new(
        storage: Arc<dyn BlobStore>,
        db: MetadataStore,
        notifier: Notifier,
        limits: StepLimits,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_concurrent_imports));
        Self {
            inner: Arc::new(Inner {
                storage,
                db,
                notifier,
                limits,
                permits,
                running: Arc::default(),
                tasks: TaskTracker::new(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// Starts shutting down: new starts are refused (`UNAVAILABLE`) and every running step is
    /// stopped, to be recorded as failed with reason `shutdown` and reported to the scheduler.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let stopped = self.inner.running.stop_all();
        tracing::info!(stopped, "importer shutting down; running steps stopped");
    }

    /// Waits up to `grace` for stopped steps to record their end and notify the scheduler.
    /// Returns false if some were still running when the grace period ended.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.tasks.close();
        tokio::time::timeout(grace, self.inner.tasks.wait())
            .await
            .is_ok()
    }

    /// Steps running on this importer now (each holds one of `max_concurrent_imports` slots until
    /// its end status is written).
    pub fn in_flight(&self) -> usize {
        self.inner.limits.max_concurrent_imports - self.inner.permits.available_permits()
    }

    /// Checks the repository's row and claims it for the step. `Ok(Some(status))` means it is
    /// already on the new platform (`native` or `import_complete`) and nothing was claimed.
    async fn claim(
        &self,
        path: &RepositoryPath,
        import_type: ImportType,
    ) -> Result<Option<MigrationStatus>, ApiError> {
        use MigrationStatus::*;
        let is_final = import_type == ImportType::Final;
        let row = self.inner.db.repository(path).await?;
        let observed = row.as_ref().map(|r| r.status);
        match &row {
            Some(row) if matches!(row.status, Native | ImportComplete) => {
                return Ok(Some(row.status));
            }
            Some(row) if row.status == PreImportInProgress => {
                return Err(ApiError::PreImportInProgress(path.to_string()));
            }
            Some(row) if row.status == ImportInProgress => {
                return Err(ApiError::ImportInProgress(path.to_string()));
            }
            Some(row) if is_final && row.status == PreImportFailed => {
                return Err(ApiError::PreImportRequired {
                    path: path.to_string(),
                    reason: "pre-import failed",
                });
            }
            Some(row) if row.status == PreImportCanceled && is_final => {
                return Err(ApiError::PreImportRequired {
                    path: path.to_string(),
                    reason: "pre-import was canceled",
                });
            }
            Some(row)
                if row.status == PreImportCanceled
                    && row.age_seconds < self.inner.limits.cancel_settle.as_secs_f64() =>
            {
                return Err(ApiError::NotReady(path.to_string()));
            }
            None if is_final => {
                return Err(ApiError::PreImportRequired {
                    path: path.to_string(),
                    reason: "no pre-import ran",
                });
            }
            _ => {}
        }
        if !plan::exists_in_old_storage(self.inner.storage.as_ref(), path).await? {
            return Err(ApiError::NotFound(path.to_string()));
        }
        let in_progress = statuses(import_type).in_progress;
        if self
            .inner
            .db
            .begin_step(path, observed, in_progress)
            .await?
        {
            Ok(None)
        } else {
            // Another importer claimed it between our read and our write.
            Err(match import_type {
                ImportType::Final => ApiError::ImportInProgress(path.to_string()),
                _ => ApiError::PreImportInProgress(path.to_string()),
            })
        }
    }

    async fn run_step(
        self,
        path: RepositoryPath,
        import_type: ImportType,
        permit: OwnedSemaphorePermit,
        running: RunningStep,
    ) {
        let started = Instant::now();
        let step = statuses(import_type);
        let limit = match import_type {
            ImportType::Final => self.inner.limits.import_timeout,
            _ => self.inner.limits.pre_import_timeout,
        };
        let stopped = running::wait_for_stop(
            running.stop.clone(),
            &self.inner.db,
            &path,
            step.in_progress,
            self.inner.limits.cancel_poll,
        );
        let work = tokio::time::timeout(limit, self.execute(&path, import_type, step).boxed());
        // Whichever ends first: the step, its time limit, or a stop (which drops the step).
        let result = tokio::select! {
            outcome = work => outcome.unwrap_or(Err(StepError::Timeout(limit))),
            reason = stopped.boxed() => Err(match reason {
                StopReason::Canceled => StepError::Canceled,
                StopReason::Shutdown => StepError::Shutdown,
            }),
        };
        drop(running);
        let (status, detail, mut stats) = match result {
            Ok(stats) => (
                step.complete,
                status_detail(step.complete).to_owned(),
                stats,
            ),
            Err(StepError::Canceled) => {
                let status = self.current_status(&path).await.unwrap_or(step.failed);
                (
                    status,
                    "import was canceled".to_owned(),
                    ImportStats::default(),
                )
            }
            Err(error) => {
                let reason = error.reason();
                tracing::warn!(repository = %path, ?import_type, reason, "import step failed");
                match self
                    .inner
                    .db
                    .fail_step(&path, step.in_progress, step.failed, &reason)
                    .await
                {
                    Ok(true) => (step.failed, reason, ImportStats::default()),
                    Ok(false) => {
                        let status = self.current_status(&path).await.unwrap_or(step.failed);
                        (status, reason, ImportStats::default())
                    }
                    Err(db_error) => {
                        tracing::error!(repository = %path, %db_error, "could not record the failed step");
                        (step.failed, reason, ImportStats::default())
                    }
                }
            }
        };
        drop(permit);
        stats.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::info!(repository = %path, ?import_type, status = status.as_db_str(), duration_ms = stats.duration_ms, "import step ended");
        self.inner
            .notifier
            .notify(&path, import_type, status, detail, stats)
            .await;
    }

    async fn current_status(&self, path: &RepositoryPath) -> Option<MigrationStatus> {
        self.inner
            .db
            .repository(path)
            .await
            .ok()
            .flatten()
            .map(|row| row.status)
    }

    async fn execute(
        &self,
        path: &RepositoryPath,
        import_type: ImportType,
        step: StepStatuses,
    ) -> Result<ImportStats, StepError> {
        let plan = plan::build(self.inner.storage.as_ref(), path).await?;
        // A final import copies only what its pre-import did not already register (and copy).
        let already: std::collections::HashSet<String> = if import_type == ImportType::Final {
            let digests: Vec<&str> = plan.blobs.keys().map(Digest::as_str).collect();
            self.inner
                .db
                .registered_blobs(path, &digests)
                .await?
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        let mut stats = self.copy_blobs(&plan, &already).await?;
        let with_tags = import_type == ImportType::Final;
        match self
            .inner
            .db
            .commit_step(path, step.in_progress, step.complete, &plan, with_tags)
            .await?
        {
            CommitOutcome::Committed(counts) => {
                stats.manifests = counts.manifests;
                stats.tags = counts.tags;
                stats.blobs = plan.blobs.len() as u64;
                stats.tags_skipped = plan.tags_skipped;
                stats.manifests_skipped = plan.manifests_skipped;
                stats.layers_skipped = plan.layers_skipped;
                Ok(stats)
            }
            CommitOutcome::Superseded(status) => {
                tracing::info!(repository = %path, status = status.as_db_str(), "step superseded; nothing committed");
                Err(StepError::Canceled)
            }
        }
    }

    /// Copies every distributable blob of the plan, except those in `skip`, into the new prefix.
    async fn copy_blobs(
        &self,
        plan: &ImportPlan,
        skip: &std::collections::HashSet<String>,
    ) -> Result<ImportStats, StepError> {
        let to_copy: Vec<(Digest, Digest)> = plan
            .blobs
            .iter()
            .filter(|entry| entry.1.copy && !skip.contains(entry.0.as_str()))
            .map(|(digest, blob)| (digest.clone(), blob.referrer.clone()))
            .collect();
        let outcomes: Vec<CopyOutcome> = futures::stream::iter(to_copy)
            .map(|(digest, referrer)| {
                copy_blob(Arc::clone(&self.inner.storage), digest, referrer).boxed()
            })
            .buffer_unordered(self.inner.limits.copy_concurrency.max(1))
            .try_collect()
            .await?;
        let mut stats = ImportStats::default();
        for outcome in outcomes {
            match outcome {
                CopyOutcome::Copied(bytes) => {
                    stats.blobs_copied += 1;
                    stats.bytes_copied += bytes;
                }
                CopyOutcome::AlreadyPresent => stats.blobs_present += 1,
            }
        }
        Ok(stats)
    }
}

/// Copies one blob from the old layout to the new one, verifying its digest.
async fn copy_blob(
    storage: Arc<dyn BlobStore>,
    digest: Digest,
    referrer: Digest,
) -> Result<CopyOutcome, StepError> {
    let src = layout::old_blob_key(&digest);
    let dst = layout::new_blob_key(&digest);
    storage
        .copy(&src, &dst, Some(&digest))
        .await
        .map_err(|error| match error {
            StorageError::NotFound { .. } => StepError::BlobMissing {
                digest,
                manifest: referrer,
            },
            StorageError::DigestMismatch { actual, .. } => StepError::BlobCorrupt {
                digest,
                manifest: referrer,
                detail: format!("content hashes to {actual}"),
            },
            other => StepError::Storage(other),
        })
}

#[async_trait]
impl ImportService for Importer {
    async fn start_import(
        &self,
        path: &str,
        import_type: ImportType,
        fencing_token: u64,
    ) -> Result<StartImportResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        if import_type == ImportType::Unspecified {
            return Err(ApiError::InvalidArgument(
                "import_type must be PRE or FINAL".into(),
            ));
        }
        let permit = Arc::clone(&self.inner.permits)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyImports(self.inner.limits.max_concurrent_imports))?;
        if let Some(status) = self.claim(&path, import_type).await? {
            return Ok(StartImportResponse {
                outcome: StartOutcome::AlreadyImported.into(),
                status: status.into(),
            });
        }
        tracing::info!(repository = %path, ?import_type, fencing_token, "import step accepted");
        // Registered before the task starts, so a cancel or shutdown right after this answer
        // always reaches the step.
        let running = self.inner.running.register(&path);
        self.inner
            .tasks
            .spawn(self.clone().run_step(path, import_type, permit, running));
        Ok(StartImportResponse {
            outcome: StartOutcome::Accepted.into(),
            status: statuses(import_type).in_progress.into(),
        })
    }

    async fn cancel_import(
        &self,
        path: &str,
        force: bool,
    ) -> Result<CancelImportResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        match self.inner.db.cancel(&path, force).await? {
            None => Err(ApiError::NotFound(path.to_string())),
            Some((false, status)) => Err(ApiError::CannotCancel {
                path: path.to_string(),
                status: status.as_db_str(),
            }),
            Some((true, status)) => {
                let here = self.inner.running.cancel(&path);
                tracing::info!(repository = %path, force, status = status.as_db_str(), stopped_here = here, "import canceled");
                Ok(CancelImportResponse {
                    status: status.into(),
                })
            }
        }
    }

    async fn list_sub_repositories(
        &self,
        path: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError> {
        listing::sub_repositories(&self.inner.db, path, n, last).await
    }

    async fn list_repositories_created_since(
        &self,
        since: &str,
        n: u32,
        last: &str,
    ) -> Result<RepositoryPage, ApiError> {
        listing::created_since(&self.inner.db, since, n, last).await
    }

    async fn import_status(&self, path: &str) -> Result<GetImportStatusResponse, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let row = self
            .inner
            .db
            .repository(&path)
            .await?
            .ok_or_else(|| ApiError::NotFound(path.to_string()))?;
        Ok(GetImportStatusResponse {
            name: path.name().to_owned(),
            path: path.to_string(),
            status: row.status.into(),
            detail: row
                .error
                .unwrap_or_else(|| status_detail(row.status).to_owned()),
        })
    }
}
