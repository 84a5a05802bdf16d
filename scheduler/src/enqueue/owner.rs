//! The [`Enqueuer`]: the one task that decides what runs next (see the module above).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_shared::storage::BlobStore;

use super::dispatch::Dispatcher;
use super::dispatch::Retry;
use super::{EnqueueConfig, EnqueueHandle, Event, Message, Outcome, Start, StepReport, Triggers};
use crate::guard::Guard;
use crate::importers::ImporterPool;
use crate::lease::{HeldLease, Lease};
use crate::state::MigrationState;
use crate::store::{Abort, EndedStep, RepoKey, SchedulerStore, Settings};

/// Messages waiting at most: a burst of step ends beyond it waits for room (the importers'
/// notifications are retried; nothing is dropped).
const MAILBOX: usize = 1024;

/// What a pass (or part of one) has to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Turn {
    /// Start the final imports of finished pre-imports.
    finals: bool,
    /// Fill free slots: aborted repositories first, then ready ones.
    slots: bool,
}

impl Turn {
    const WHOLE: Turn = Turn {
        finals: true,
        slots: true,
    };
}

/// See the module documentation. Built by [`Enqueuer::new`], run by [`Enqueuer::run`].
#[derive(Debug)]
pub struct Enqueuer {
    store: SchedulerStore,
    lease: Lease,
    triggers: Triggers,
    config: EnqueueConfig,
    guard: Guard,
    importers: Arc<ImporterPool>,
    metrics: crate::metrics::MigrationMetrics,
    dispatcher: Dispatcher,
    mailbox: mpsc::Receiver<Message>,
    /// The lease while held, published for the repair scan.
    held: watch::Sender<Option<HeldLease>>,
    /// Renews the held lease; ends when the lease is lost.
    renewer: Option<JoinHandle<()>>,
    /// The guard's pass in flight, if any, and when the next one is due.
    guard_pass: Option<JoinHandle<()>>,
    guard_due: tokio::time::Instant,
    /// The settings the last pass read: a step started with another's end takes its limits from
    /// here (at most a pass old; whether the migration is enabled is checked by the end itself).
    settings: Option<Settings>,
    /// What the event being handled decided so far.
    outcome: Outcome,
}

impl Enqueuer {
    /// The enqueuer and the handle to talk to it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: SchedulerStore,
        lease: Lease,
        triggers: Triggers,
        config: EnqueueConfig,
        guard: Guard,
        importers: Arc<ImporterPool>,
        storage: Arc<dyn BlobStore>,
        metrics: crate::metrics::MigrationMetrics,
    ) -> (Self, EnqueueHandle) {
        let (sender, mailbox) = mpsc::channel(MAILBOX);
        let (held, lease_view) = watch::channel(None);
        let dispatcher = Dispatcher {
            store: store.clone(),
            importers: Arc::clone(&importers),
            storage,
            mailbox: sender.clone(),
            tasks: TaskTracker::new(),
        };
        let enqueuer = Self {
            store,
            lease,
            triggers,
            config,
            guard,
            importers,
            metrics,
            dispatcher,
            mailbox,
            held,
            renewer: None,
            guard_pass: None,
            guard_due: tokio::time::Instant::now(),
            settings: None,
            outcome: Outcome::default(),
        };
        let handle = EnqueueHandle {
            mailbox: sender,
            lease: lease_view,
        };
        (enqueuer, handle)
    }

    /// Runs until `stop`: takes the lease when it is free, and handles messages and timer ticks.
    /// On stop it releases the lease (another replica takes over at once) and waits up to
    /// `grace` for the starts in flight.
    pub async fn run(mut self, stop: CancellationToken, grace: Duration) {
        let mut timer = tokio::time::interval(self.config.interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // In this order: a stop first; the timer before the mailbox, so that a stream of
            // step ends never keeps a replica from taking a free lease (the timer fires once a
            // period, so it never starves the mailbox either).
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = lost(&mut self.renewer) => self.lease_lost().await,
                _ = timer.tick() => {
                    self.handle(Event::Tick).await;
                }
                message = self.mailbox.recv() => match message {
                    Some(message) => {
                        self.handle(Event::Message(message)).await;
                    }
                    None => break,
                },
            }
        }
        self.step_down().await;
        if let Some(guard) = self.guard_pass.take() {
            guard.abort();
        }
        self.dispatcher.tasks.close();
        if tokio::time::timeout(grace, self.dispatcher.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("starts still in flight at shutdown; the guard picks them up");
        }
    }

    /// Handles one event and says what it decided: [`Self::run`] calls it for every timer tick
    /// and message; tests call it directly, one event at a time.
    pub async fn handle(&mut self, event: Event) -> Outcome {
        self.outcome = Outcome::default();
        match event {
            Event::Tick => self.tick().await,
            Event::Message(message) => self.handle_messages(message).await,
        }
        let mut outcome = std::mem::take(&mut self.outcome);
        outcome.leading = self.held.borrow().is_some();
        outcome
    }

    /// Waits until every start handed to the dispatcher so far has reached its importer (or
    /// ended without a running step): for tests that drive [`Self::handle`].
    pub async fn starts_settled(&self) {
        self.dispatcher.tasks.close();
        self.dispatcher.tasks.wait().await;
        self.dispatcher.tasks.reopen();
    }

    /// Handles one message, then every message already waiting, with one pass for all the
    /// wake-ups among them.
    async fn handle_messages(&mut self, first: Message) {
        let mut wake = false;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Wake => wake = true,
                Message::StepEnded {
                    report,
                    span,
                    reply,
                } => {
                    self.step_ended(report, reply).instrument(span).await;
                }
            }
            next = self.mailbox.try_recv().ok();
        }
        if wake {
            self.tick().await;
        }
    }

    /// A timer tick or a wake-up: take the lease if it is free, then pass.
    async fn tick(&mut self) {
        if self.renewer.is_none() {
            self.try_lead().await;
        }
        let Some(held) = self.valid_lease().await else {
            if self.held.borrow().is_some() {
                self.lease_lost().await;
            }
            return;
        };
        self.start_guard_if_due(&held);
        if let Err(error) = self.triggers.consume().await {
            tracing::warn!(%error, "consuming the pending trigger failed; it expires by itself");
        }
        match self.take_turn(&held, Turn::WHOLE).await {
            Ok(()) => self.metrics.enqueue_pass(),
            Err(error) => tracing::warn!(%error, "enqueue pass failed"),
        }
    }

    /// The held lease, if it is still valid.
    async fn valid_lease(&self) -> Option<HeldLease> {
        let held = self.held.borrow().clone()?;
        held.is_valid().await.then_some(held)
    }

    /// Takes the lease if it is free, raising the database's fence to its token before anything
    /// is written with it.
    async fn try_lead(&mut self) {
        let floor = match self.store.current_fence().await {
            Ok(floor) => floor,
            Err(error) => {
                tracing::warn!(%error, "cannot read the fence; not taking the lease");
                return;
            }
        };
        let held = match self.lease.try_acquire(floor).await {
            Ok(Some(held)) => held,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot reach Redis for the enqueue lease");
                return;
            }
        };
        match self.store.raise_fence(held.fence).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    fence = held.fence,
                    "a newer lease holder has written; giving the lease back"
                );
                let _ = self.lease.release(&held).await;
                return;
            }
            Err(error) => {
                tracing::warn!(fence = held.fence, %error, "cannot raise the fence; giving the lease back");
                let _ = self.lease.release(&held).await;
                return;
            }
        }
        tracing::info!(fence = held.fence, "enqueue lease acquired");
        self.outcome.took_lease = Some(held.fence);
        self.metrics.lease_acquired();
        let lease = self.lease.clone();
        let renewed = held.clone();
        self.renewer = Some(tokio::spawn(async move {
            lease.keep_renewed(renewed).await;
        }));
        self.guard_due = tokio::time::Instant::now();
        self.held.send_replace(Some(held));
    }

    /// The held lease expired or went to another replica (this one was paused past its TTL, or
    /// could not renew): nothing more is claimed under it.
    async fn lease_lost(&mut self) {
        if let Some(held) = self.held.borrow().as_ref() {
            tracing::warn!(
                fence = held.fence,
                "enqueue lease no longer valid; stopped dispatching"
            );
        }
        self.step_down().await;
    }

    /// Gives the lease up (released in Redis when it is still ours).
    async fn step_down(&mut self) {
        let Some(held) = self.held.send_replace(None) else {
            return;
        };
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        self.metrics.lease_ended();
        match self.lease.release(&held).await {
            Ok(()) => tracing::info!(fence = held.fence, "enqueue lease released"),
            Err(error) => {
                tracing::warn!(%error, "releasing the enqueue lease failed; it expires by itself");
            }
        }
    }

    /// Starts a guard pass in a task of its own when one is due and none runs; it wakes the
    /// enqueuer when it freed or finished anything.
    fn start_guard_if_due(&mut self, held: &HeldLease) {
        let now = tokio::time::Instant::now();
        if now < self.guard_due || self.guard_pass.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        self.guard_due = now + self.config.guard_interval;
        let (guard, held) = (self.guard.clone(), held.clone());
        let mailbox = self.dispatcher.mailbox.clone();
        self.guard_pass = Some(tokio::spawn(
            async move {
                match guard.pass(&held).await {
                    Ok(report) if report.stale > 0 => {
                        tracing::info!(?report, "guard pass");
                        if report.running < report.stale {
                            let _ = mailbox.try_send(Message::Wake);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "guard pass failed"),
                }
            }
            .instrument(tracing::info_span!("guard")),
        ));
    }

    /// Applies a step's end and answers; then starts what the end claimed, or, holding the
    /// lease, runs the part of a pass the end calls for; without it, wakes the holder.
    async fn step_ended(
        &mut self,
        report: StepReport,
        reply: tokio::sync::oneshot::Sender<Result<Option<EndedStep>, sqlx::Error>>,
    ) {
        let held = self.valid_lease().await;
        let settings = match &self.settings {
            Some(settings) => settings.clone(),
            None => match self.store.settings().await {
                Ok(settings) => settings,
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return;
                }
            },
        };
        let holder = held.as_ref().map(|h| h.fence);
        let ended = apply_step_end(&self.store, &report, holder, settings.max_retries).await;
        let (next, importer) = match &ended {
            Ok(Some(end)) => (end.next.clone(), end.importer.clone()),
            _ => (None, None),
        };
        let applied = matches!(ended, Ok(Some(_)));
        // The importer's notification is answered before anything else happens.
        let _ = reply.send(ended);
        if !applied {
            return;
        }
        self.outcome.ended += 1;
        self.importers.step_ended(importer.as_deref());
        let pre_import_done = report.status == MigrationStatus::PreImportComplete;
        match (held, next) {
            (Some(held), Some(next)) => {
                let import_type = if pre_import_done {
                    ImportType::Final
                } else {
                    ImportType::Pre
                };
                self.start(&held, next, import_type, &settings);
            }
            (Some(held), None) => {
                let turn = Turn {
                    finals: pre_import_done,
                    slots: !pre_import_done,
                };
                if let Err(error) = self.take_turn(&held, turn).await {
                    tracing::warn!(%error, "reacting to a step's end failed; the next pass picks it up");
                }
            }
            (None, _) => {
                self.outcome.woke_holder = true;
                if let Err(error) = self.triggers.trigger().await {
                    tracing::warn!(%error, "publishing a wake-up failed; the timer will pick the work up");
                }
            }
        }
    }

    /// The work of a pass, as far as `turn` asks, while the migration is enabled.
    async fn take_turn(&mut self, held: &HeldLease, turn: Turn) -> Result<(), sqlx::Error> {
        let settings = self.store.settings().await?;
        self.settings = Some(settings.clone());
        if !settings.enabled {
            return Ok(());
        }
        if turn.finals {
            self.start_finals(held, &settings).await?;
        }
        if turn.slots {
            self.fill_free_slots(held, &settings).await?;
        }
        Ok(())
    }

    /// Starts the final imports of finished pre-imports: their slots are taken already. Claimed
    /// in one statement, started together.
    async fn start_finals(
        &mut self,
        held: &HeldLease,
        settings: &Settings,
    ) -> Result<(), sqlx::Error> {
        if !held.is_valid().await {
            return Ok(());
        }
        let limit = i64::from(settings.capacity.max(1));
        let finals = self
            .store
            .claim_pre_import_done(Some(held.fence), limit)
            .await?;
        for repo in finals {
            self.start(held, repo, ImportType::Final, settings);
        }
        Ok(())
    }

    /// While slots are free: retries aborted repositories first, then claims ready `default`
    /// ones for every free slot in one statement and starts them together.
    async fn fill_free_slots(
        &mut self,
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
            if self.store.in_process_count().await? >= i64::from(settings.capacity) {
                return Ok(());
            }
            match self
                .dispatcher
                .retry_aborted(held, &repo, pre_import_done)
                .await?
            {
                Retry::Start(repo, import_type) => self.start(held, repo, import_type, settings),
                Retry::Settled => self.outcome.settled += 1,
                // The lease is gone or another holder acts.
                Retry::Refused => return Ok(()),
            }
        }
        if !held.is_valid().await {
            return Ok(());
        }
        // Then every free slot, claimed together and started together. The statement counts
        // what is in process itself.
        let batch = self
            .store
            .claim_ready(Some(held.fence), settings.capacity)
            .await?;
        for repo in batch {
            self.start(held, repo, ImportType::Pre, settings);
        }
        Ok(())
    }

    /// Hands a claimed step to the dispatcher, which starts it in a task of its own.
    fn start(
        &mut self,
        held: &HeldLease,
        repo: crate::store::Claimed,
        import_type: ImportType,
        settings: &Settings,
    ) {
        self.outcome.started.push(Start {
            path: repo.path.clone(),
            step: repo.step,
            import_type,
        });
        self.dispatcher.spawn(held, repo, import_type, settings);
    }
}

/// Completes when the lease renewer has stopped (the lease is lost); never while no lease is
/// held.
async fn lost(renewer: &mut Option<JoinHandle<()>>) {
    match renewer {
        Some(handle) => {
            let _ = handle.await;
            *renewer = None;
        }
        None => std::future::pending().await,
    }
}

/// Applies a step's end (`report`) to the scheduler database: a completed step moves on, a
/// failed or canceled one is aborted (or skipped) as the store rules. With the lease holder's
/// token (`holder`), a completion also claims what comes next in the same statement
/// ([`EndedStep::next`]). `None` when the report changed nothing (a duplicate, or a step that
/// is no longer the repository's).
pub async fn apply_step_end(
    store: &SchedulerStore,
    report: &StepReport,
    holder: Option<u64>,
    max_retries: i32,
) -> Result<Option<EndedStep>, sqlx::Error> {
    use MigrationStatus::*;
    let (path, step, stats) = (report.path.as_str(), report.step, &report.stats);
    match (report.status, holder) {
        (PreImportComplete, Some(fence)) => {
            store
                .finish_pre_import_and_start_import(path, step, stats, fence)
                .await
        }
        (ImportComplete, Some(fence)) => {
            store
                .finish_import_and_claim_next(path, step, stats, fence)
                .await
        }
        (PreImportComplete, None) => store.finish_pre_import(path, step, stats, None).await,
        (ImportComplete, None) => store.finish_import(path, step, stats, None).await,
        (status, _) => {
            let from = if matches!(status, PreImportFailed | PreImportCanceled) {
                MigrationState::PreImporting
            } else {
                MigrationState::Importing
            };
            let error = if report.handed_back {
                format!(
                    "handed back by an importer shutting down: {}",
                    report.detail
                )
            } else {
                format!("{}: {}", status.as_db_str(), report.detail)
            };
            store
                .abort(Abort {
                    key: RepoKey::Path(path),
                    step: Some(step),
                    from: &[from],
                    error: &error,
                    max_retries,
                    counted: !report.handed_back,
                    fence: None,
                })
                .await
        }
    }
}
