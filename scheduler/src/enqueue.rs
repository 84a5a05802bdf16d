//! The enqueue loop: under the exclusive lease, keeps the importers busy up to the capacity.
//!
//! Each pass, while the migration is enabled and the lease valid: start final imports for
//! repositories whose pre-import is done; then, while below capacity, retry aborted repositories
//! first and otherwise start the next `default` repository's pre-import. The loop wakes on a timer,
//! on every completion notification (on any replica, through Redis pub/sub) and on API calls.
//!
//! A step's end reported to the replica that holds the lease does not wait for the loop: that
//! replica runs the part of a pass the end calls for at once ([`Enqueuer::step_ended`]), under
//! the same lease and fence. Passes never overlap within a replica (`turn`), and a replica
//! without the lease never claims.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::Instrument as _;

use ferry_proto::common::v1::{ImportType, MigrationStatus};

use crate::guard::Guard;
use crate::importers::{ImporterPool, StartResult};
use crate::lease::{HeldLease, Lease};
use crate::reconcile::{self, Resume};
use crate::state::{MigrationState, SkipReason};
use crate::store::{Abort, Claimed, RepoKey, SchedulerStore, Settings};

mod triggers;
pub use triggers::{Triggers, forward_wakeups};

/// Tuning of the loop.
#[derive(Debug, Clone)]
pub struct EnqueueConfig {
    /// Timer wake-up period.
    pub interval: Duration,
    /// How often the guard checks stale steps.
    pub guard_interval: Duration,
}

/// The loop and what it drives.
#[derive(Debug, Clone)]
pub struct Enqueuer {
    /// Scheduler database.
    pub store: SchedulerStore,
    /// Importers.
    pub importers: Arc<ImporterPool>,
    /// The lease.
    pub lease: Lease,
    /// Local wake-ups.
    pub wake: Arc<Notify>,
    /// Tuning.
    pub config: EnqueueConfig,
    /// The guard, run by the lease holder every `guard_interval`.
    pub guard: Guard,
    /// The bucket, to count a repository's tags before its pre-import.
    pub storage: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
    /// Deduplicated triggers; a pass consumes the pending one.
    pub triggers: Triggers,
    /// The lease while this replica holds it, so shutdown can release it at once.
    pub held: Arc<tokio::sync::Mutex<Option<HeldLease>>>,
    /// Lease transitions are counted here.
    pub metrics: crate::metrics::MigrationMetrics,
    /// Held by a pass while it runs, so the loop's passes and those run on a step's end never
    /// overlap (two at once could both see the same slot free).
    pub turn: Arc<tokio::sync::Mutex<()>>,
    /// What the queued reaction to step ends has to do ([`StepEnd::bit`]s); zero when none is
    /// queued. Ends that arrive while one waits for its turn join it instead of queueing more.
    pub reactions: Arc<std::sync::atomic::AtomicU8>,
    /// The settings the last turn read: a step started with another step's end takes its retry
    /// limits from here instead of reading the settings again (they are at most a pass old;
    /// whether the migration is enabled was checked by the end's own statement).
    pub last_settings: Arc<std::sync::Mutex<Option<Settings>>>,
}

/// What a step's end frees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    /// A pre-import finished: its repository waits for its final import in the slot it holds.
    PreImportDone,
    /// A step ended otherwise (a final import done, a step failed or was canceled): a slot is free.
    SlotFreed,
}

impl StepEnd {
    fn bit(self) -> u8 {
        match self {
            StepEnd::PreImportDone => 1,
            StepEnd::SlotFreed => 2,
        }
    }
}

impl Enqueuer {
    /// Runs forever: acquire the lease, run passes while it is valid, repeat.
    pub async fn run(self) {
        loop {
            let floor = match self.store.current_fence().await {
                Ok(floor) => floor,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the fence; not taking the lease");
                    self.sleep_or_wake().await;
                    continue;
                }
            };
            match self.lease.try_acquire(floor).await {
                Ok(Some(held)) if !self.fence_raised(&held).await => {
                    let _ = self.lease.release(&held).await;
                }
                Ok(Some(held)) => {
                    tracing::info!(fence = held.fence, "enqueue lease acquired");
                    self.metrics.lease_acquired();
                    *self.held.lock().await = Some(held.clone());
                    let renewer = tokio::spawn({
                        let lease = self.lease.clone();
                        let held = held.clone();
                        async move { lease.keep_renewed(held).await }
                    });
                    self.lead(&held).await;
                    self.metrics.lease_ended();
                    renewer.abort();
                    self.held.lock().await.take();
                    let _ = self.lease.release(&held).await;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot reach Redis for the enqueue lease"),
            }
            self.sleep_or_wake().await;
        }
    }

    /// Raises the database's fence to a newly taken lease's token before anything is written
    /// with it. False (the lease is given back) when a newer token got there first or the
    /// database cannot be reached.
    async fn fence_raised(&self, held: &HeldLease) -> bool {
        match self.store.raise_fence(held.fence).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    fence = held.fence,
                    "a newer lease holder has written; giving the lease back"
                );
                false
            }
            Err(error) => {
                tracing::warn!(fence = held.fence, %error, "cannot raise the fence; giving the lease back");
                false
            }
        }
    }

    async fn sleep_or_wake(&self) {
        tokio::select! {
            () = self.wake.notified() => {},
            () = tokio::time::sleep(self.config.interval) => {},
        }
    }

    async fn lead(&self, held: &HeldLease) {
        let mut guarded_at: Option<std::time::Instant> = None;
        while held.is_valid().await {
            if guarded_at.is_none_or(|at| at.elapsed() >= self.config.guard_interval) {
                guarded_at = Some(std::time::Instant::now());
                match self.guard.pass(held).await {
                    Ok(report) if report.stale > 0 => tracing::info!(?report, "guard pass"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "guard pass failed"),
                }
            }
            if let Err(error) = self.triggers.consume().await {
                tracing::warn!(%error, "consuming the pending trigger failed; it expires by itself");
            }
            if let Err(error) = self.pass(held).await {
                tracing::warn!(%error, "enqueue pass failed");
            }
            self.sleep_or_wake().await;
        }
        tracing::warn!(
            fence = held.fence,
            "enqueue lease no longer valid; stopped dispatching"
        );
    }

    /// Releases the lease if this replica holds it (on shutdown, after the loop is stopped), so
    /// another replica takes over at once instead of after the TTL.
    pub async fn release_held(lease: &Lease, held: &tokio::sync::Mutex<Option<HeldLease>>) {
        if let Some(held) = held.lock().await.take() {
            match lease.release(&held).await {
                Ok(()) => tracing::info!(fence = held.fence, "enqueue lease released"),
                Err(error) => {
                    tracing::warn!(%error, "releasing the enqueue lease failed; it expires by itself");
                }
            }
        }
    }

    /// The lease this replica holds, while it is valid.
    pub async fn valid_lease(&self) -> Option<HeldLease> {
        let held = self.held.lock().await.clone()?;
        held.is_valid().await.then_some(held)
    }

    /// Starts a step claimed together with another step's end (a finished pre-import's final
    /// import, or the freed slot's next pre-import) in a task of its own, as a pass would.
    pub fn start_claimed(&self, held: &HeldLease, repo: Claimed, import_type: ImportType) {
        let settings = self
            .last_settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        self.spawn_dispatch(held, repo, import_type, settings.as_ref());
    }

    /// Runs what a step's end calls for at once, if this replica holds a valid lease: the final
    /// import of a finished pre-import, or the free slot's next claim. Returns false (and does
    /// nothing) otherwise; the loop's wake-up covers that case. The work runs in a task of its
    /// own, so the importer's notification is answered without waiting for it.
    ///
    /// Ends that arrive while a reaction waits for its turn join it: the reaction reads what it
    /// has to do only once it holds the turn, and its claims see every end committed before.
    pub async fn step_ended(&self, end: StepEnd) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(held) = self.held.lock().await.clone() else {
            return false;
        };
        if !held.is_valid().await {
            return false;
        }
        if self.reactions.fetch_or(end.bit(), SeqCst) != 0 {
            return true; // a queued reaction will do it
        }
        let this = self.clone();
        tokio::spawn(
            async move {
                let _turn = this.turn.lock().await;
                let wanted = this.reactions.swap(0, SeqCst);
                if let Err(error) = this.take_turn(&held, wanted).await {
                    tracing::warn!(%error, "reacting to a step's end failed; the loop picks it up");
                }
            }
            .instrument(tracing::info_span!("step_ended")),
        );
        true
    }

    /// One pass of the loop.
    pub async fn pass(&self, held: &HeldLease) -> Result<(), sqlx::Error> {
        let _turn = self.turn.lock().await;
        let everything = StepEnd::PreImportDone.bit() | StepEnd::SlotFreed.bit();
        self.take_turn(held, everything).await
    }

    /// The work of a pass, with the turn held: the final imports of finished pre-imports and the
    /// free slots, as far as `wanted` ([`StepEnd::bit`]s) asks, while the migration is enabled.
    async fn take_turn(&self, held: &HeldLease, wanted: u8) -> Result<(), sqlx::Error> {
        let settings = self.store.settings().await?;
        *self
            .last_settings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(settings.clone());
        if !settings.enabled {
            return Ok(());
        }
        if wanted & StepEnd::PreImportDone.bit() != 0 {
            self.start_finals(held, &settings).await?;
        }
        if wanted & StepEnd::SlotFreed.bit() != 0 {
            self.fill_free_slots(held, &settings).await?;
        }
        Ok(())
    }

    /// Starts the final imports of finished pre-imports: their slots are taken already. Claimed
    /// in one statement, started together.
    async fn start_finals(&self, held: &HeldLease, settings: &Settings) -> Result<(), sqlx::Error> {
        if !held.is_valid().await {
            return Ok(());
        }
        let limit = i64::from(settings.capacity.max(1));
        let finals = self
            .store
            .claim_pre_import_done(Some(held.fence), limit)
            .await?;
        for repo in finals {
            self.spawn_dispatch(held, repo, ImportType::Final, Some(settings));
        }
        Ok(())
    }

    /// While slots are free: retries aborted repositories first, then claims ready `default`
    /// ones for every free slot in one statement and starts them together.
    async fn fill_free_slots(
        &self,
        held: &HeldLease,
        settings: &Settings,
    ) -> Result<(), sqlx::Error> {
        // Like the original's `waiting_time_passed?`: new repositories wait after a step ends.
        if !self
            .store
            .waiting_time_passed(settings.enqueue_waiting_time)
            .await?
        {
            return Ok(());
        }
        // Aborted repositories first, one at a time (rare, and each asks its importer).
        while held.is_valid().await {
            let Some((repo, pre_import_done)) = self.store.next_aborted().await? else {
                break;
            };
            if self.store.in_process_count().await? >= i64::from(settings.capacity)
                || !self
                    .retry_aborted(held, &repo, pre_import_done, settings)
                    .await?
            {
                // No slot free, or the write was refused: the lease is gone or another holder
                // acts.
                return Ok(());
            }
        }
        if !held.is_valid().await {
            return Ok(());
        }
        // Then every free slot, claimed together and started together: a slot is never left
        // idle while the others are being started one after another. The statement counts what
        // is in process itself.
        let batch = self
            .store
            .claim_ready(Some(held.fence), settings.capacity)
            .await?;
        for repo in batch {
            self.spawn_dispatch(held, repo, ImportType::Pre, Some(settings));
        }
        Ok(())
    }

    /// Retries an aborted repository after reconciling with the importer's status (see
    /// [`reconcile`]). Returns false if its fenced write was refused.
    async fn retry_aborted(
        &self,
        held: &HeldLease,
        repo: &Claimed,
        pre_import_done: bool,
        settings: &Settings,
    ) -> Result<bool, sqlx::Error> {
        let (status, same_step) = match self.importers.status(None, &repo.path).await {
            Ok(answer) => (
                Some(MigrationStatus::try_from(answer.status).unwrap_or_default()),
                i64::try_from(answer.step).is_ok_and(|step| step == repo.step),
            ),
            Err(status) => {
                tracing::debug!(repository = %repo.path, %status, "no importer status; retrying by the recorded state");
                (None, false)
            }
        };
        let resume = reconcile::resume(status, same_step, pre_import_done);
        tracing::info!(repository = %repo.path, step = repo.step, ?status, same_step, ?resume, "retrying aborted repository");
        let fence = Some(held.fence);
        Ok(match resume {
            Resume::FinishNative => {
                self.store
                    .finish_import_as(repo.id, repo.step, Some(SkipReason::NativeImport), fence)
                    .await?
            }
            Resume::FinishImport => {
                self.store
                    .finish_import_as(repo.id, repo.step, None, fence)
                    .await?
            }
            Resume::WatchPreImport | Resume::WatchImport => {
                let to_final = resume == Resume::WatchImport;
                self.store
                    .resume_aborted(repo, to_final, false, fence)
                    .await?
                    .is_some()
            }
            Resume::RetryPreImport | Resume::RetryImport => {
                let to_final = resume == Resume::RetryImport;
                let resumed = self
                    .store
                    .resume_aborted(repo, to_final, true, fence)
                    .await?;
                if let Some(step) = resumed {
                    let import_type = if to_final {
                        ImportType::Final
                    } else {
                        ImportType::Pre
                    };
                    let repo = Claimed {
                        step,
                        ..repo.clone()
                    };
                    self.dispatch(held, &repo, import_type, None, settings)
                        .await?;
                }
                resumed.is_some()
            }
        })
    }

    /// Counts the repository's tags and skips it with `too_many_tags` when over
    /// `max_tags_count`. Returns `None` when skipped, else the count to record with the step's
    /// start (none when counting failed).
    async fn within_tag_limit(
        &self,
        held: &HeldLease,
        repo: &Claimed,
        settings: &Settings,
    ) -> Result<Option<Option<i32>>, sqlx::Error> {
        let Ok(path) = ferry_shared::ids::RepositoryPath::parse(&repo.path) else {
            return Ok(Some(None)); // the importer refuses it with a reason
        };
        let tags = match ferry_shared::walk::count_tags(self.storage.as_ref(), &path).await {
            Ok(tags) => i32::try_from(tags).unwrap_or(i32::MAX),
            Err(error) => {
                tracing::warn!(repository = %repo.path, %error, "counting tags failed; starting without a count");
                return Ok(Some(None));
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
            return Ok(None);
        }
        Ok(Some(Some(tags)))
    }

    /// Starts a claimed repository's step in a task of its own: the loop goes straight back to
    /// claiming, so a slot never waits for another repository's start round trip. (The claim
    /// already took the slot in the database.) A pre-import first checks the tag limit.
    fn spawn_dispatch(
        &self,
        held: &HeldLease,
        repo: Claimed,
        import_type: ImportType,
        settings: Option<&Settings>,
    ) {
        let this = self.clone();
        let held = held.clone();
        let settings = settings.cloned();
        let span = tracing::info_span!(
            "dispatch",
            repository = %repo.path,
            import_type = crate::importers::type_label(import_type),
        );
        tokio::spawn(async move {
            let result = async {
                let settings = match settings {
                    Some(settings) => settings,
                    None => this.store.settings().await?,
                };
                let mut tags_count = None;
                if import_type == ImportType::Pre {
                    match this.within_tag_limit(&held, &repo, &settings).await? {
                        Some(counted) => tags_count = counted,
                        None => return Ok(()),
                    }
                }
                this.dispatch(&held, &repo, import_type, tags_count, &settings).await
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(repository = %repo.path, %error, "dispatch failed; the guard will pick it up");
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
    ) -> Result<(), sqlx::Error> {
        let max_retries = settings.max_retries;
        let start_max_retries = u32::try_from(settings.start_max_retries).unwrap_or(0);
        let state = if import_type == ImportType::Final {
            MigrationState::Importing
        } else {
            MigrationState::PreImporting
        };
        let step = u64::try_from(repo.step).unwrap_or(0);
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
                    tracing::info!(repository = %repo.path, ?import_type, fence = held.fence, step, importer, "step started");
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
                        tracing::warn!(repository = %repo.path, fence = held.fence, step,
                            "importer not recorded: a newer step exists, or a newer lease holder");
                    }
                    return Ok(());
                }
                StartResult::AlreadyRunning => {
                    // An earlier start of this step was accepted and its answer lost; whichever
                    // importer runs it is found by the guard if it is ever needed.
                    tracing::info!(repository = %repo.path, step, "step already running");
                    return Ok(());
                }
                StartResult::AlreadyImported { imported: true } => {
                    tracing::info!(repository = %repo.path, "importer already completed it; finishing");
                    self.store
                        .finish_import_as(repo.id, repo.step, None, Some(held.fence))
                        .await?;
                    return Ok(());
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
                    return Ok(());
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
                    return Ok(());
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
                            step: repo.step,
                            from: &[state],
                            error: &error,
                            max_retries,
                            counted: true,
                            fence: Some(held.fence),
                        })
                        .await?;
                    return Ok(());
                }
            }
        }
    }
}
