//! Running one import step in the background: plan, copy, commit, record the end and notify.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::OwnedSemaphorePermit;

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, CopyOutcome, StorageError};

use super::{Importer, StepOutcome, StepStatuses, status_detail, statuses};
use crate::error::StepError;
use crate::plan::{self, ImportPlan};
use crate::running::{self, RunningStep, StopReason};
use crate::store::CommitOutcome;

impl Importer {
    pub(super) async fn run_step(
        self,
        path: RepositoryPath,
        import_type: ImportType,
        permit: OwnedSemaphorePermit,
        running: RunningStep,
    ) -> StepOutcome {
        let started = Instant::now();
        let metrics = &self.inner.metrics;
        metrics.step_started(import_type);
        metrics.slots(self.in_flight(), self.inner.limits.max_concurrent_imports);
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
        let metrics = &self.inner.metrics;
        metrics.step_ended(import_type, status, started.elapsed().as_secs_f64(), &stats);
        metrics.slots(self.in_flight(), self.inner.limits.max_concurrent_imports);
        tracing::info!(repository = %path, ?import_type, status = status.as_db_str(), duration_ms = stats.duration_ms, "import step ended");
        if let Some(notifier) = &self.inner.notifier {
            notifier
                .notify(&path, import_type, status, detail.clone(), stats)
                .await;
        }
        StepOutcome {
            status,
            detail,
            stats,
        }
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
        let plan = plan::build(
            self.inner.storage.as_ref(),
            path,
            self.inner.limits.tag_concurrency,
        )
        .await?;
        // A final import copies only what its pre-import did not already register (and copy).
        let already: HashSet<String> = if import_type == ImportType::Final {
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
        let storage = self.inner.storage.as_ref();
        // Nothing is recorded before its copies are on disk.
        storage.persist().await?;
        let concurrency = self.inner.limits.tag_concurrency;
        plan::verify_copied_blobs(storage, &plan, concurrency).await?;
        // The final import commits only if the tags it writes are the source's tags right now.
        let expected_tags = match import_type {
            ImportType::Final => {
                Some(plan::expected_tags(storage, path, &plan, concurrency).await?)
            }
            _ => None,
        };
        match self
            .inner
            .db
            .commit_step(
                path,
                step.in_progress,
                step.complete,
                &plan,
                expected_tags.as_ref(),
            )
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
            CommitOutcome::TagsDiffer(difference) => Err(StepError::Verification(difference)),
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
        skip: &HashSet<String>,
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
