//! Steps running in this process, so that a cancellation or a shutdown stops them at once, and
//! the watcher that notices a cancellation made through another importer instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::Step;

use crate::store::MetadataStore;

/// Why a running step is stopped before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `CancelImport`: the status is already `*_canceled`; nothing more is recorded.
    Canceled,
    /// The importer is shutting down: the step is recorded as failed with reason `shutdown`.
    Shutdown,
}

type StopSignal = watch::Sender<Option<StopReason>>;

/// The registry of steps running here, by repository path.
#[derive(Debug, Default)]
pub struct RunningSteps {
    next_id: AtomicU64,
    steps: Mutex<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    /// Per path: the registration's id, the step's number, and its stop signal.
    by_path: HashMap<String, (u64, Step, StopSignal)>,
    /// Set by [`RunningSteps::stop_all`]; a step registered afterwards starts stopped.
    shutting_down: bool,
}

/// A registered step; dropping it unregisters the step.
#[derive(Debug)]
pub struct RunningStep {
    registry: Arc<RunningSteps>,
    path: String,
    id: u64,
    /// Set when this process stops the step.
    pub stop: watch::Receiver<Option<StopReason>>,
}

impl RunningSteps {
    /// Registers step number `step` of `path`.
    pub fn register(self: &Arc<Self>, path: &RepositoryPath, step: Step) -> RunningStep {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut registry = self.lock();
        let initial = registry.shutting_down.then_some(StopReason::Shutdown);
        let (sender, receiver) = watch::channel(initial);
        registry
            .by_path
            .insert(path.to_string(), (id, step, sender));
        RunningStep {
            registry: Arc::clone(self),
            path: path.to_string(),
            id,
            stop: receiver,
        }
    }

    /// The number of the step of `path` running in this process, if one runs.
    pub fn running_step(&self, path: &RepositoryPath) -> Option<Step> {
        self.lock()
            .by_path
            .get(path.as_str())
            .map(|(_, step, _)| *step)
    }

    /// Signals the step running here for `path` if its number is at most `up_to` (a cancel of
    /// step `up_to` supersedes every older one; `None` means any). Returns whether one was
    /// signalled.
    pub fn cancel(&self, path: &RepositoryPath, up_to: Option<Step>) -> bool {
        self.lock()
            .by_path
            .get(path.as_str())
            .filter(|(_, step, _)| up_to.is_none_or(|up_to| *step <= up_to))
            .is_some_and(|(_, _, sender)| sender.send(Some(StopReason::Canceled)).is_ok())
    }

    /// Signals every step running here to stop for shutdown; returns how many there were.
    pub fn stop_all(&self) -> usize {
        let mut registry = self.lock();
        registry.shutting_down = true;
        for (_, _, sender) in registry.by_path.values() {
            let _ = sender.send(Some(StopReason::Shutdown));
        }
        registry.by_path.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for RunningStep {
    fn drop(&mut self) {
        let mut registry = self.registry.lock();
        // A newer step for the same repository may have registered since; leave it alone.
        if registry
            .by_path
            .get(&self.path)
            .is_some_and(|(id, _, _)| *id == self.id)
        {
            registry.by_path.remove(&self.path);
        }
    }
}

/// Completes when the step must stop, with the reason: signalled in this process, or the
/// database no longer holds the repository `in_progress` in step `step` (canceled through another
/// importer, or taken over by a newer step), checked every `poll`.
pub async fn wait_for_stop(
    mut stop: watch::Receiver<Option<StopReason>>,
    db: &MetadataStore,
    path: &RepositoryPath,
    (in_progress, step): (MigrationStatus, Step),
    poll: Duration,
) -> StopReason {
    if let Some(reason) = *stop.borrow_and_update() {
        return reason;
    }
    loop {
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    return StopReason::Shutdown;
                }
                if let Some(reason) = *stop.borrow() {
                    return reason;
                }
            }
            () = tokio::time::sleep(poll) => {
                match db.repository(path).await {
                    Ok(Some(row)) if row.status != in_progress || row.step != Some(step) => {
                        return StopReason::Canceled;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(repository = %path, %error, "checking for cancellation failed"),
                }
            }
        }
    }
}
