//! Running one import step in the background: plan, copy, commit, record the end and notify.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::{FutureExt, StreamExt, TryStreamExt};
use tokio::sync::OwnedSemaphorePermit;

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_proto::scheduler::v1::NotifyImportResultRequest;
use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_shared::storage::{BlobStore, CopyOutcome, StorageError};

use super::copy_flights::{CopyFlights, Flight, Landed};
use super::{Importer, StepOutcome, StepStatuses, status_detail, statuses};
use crate::error::StepError;
use crate::plan::{self, PlannedBlob};
use crate::running::{self, RunningStep, StopReason};
use crate::store::{ClaimedStep, CommitOutcome, MetadataStore};

impl Importer {
    pub(super) async fn run_step(
        self,
        path: RepositoryPath,
        (claimed, listing): (ClaimedStep, Option<plan::SourceListing>),
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
            (step.in_progress, claimed.step),
            self.inner.limits.cancel_poll,
        );
        let work = tokio::time::timeout(
            limit,
            self.execute(&path, (claimed, listing), import_type, step)
                .boxed(),
        );
        // Whichever ends first: the step, its time limit, or a stop (which drops the step).
        let result = tokio::select! {
            outcome = work => outcome.unwrap_or(Err(StepError::Timeout(limit))),
            reason = stopped.boxed() => Err(match reason {
                StopReason::Canceled => StepError::Canceled,
                StopReason::Shutdown => StepError::Shutdown,
            }),
        };
        drop(running);
        // A step stopped for this importer's shutdown did not fail: the scheduler retries it
        // without counting it against the repository's retries.
        let handed_back = matches!(result, Err(StepError::Shutdown));
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
                    .fail_step(claimed, step.in_progress, step.failed, &reason)
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
        tracing::info!(repository = %path, ?import_type, step = claimed.step.get(), status = status.as_db_str(), duration_ms = stats.duration_ms, handed_back, "import step ended");
        if let Some(notifier) = &self.inner.notifier {
            notifier
                .notify(NotifyImportResultRequest {
                    path: path.to_string(),
                    name: path.name().to_owned(),
                    status: status.into(),
                    detail: detail.clone(),
                    import_type: import_type.into(),
                    stats: Some(stats),
                    step: claimed.step.wire(),
                    handed_back,
                })
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

    /// Plans, copies and registers the repository chunk by chunk in one transaction, then (in
    /// the final import) writes its tags, and commits. A final import plans only the manifests
    /// its pre-import did not register (new pushes since), and reads again only the tag links
    /// whose version changed since its pre-import read them.
    async fn execute(
        &self,
        path: &RepositoryPath,
        (claimed, listing): (ClaimedStep, Option<plan::SourceListing>),
        import_type: ImportType,
        step: StepStatuses,
    ) -> Result<ImportStats, StepError> {
        let storage = self.inner.storage.as_ref();
        let db = &self.inner.db;
        let concurrency = self.inner.limits.tag_concurrency;
        let is_final = import_type == ImportType::Final;
        let mut stats = ImportStats::default();
        // The start's check listed the first page already.
        let mut links = match listing {
            Some(listing) => listing.finish(storage).await?,
            None if is_final => plan::SourceLinks::list_tags(storage, path).await?,
            None => plan::SourceLinks::list(storage, path).await?,
        };
        let known: HashMap<String, (String, Digest)> = if is_final {
            (db.read_tag_links(path).await?.into_iter())
                .map(|link| (link.tag, (link.version, link.digest)))
                .collect()
        } else {
            HashMap::new()
        };
        let read = plan::read_tags(storage, path, links.take_tags(), &known, concurrency).await?;
        drop(known);
        // The tags that point somewhere, and beside each the version of the link read.
        let (mut tags, mut versions) = (Vec::with_capacity(read.len()), Vec::new());
        for link in read {
            match link.digest {
                Some(digest) => {
                    tags.push((link.tag, digest));
                    versions.push(link.version);
                }
                None => {
                    tracing::warn!(repository = %path, tag = link.tag, "tag has no current link; skipped");
                    stats.tags_skipped += 1;
                }
            }
        }
        let registered: HashSet<Digest> = if is_final {
            let targets: BTreeSet<&str> = tags.iter().map(|(_, d)| d.as_str()).collect();
            let targets: Vec<&str> = targets.into_iter().collect();
            db.registered_manifests(path, &targets)
                .await?
                .into_iter()
                .filter_map(|digest| Digest::parse(&digest).ok())
                .collect()
        } else {
            HashSet::new()
        };
        if is_final && tags.iter().any(|(_, digest)| !registered.contains(digest)) {
            // New pushes since the pre-import: plan them with the links listed in one go.
            links = plan::SourceLinks::list(storage, path).await?;
        }
        let mut walk = plan::Walk::new(storage, path, &links, concurrency, &tags, &registered);
        drop(registered);
        let mut commit = None;
        while let Some(chunk) = walk.next_chunk().await? {
            self.copy_blobs(&chunk.blobs, &mut stats).await?;
            // Nothing is recorded before its copies are on disk.
            storage.persist().await?;
            let tx = match commit.as_mut() {
                Some(tx) => tx,
                None => commit.insert(db.begin_commit(claimed).await?),
            };
            tx.write_chunk(&chunk).await?;
        }
        let mut tx = match commit {
            Some(tx) => tx,
            None => db.begin_commit(claimed).await?,
        };
        let skipped = walk.skipped();
        let (kept, left_out): (Vec<_>, Vec<_>) = tags
            .iter()
            .partition(|(_, digest)| !walk.skipped_roots().contains(digest));
        stats.tags_skipped += left_out.len() as u64;
        stats.manifests_skipped = skipped.manifests;
        stats.layers_skipped = skipped.layers;
        // The final import commits only if the tags it writes are the source's tags right now.
        let expected_tags = if is_final {
            let kept: Vec<(&str, &Digest)> = kept.iter().map(|(t, d)| (t.as_str(), d)).collect();
            tx.write_tags(&kept).await?;
            tx.forget_tag_links().await?;
            let left_out = left_out.into_iter().map(|(tag, _)| tag.clone()).collect();
            let used = (tags.iter()).zip(&versions);
            Some(plan::expected_tags(storage, path, used, &left_out, concurrency).await?)
        } else {
            let read: Vec<(&str, &Digest, &str)> = (tags.iter().zip(&versions))
                .filter_map(|((tag, digest), version)| {
                    Some((tag.as_str(), digest, version.as_deref()?))
                })
                .collect();
            tx.record_tag_links(&read).await?;
            None
        };
        match tx
            .finish(step.in_progress, step.complete, expected_tags.as_ref())
            .await?
        {
            CommitOutcome::Committed(written) => {
                stats.manifests = written.manifests;
                stats.tags = written.tags;
                stats.blobs = written.blobs;
                Ok(stats)
            }
            CommitOutcome::TagsDiffer(difference) => Err(StepError::Verification(difference)),
            CommitOutcome::Superseded(status) => {
                tracing::info!(repository = %path, status = status.as_db_str(), "step superseded; nothing committed");
                Err(StepError::Canceled)
            }
        }
    }

    /// Brings every distributable blob of `blobs` under the new prefix, counting them in
    /// `stats`: those the metadata database registers as copied need nothing; the rest are
    /// copied, `copy_concurrency` at once, or waited for where another step copies them at the
    /// same time. Each must then be there with the size its manifest declares.
    async fn copy_blobs(
        &self,
        blobs: &BTreeMap<Digest, PlannedBlob>,
        stats: &mut ImportStats,
    ) -> Result<(), StepError> {
        let wanted: Vec<&str> = (blobs.iter())
            .filter(|(_, blob)| blob.copy)
            .map(|(digest, _)| digest.as_str())
            .collect();
        let copied_before: HashMap<String, i64> = self
            .inner
            .db
            .copied_blobs(&wanted)
            .await?
            .into_iter()
            .collect();
        let mut to_copy = Vec::new();
        for (digest, blob) in blobs.iter().filter(|(_, blob)| blob.copy) {
            match copied_before.get(digest.as_str()) {
                Some(&size) => {
                    let size = u64::try_from(size).ok();
                    plan::check_copied_size(digest, blob.size, &blob.referrer, size)?;
                    stats.blobs_present += 1;
                }
                None => to_copy.push((digest.clone(), blob.size, blob.referrer.clone())),
            }
        }
        let outcomes: Vec<CopyOutcome> = futures::stream::iter(to_copy)
            .map(|(digest, size, referrer)| {
                // Joined here, as the stream starts the copy: a step joins a flight only when
                // it is about to take part in it.
                let flight = self.inner.copy_flights.join(&digest);
                let flights = Arc::clone(&self.inner.copy_flights);
                let (storage, db) = (Arc::clone(&self.inner.storage), self.inner.db.clone());
                async move {
                    let (outcome, landed) =
                        take_part(flight, &flights, storage, db, &digest, &referrer).await?;
                    plan::check_copied_size(&digest, size, &referrer, landed.size)?;
                    Ok::<_, StepError>(outcome)
                }
                .boxed()
            })
            .buffer_unordered(self.inner.limits.copy_concurrency.max(1))
            .try_collect()
            .await?;
        for outcome in outcomes {
            match outcome {
                CopyOutcome::Copied(bytes) => {
                    stats.blobs_copied += 1;
                    stats.bytes_copied += bytes;
                }
                CopyOutcome::AlreadyPresent | CopyOutcome::PublishedMeanwhile => {
                    stats.blobs_present += 1;
                }
            }
        }
        Ok(())
    }
}

/// A step's part in the flight of one blob's copy: leads it, or waits for where the leader's
/// copy landed (counted as published meanwhile); joins again when that leader fails or is
/// stopped.
async fn take_part(
    mut flight: Flight,
    flights: &Arc<CopyFlights>,
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    digest: &Digest,
    referrer: &Digest,
) -> Result<(CopyOutcome, Landed), StepError> {
    loop {
        match flight {
            Flight::Lead(lead) => {
                let (outcome, landed) = land_blob(storage, db, digest, referrer).await?;
                lead.landed(landed);
                return Ok((outcome, landed));
            }
            Flight::Follow(follow) => match follow.landed().await {
                Some(landed) => return Ok((CopyOutcome::PublishedMeanwhile, landed)),
                None => flight = flights.join(digest),
            },
        }
    }
}

/// Copies one blob from the old layout to the new one, verifying its digest where the store
/// can, and says where it landed (with its size, which the caller checks against what its
/// manifest `referrer` declares; a destination that was there already is looked at for it).
///
/// A destination found in place (the blob is not registered as copied, or it would not be
/// copied) may be a copy a failed step left long ago, which `ferryctl gc` may be removing: the
/// step claims it in the metadata database ([`MetadataStore::claim_blob`], which gc's removal
/// excludes), then looks at it again; if gc removed it before the claim, it is copied anew.
/// From the claim on, gc keeps it until the step has ended (docs/operations.md, "Removing
/// abandoned copies").
async fn land_blob(
    storage: Arc<dyn BlobStore>,
    db: MetadataStore,
    digest: &Digest,
    referrer: &Digest,
) -> Result<(CopyOutcome, Landed), StepError> {
    let src = layout::old_blob_key(digest);
    let dst = layout::new_blob_key(digest);
    let copy = async || {
        storage
            .copy(&src, &dst, Some(digest))
            .await
            .map_err(|error| match error {
                StorageError::NotFound { .. } => StepError::BlobMissing {
                    digest: digest.clone(),
                    manifest: referrer.clone(),
                },
                StorageError::DigestMismatch { actual, .. } => StepError::BlobCorrupt {
                    digest: digest.clone(),
                    manifest: referrer.clone(),
                    detail: format!("content hashes to {actual}"),
                },
                other => StepError::Storage(other),
            })
    };
    let mut outcome = copy().await?;
    let size = match outcome {
        CopyOutcome::Copied(bytes) => Some(bytes),
        CopyOutcome::AlreadyPresent | CopyOutcome::PublishedMeanwhile => {
            db.claim_blob(digest.as_str()).await?;
            match storage.stat(&dst).await? {
                Some(meta) => Some(meta.size),
                None => {
                    tracing::info!(%digest, "the copy found in place was removed meanwhile; copying it again");
                    outcome = copy().await?;
                    match outcome {
                        CopyOutcome::Copied(bytes) => Some(bytes),
                        // Another step published it meanwhile: a fresh copy, and claimed.
                        CopyOutcome::AlreadyPresent | CopyOutcome::PublishedMeanwhile => {
                            storage.stat(&dst).await?.map(|meta| meta.size)
                        }
                    }
                }
            }
        }
    };
    Ok((outcome, Landed { size }))
}
