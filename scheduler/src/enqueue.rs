//! The enqueue loop: one task, the [`Enqueuer`], decides what runs next. It owns the enqueue
//! lease (and publishes it for the repair scan), the settings it last read and every claim of a
//! step; everyone else sends it a [`Message`] through its [`EnqueueHandle`].
//!
//! While it holds the lease and the migration is enabled, each pass starts the final imports of
//! finished pre-imports, then, while below capacity, retries aborted repositories first and
//! otherwise claims the next `default` repositories. A pass runs on a timer, on every wake-up (an
//! API call, a Redis wake-up from another replica, a freed slot), and as much of one as a step's
//! end calls for right after that end. A step's end reported to this replica is applied by the
//! enqueuer too: holding the lease, it claims what comes next in the end's own statement (the
//! finished pre-import's final import, or the freed slot's next pre-import) and starts it at
//! once; without the lease, it applies the end alone and wakes the holder through Redis.
//!
//! Messages are handled one at a time, so no two claims ever race inside a replica; starts (an
//! importer round trip each) and the guard run in tasks of their own, which report back with
//! [`Message::Wake`] when they freed a slot.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_shared::step::Step;

use crate::lease::HeldLease;
use crate::store::EndedStep;

mod dispatch;
mod owner;
mod triggers;

pub use owner::{Enqueuer, apply_step_end};
pub use triggers::{Triggers, forward_wakeups};

/// Tuning of the loop.
#[derive(Debug, Clone)]
pub struct EnqueueConfig {
    /// Timer wake-up period.
    pub interval: Duration,
    /// How often the guard checks stale steps.
    pub guard_interval: Duration,
}

/// A step's end as an importer reported it.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// The repository.
    pub path: String,
    /// The step that ended.
    pub step: Step,
    /// The importer's status after it: complete, failed or canceled.
    pub status: MigrationStatus,
    /// The reason of a failure, else a description.
    pub detail: String,
    /// What the step did.
    pub stats: ImportStats,
    /// Stopped by the importer's shutdown: retried without counting a retry.
    pub handed_back: bool,
}

/// What the enqueuer is told.
#[derive(Debug)]
pub enum Message {
    /// Something may be startable: a pass is due.
    Wake,
    /// A step's end: apply it (and claim what comes next, holding the lease); the answer is the
    /// end as applied, `None` for a duplicate or stale report.
    StepEnded {
        /// The end.
        report: StepReport,
        /// The span of the notification that reported it: the end, and the step it starts,
        /// belong to its trace.
        span: tracing::Span,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<Option<EndedStep>, sqlx::Error>>,
    },
}

/// What the [`Enqueuer`] reacts to: its timer, or a message from its mailbox.
#[derive(Debug)]
pub enum Event {
    /// The timer: take the lease if it is free, then a whole pass.
    Tick,
    /// A message (with every message already waiting behind it).
    Message(Message),
}

/// What handling one [`Event`] decided ([`Enqueuer::handle`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The lease was taken, with this fencing token.
    pub took_lease: Option<u64>,
    /// Whether this replica holds the lease afterwards.
    pub leading: bool,
    /// Step ends applied (a duplicate or stale report is not counted).
    pub ended: usize,
    /// Steps claimed and handed to the dispatcher, in order.
    pub started: Vec<Start>,
    /// Aborted repositories settled without a new step (finished, or waiting for their step).
    pub settled: usize,
    /// An end was applied without the lease, and the holder woken through Redis.
    pub woke_holder: bool,
}

/// A step claimed for a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The repository.
    pub path: String,
    /// The step's number.
    pub step: Step,
    /// Pre-import or final import.
    pub import_type: ImportType,
}

/// Where the answer to a [`Message::StepEnded`] comes back.
pub type StepEndAnswer = oneshot::Receiver<Result<Option<EndedStep>, sqlx::Error>>;

impl Message {
    /// A step's end, reported in a span of the current one that names the step (with the
    /// correlation id the importer's log lines of it carry), and where its answer comes back.
    pub fn step_ended(report: StepReport) -> (Self, StepEndAnswer) {
        let (reply, answer) = oneshot::channel();
        let span = tracing::info_span!(
            "step.end",
            repository = %report.path,
            step = report.step.get(),
            correlation_id = %report.step.correlation_id(&report.path),
        );
        let message = Message::StepEnded {
            report,
            span,
            reply,
        };
        (message, answer)
    }
}

/// How the rest of the scheduler talks to the [`Enqueuer`].
#[derive(Debug, Clone)]
pub struct EnqueueHandle {
    mailbox: mpsc::Sender<Message>,
    lease: watch::Receiver<Option<HeldLease>>,
}

/// Why the enqueuer did not answer.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The enqueuer has stopped (the scheduler is shutting down).
    #[error("the enqueue loop has stopped")]
    Stopped,
    /// Its database statement failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl EnqueueHandle {
    /// Has the enqueuer apply a step's end; returns it as applied (`None`: a duplicate or stale
    /// report that changed nothing).
    pub async fn step_ended(&self, report: StepReport) -> Result<Option<EndedStep>, EnqueueError> {
        let (message, answer) = Message::step_ended(report);
        self.mailbox
            .send(message)
            .await
            .map_err(|_| EnqueueError::Stopped)?;
        Ok(answer.await.map_err(|_| EnqueueError::Stopped)??)
    }

    /// Asks for a pass. A wake-up already waiting in the mailbox covers this one.
    pub fn wake(&self) {
        let _ = self.mailbox.try_send(Message::Wake);
    }

    /// The lease while this replica holds it (`None` otherwise), as the enqueuer publishes it.
    pub fn lease(&self) -> watch::Receiver<Option<HeldLease>> {
        self.lease.clone()
    }
}
