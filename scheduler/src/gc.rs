//! Removing abandoned copies (`ferryctl gc`): the scheduler checks the request, starts the
//! collection on one importer (which holds the storage budget and the metadata database) and
//! relays its progress. The safety rules live on the importer (`ferry_importer::gc`).

use std::time::Instant;

use tokio::sync::mpsc;

use ferry_proto::importer::v1::collect_garbage_event::Event;
use ferry_proto::scheduler::v1::{CollectGarbageRequest, GarbageProgress};

use crate::error::SchedulerError;
use crate::importers::{ImporterError, ImporterPool, OpenCollection};
use crate::limits;

/// A checked `CollectGarbage` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRequest {
    /// The window in seconds (0: the importer's default).
    pub older_than_secs: u64,
    /// List only.
    pub dry_run: bool,
}

impl TryFrom<CollectGarbageRequest> for GcRequest {
    type Error = SchedulerError;

    /// Checks the window's range; the error names the field.
    fn try_from(request: CollectGarbageRequest) -> Result<Self, SchedulerError> {
        limits::GC_OLDER_THAN_SECS.require(request.older_than_secs)?;
        Ok(Self {
            older_than_secs: request.older_than_secs,
            dry_run: request.dry_run,
        })
    }
}

/// Starts the collection on an importer; its refusal is the call's answer (an importer's
/// `INVALID_ARGUMENT` stays one).
pub async fn open(
    importers: &ImporterPool,
    request: GcRequest,
) -> Result<OpenCollection, SchedulerError> {
    importers
        .collect_garbage(request.older_than_secs, request.dry_run)
        .await
        .map_err(|error| match error {
            ImporterError::Refused {
                code: tonic::Code::InvalidArgument,
                message,
            } => SchedulerError::InvalidArgument(
                (message.strip_prefix("invalid argument: "))
                    .unwrap_or(&message)
                    .to_owned(),
            ),
            other => SchedulerError::Unavailable(other.to_string()),
        })
}

type Progress = mpsc::Sender<Result<GarbageProgress, SchedulerError>>;

/// Relays the importer's events as progress messages, ending with one marked `finished` (with
/// the error when the importer's stream broke off). Stops when the receiver goes away, which
/// drops the importer's stream and stops the collection there.
pub async fn relay(collection: OpenCollection, progress: Progress) {
    let started = Instant::now();
    let OpenCollection {
        importer,
        mut events,
    } = collection;
    let message = |started: &Instant| GarbageProgress {
        importer: importer.clone(),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..GarbageProgress::default()
    };
    let mut counts = None;
    loop {
        let mut update = message(&started);
        match events.message().await {
            Ok(Some(event)) => match event.event {
                Some(Event::Candidate(candidate)) => {
                    update.candidate = Some(candidate);
                    update.counts = counts;
                }
                Some(Event::Progress(now)) => {
                    counts = Some(now);
                    update.counts = counts;
                }
                Some(Event::Done(summary)) => {
                    update.counts = summary.counts;
                    update.error = summary.error;
                    update.older_than_secs = summary.older_than_secs;
                    update.dry_run = summary.dry_run;
                    update.finished = true;
                    let _ = progress.send(Ok(update)).await;
                    return;
                }
                None => continue,
            },
            broken => {
                let reason = match broken {
                    Err(status) => status.message().to_owned(),
                    _ => "the importer ended the collection without a summary".to_owned(),
                };
                update.counts = counts;
                update.error = format!("importer {importer}: {reason}");
                update.finished = true;
                let _ = progress.send(Ok(update)).await;
                return;
            }
        }
        if progress.send(Ok(update)).await.is_err() {
            return;
        }
    }
}
