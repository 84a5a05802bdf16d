//! Steps running in this process, so that a cancellation stops them at once, and the watcher
//! that notices a cancellation made through another importer instance.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::RepositoryPath;

use crate::store::MetadataStore;

/// The registry of steps running here, by repository path.
#[derive(Debug, Default)]
pub struct RunningSteps {
    next_id: AtomicU64,
    steps: Mutex<HashMap<String, (u64, watch::Sender<bool>)>>,
}

/// A registered step; dropping it unregisters the step.
#[derive(Debug)]
pub struct RunningStep {
    registry: Arc<RunningSteps>,
    path: String,
    id: u64,
    /// Becomes `true` when this process cancels the step.
    pub canceled: watch::Receiver<bool>,
}

impl RunningSteps {
    /// Registers a step for `path`.
    pub fn register(self: &Arc<Self>, path: &RepositoryPath) -> RunningStep {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(false);
        self.lock().insert(path.to_string(), (id, sender));
        RunningStep {
            registry: Arc::clone(self),
            path: path.to_string(),
            id,
            canceled: receiver,
        }
    }

    /// Signals the step running here for `path`, if any. Returns whether one was running.
    pub fn cancel(&self, path: &RepositoryPath) -> bool {
        self.lock()
            .get(path.as_str())
            .is_some_and(|(_, sender)| sender.send(true).is_ok())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, watch::Sender<bool>)>> {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for RunningStep {
    fn drop(&mut self) {
        let mut steps = self.registry.lock();
        // A newer step for the same repository may have registered since; leave it alone.
        if steps.get(&self.path).is_some_and(|(id, _)| *id == self.id) {
            steps.remove(&self.path);
        }
    }
}

/// Completes when the step is canceled: signalled in this process, or its status in the database
/// is no longer `in_progress` (canceled through another importer), checked every `poll`.
pub async fn wait_for_cancel(
    mut canceled: watch::Receiver<bool>,
    db: &MetadataStore,
    path: &RepositoryPath,
    in_progress: MigrationStatus,
    poll: Duration,
) {
    loop {
        tokio::select! {
            changed = canceled.changed() => {
                if changed.is_err() || *canceled.borrow() {
                    return;
                }
            }
            () = tokio::time::sleep(poll) => {
                match db.repository(path).await {
                    Ok(Some(row)) if row.status != in_progress => return,
                    Ok(_) => {}
                    Err(error) => tracing::warn!(repository = %path, %error, "checking for cancellation failed"),
                }
            }
        }
    }
}
