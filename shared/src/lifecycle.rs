//! One way to stop a service. Everything a service runs in the background is spawned on its
//! [`Tasks`]: one [`CancellationToken`] that every task watches, and one [`TaskTracker`] that
//! knows when they have all ended. A service's `run` cancels the token once (on SIGTERM, or
//! when its caller's shutdown future completes), lets its server drain, then waits for the tasks
//! up to a deadline and names the ones still running past it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

/// A service's background tasks and the one token that stops them.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    stop: CancellationToken,
    tracker: TaskTracker,
    /// Names of the tasks still running, with how many of each: only for the report of a
    /// deadline that passed.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

/// Tasks that had not ended when the deadline passed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("still running after the shutdown deadline: {}", .0.join(", "))]
pub struct StillRunning(pub Vec<String>);

impl Tasks {
    /// No tasks yet; the token not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Completes when the service is told to stop.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// Whether the service has been told to stop.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Tells every task to stop. Idempotent.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Spawns `task`, which is handed the stop token and must end by itself once it is
    /// cancelled (releasing what it holds, flushing what it stashed).
    pub fn spawn<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let running = self.track(name);
        let work = task(self.stop.clone());
        self.tracker.spawn(async move {
            work.await;
            drop(running);
        });
    }

    /// Spawns `task`, a loop with nothing to wind down (a periodic refresh, an endpoint), which
    /// is dropped at its next await once the service stops.
    pub fn spawn_until_stopped<Fut>(&self, name: &'static str, task: Fut)
    where
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, move |stop| async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Stops the service's tasks (if not yet told) and waits up to `deadline` for all of them.
    pub async fn stop_and_wait(&self, deadline: Duration) -> Result<(), StillRunning> {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(deadline, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let names = self
            .lock()
            .iter()
            .map(|(name, count)| match count {
                1 => (*name).to_owned(),
                n => format!("{name} ×{n}"),
            })
            .collect();
        Err(StillRunning(names))
    }

    fn track(&self, name: &'static str) -> RunningTask {
        *self.lock().entry(name).or_default() += 1;
        RunningTask {
            name,
            running: Arc::clone(&self.running),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, usize>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Counts a task as running until dropped (when it ends, or is dropped with its runtime).
struct RunningTask {
    name: &'static str,
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = running.get_mut(self.name) {
            *count -= 1;
            if *count == 0 {
                running.remove(self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stopping_ends_loops_at_once_and_waits_for_tasks_that_wind_down() {
        let tasks = Tasks::new();
        tasks.spawn_until_stopped("refresh", std::future::pending());
        let (wound_down, was_wound_down) = tokio::sync::oneshot::channel();
        tasks.spawn("enqueuer", |stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = wound_down.send(());
        });
        assert!(!tasks.is_stopping());
        assert_eq!(tasks.stop_and_wait(Duration::from_secs(5)).await, Ok(()));
        assert!(tasks.is_stopping());
        assert_eq!(was_wound_down.await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_past_the_deadline_is_named() {
        let tasks = Tasks::new();
        tasks.spawn("stuck", |_stop| std::future::pending());
        tasks.spawn("stuck", |_stop| std::future::pending());
        tasks.spawn_until_stopped("refresh", std::future::pending());
        let late = tasks.stop_and_wait(Duration::from_secs(1)).await;
        assert_eq!(late, Err(StillRunning(vec!["stuck ×2".to_owned()])));
    }
}
