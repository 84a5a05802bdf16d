//! Starting claimed steps on the importers, each in a task of its own, and retrying aborted
//! repositories: the enqueuer's hands. A start that ends without a running step (the repository
//! finished, skipped or aborted instead) wakes the enqueuer, since its slot is free again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_shared::step::{MaybeStep, Step};
use ferry_shared::storage::BlobStore;

use super::Message;
use crate::importers::{ImporterPool, StartResult};
use crate::lease::HeldLease;
use crate::reconcile::{self, Resume};
use crate::state::{MigrationState, SkipReason};
use crate::store::{Abort, AbortedRepo, Claimed, RepoKey, SchedulerStore, Settings};

/// What became of an aborted repository taken up again.
#[derive(Debug)]
pub(super) enum Retry {
    /// Claimed again as a new step, to be started.
    Start(Claimed, ImportType),
    /// Settled without a new step: finished (its import had completed, or it is native), or
    /// put back to wait for the step still running.
    Settled,
    /// The fenced write was refused: the lease is gone, or another holder acted.
    Refused,
}

/// What the tag limit said about a pre-import about to start.
enum TagCheck {
    /// Over `max_tags_count`: skipped, not started.
    Skipped,
    /// Within it; the count to record with the step's start (none when counting failed).
    Within { counted: Option<i32> },
}

/// Whether a dispatch left a step running.
enum Started {
    Yes,
    No,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub(super) struct Dispatcher {
    pub(super) store: SchedulerStore,
    pub(super) importers: Arc<ImporterPool>,
    /// The bucket, to count a repository's tags before its pre-import.
    pub(super) storage: Arc<dyn BlobStore>,
    /// The enqueuer's mailbox, for the wake-up after a start that freed its slot.
    pub(super) mailbox: mpsc::Sender<Message>,
    /// Every start in flight, so shutdown can wait for them.
    pub(super) tasks: TaskTracker,
}

impl Dispatcher {
    /// Reconciles an aborted repository with the importer's status (see [`reconcile`]) and
    /// claims it again; the caller starts the new step, if one was claimed.
    pub(super) async fn retry_aborted(
        &self,
        held: &HeldLease,
        repo: &AbortedRepo,
        pre_import_done: bool,
    ) -> Result<Retry, sqlx::Error> {
        let (status, same_step) = match self.importers.status(None, &repo.path).await {
            Ok(answer) => (
                Some(MigrationStatus::try_from(answer.status).unwrap_or_default()),
                Step::from_wire(answer.step).is_ok_and(|step| step == repo.step),
            ),
            Err(error) => {
                tracing::debug!(repository = %repo.path, %error, "no importer status; retrying by the recorded state");
                (None, false)
            }
        };
        let resume = reconcile::resume(status, same_step, pre_import_done);
        tracing::info!(repository = %repo.path, step = repo.step.wire(), ?status, same_step, ?resume, "retrying aborted repository");
        let fence = Some(held.fence);
        let settled = |written: bool| {
            if written {
                Retry::Settled
            } else {
                Retry::Refused
            }
        };
        Ok(match resume {
            Resume::FinishNative => settled(
                self.store
                    .finish_import_as(repo.id, repo.step, Some(SkipReason::NativeImport), fence)
                    .await?,
            ),
            Resume::FinishImport => settled(
                self.store
                    .finish_import_as(repo.id, repo.step, None, fence)
                    .await?,
            ),
            Resume::WatchPreImport | Resume::WatchImport => {
                let to_final = resume == Resume::WatchImport;
                settled(
                    self.store
                        .resume_aborted(repo, to_final, false, fence)
                        .await?
                        .is_some(),
                )
            }
            Resume::RetryPreImport | Resume::RetryImport => {
                let to_final = resume == Resume::RetryImport;
                let resumed = self
                    .store
                    .resume_aborted(repo, to_final, true, fence)
                    .await?;
                match resumed {
                    Some(Some(step)) => Retry::Start(
                        Claimed {
                            id: repo.id,
                            path: repo.path.clone(),
                            step,
                        },
                        if to_final {
                            ImportType::Final
                        } else {
                            ImportType::Pre
                        },
                    ),
                    // A new step is always numbered: `Some(None)` does not happen.
                    Some(None) | None => Retry::Refused,
                }
            }
        })
    }

    /// Counts the repository's tags and skips it with `too_many_tags` when over
    /// `max_tags_count`.
    async fn within_tag_limit(
        &self,
        held: &HeldLease,
        repo: &Claimed,
        settings: &Settings,
    ) -> Result<TagCheck, sqlx::Error> {
        let uncounted = TagCheck::Within { counted: None };
        let Ok(path) = ferry_shared::ids::RepositoryPath::parse(&repo.path) else {
            return Ok(uncounted); // the importer refuses it with a reason
        };
        let tags = match ferry_shared::walk::count_tags(self.storage.as_ref(), &path).await {
            Ok(tags) => i32::try_from(tags).unwrap_or(i32::MAX),
            Err(error) => {
                tracing::warn!(repository = %repo.path, %error, "counting tags failed; starting without a count");
                return Ok(uncounted);
            }
        };
        if settings.max_tags_count > 0 && tags > settings.max_tags_count {
            tracing::info!(repository = %repo.path, tags, limit = settings.max_tags_count, "skipped: too many tags");
            self.store
                .skip_too_many_tags(
                    repo.id,
                    repo.step,
                    tags,
                    settings.max_tags_count,
                    Some(held.fence),
                )
                .await?;
            return Ok(TagCheck::Skipped);
        }
        Ok(TagCheck::Within {
            counted: Some(tags),
        })
    }

    /// Starts a claimed repository's step in a task of its own: the enqueuer goes straight back
    /// to its mailbox, so a slot never waits for another repository's start round trip. (The
    /// claim already took the slot in the database.) A pre-import first checks the tag limit.
    pub(super) fn spawn(
        &self,
        held: &HeldLease,
        repo: Claimed,
        import_type: ImportType,
        settings: &Settings,
    ) {
        let this = self.clone();
        let held = held.clone();
        let settings = settings.clone();
        let span = tracing::info_span!(
            "dispatch",
            repository = %repo.path,
            import_type = crate::importers::type_label(import_type),
            step = repo.step.get(),
            correlation_id = %repo.step.correlation_id(&repo.path),
        );
        self.tasks.spawn(async move {
            let result = async {
                let mut tags_count = None;
                if import_type == ImportType::Pre {
                    match this.within_tag_limit(&held, &repo, &settings).await? {
                        TagCheck::Within { counted } => tags_count = counted,
                        TagCheck::Skipped => return Ok(Started::No),
                    }
                }
                this.dispatch(&held, &repo, import_type, tags_count, &settings).await
            }
            .await;
            match result {
                // The step ended without running (finished, skipped or aborted): its slot is free.
                Ok(Started::No) => {
                    let _ = this.mailbox.try_send(Message::Wake);
                }
                Ok(Started::Yes) => {}
                Err(error) => {
                    tracing::warn!(repository = %repo.path, %error, "dispatch failed; the guard will pick it up");
                }
            }
        }.instrument(span));
    }

    /// Starts a claimed step on an importer and records which one took it (with the tag count,
    /// when counted); finishes or aborts the repository when no importer can take it.
    async fn dispatch(
        &self,
        held: &HeldLease,
        repo: &Claimed,
        import_type: ImportType,
        tags_count: Option<i32>,
        settings: &Settings,
    ) -> Result<Started, sqlx::Error> {
        let max_retries = settings.max_retries;
        let start_max_retries = u32::try_from(settings.start_max_retries).unwrap_or(0);
        let state = if import_type == ImportType::Final {
            MigrationState::Importing
        } else {
            MigrationState::PreImporting
        };
        let step = repo.step;
        // Backoffs waited out while every importer was busy (100 ms × the backoff's number);
        // a step's end cuts the current one short without counting it.
        let mut backoffs = 0;
        let mut backoff_until = None;
        loop {
            let result = self
                .importers
                .start(&repo.path, import_type, held.fence, step)
                .await;
            match result {
                StartResult::Accepted {
                    importer,
                    accepted_at,
                } => {
                    tracing::info!(repository = %repo.path, ?import_type, fence = held.fence, step = step.get(), importer, "step started");
                    if !self
                        .store
                        .record_importer(
                            repo.id,
                            repo.step,
                            &importer,
                            accepted_at,
                            tags_count,
                            Some(held.fence),
                        )
                        .await?
                    {
                        tracing::warn!(repository = %repo.path, fence = held.fence, step = step.get(),
                            "importer not recorded: a newer step exists, or a newer lease holder");
                    }
                    return Ok(Started::Yes);
                }
                StartResult::AlreadyRunning => {
                    // An earlier start of this step was accepted and its answer lost; whichever
                    // importer runs it is found by the guard if it is ever needed.
                    tracing::info!(repository = %repo.path, step = step.get(), "step already running");
                    return Ok(Started::Yes);
                }
                StartResult::AlreadyImported { imported: true } => {
                    tracing::info!(repository = %repo.path, "importer already completed it; finishing");
                    self.store
                        .finish_import_as(repo.id, repo.step, None, Some(held.fence))
                        .await?;
                    return Ok(Started::No);
                }
                StartResult::AlreadyImported { imported: false } => {
                    self.store
                        .finish_import_as(
                            repo.id,
                            repo.step,
                            Some(SkipReason::NativeImport),
                            Some(held.fence),
                        )
                        .await?;
                    return Ok(Started::No);
                }
                StartResult::NotFound(message) => {
                    tracing::warn!(repository = %repo.path, message, "not in old storage; finished as not_found");
                    self.store
                        .finish_import_as(
                            repo.id,
                            repo.step,
                            Some(SkipReason::NotFound),
                            Some(held.fence),
                        )
                        .await?;
                    return Ok(Started::No);
                }
                StartResult::AllBusy(message)
                    if backoffs < start_max_retries && held.is_valid().await =>
                {
                    tracing::debug!(repository = %repo.path, backoffs, message, "every importer busy; backing off");
                    let until = *backoff_until.get_or_insert_with(|| {
                        tokio::time::Instant::now() + Duration::from_millis(100) * (backoffs + 1)
                    });
                    if !self.importers.slot_freed_before(until).await {
                        backoffs += 1;
                        backoff_until = None;
                    }
                }
                StartResult::AllBusy(message) | StartResult::Refused(message) => {
                    let error = format!(
                        "could not start {}: {message}",
                        state.as_str().replace('_', "-")
                    );
                    tracing::warn!(repository = %repo.path, error, "aborting");
                    self.store
                        .abort(Abort {
                            key: RepoKey::Id(repo.id),
                            step: Some(repo.step),
                            from: &[state],
                            error: &error,
                            max_retries,
                            counted: true,
                            fence: Some(held.fence),
                        })
                        .await?;
                    return Ok(Started::No);
                }
            }
        }
    }
}
