//! The inventory: every repository in the bucket (found by [`ferry_shared::walk::ParallelWalk`])
//! registered in the scheduler database, in batches. The walk goes on listing while a batch is
//! being registered, filling the next one.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;

use ferry_proto::scheduler::v1::InventoryProgress;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::storage::{BlobStore, StorageError};
use ferry_shared::walk::{Found, LISTINGS_IN_FLIGHT, ParallelWalk};

use crate::store::{NewRepository, Registered, SchedulerStore};

/// Repositories registered per database round trip.
const BATCH: usize = 500;

/// An inventory failure.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Listing the bucket failed.
    #[error("listing storage: {0}")]
    Storage(#[from] StorageError),
    /// Registering failed.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Walks the bucket and registers what it finds, calling `progress` after every batch, then
/// refreshes the planner's statistics if anything was new; the returned report is the final one
/// (`done` set). The walk keeps [`LISTINGS_IN_FLIGHT`] listings running, and goes on while a
/// batch is registered, until the next batch is full.
pub async fn run(
    storage: Arc<dyn BlobStore>,
    store: &SchedulerStore,
    project_segments: usize,
    mut progress: impl FnMut(&InventoryProgress),
) -> Result<InventoryProgress, InventoryError> {
    let started = Instant::now();
    let mut report = InventoryProgress::default();
    let mut walk = ParallelWalk::new(storage.as_ref(), LISTINGS_IN_FLIGHT);
    let mut next_batch: Vec<NewRepository> = Vec::with_capacity(BATCH);
    let mut walk_over = false;
    loop {
        while !walk_over && next_batch.len() < BATCH {
            walk_over =
                !take_next(&mut walk, &mut next_batch, &mut report, project_segments).await?;
        }
        if walk_over {
            break;
        }
        let batch = std::mem::replace(&mut next_batch, Vec::with_capacity(BATCH));
        let registering = store.register(&batch);
        tokio::pin!(registering);
        let registered = loop {
            tokio::select! {
                registered = &mut registering => break registered?,
                more = take_next(&mut walk, &mut next_batch, &mut report, project_segments),
                    if !walk_over && next_batch.len() < BATCH => walk_over = !more?,
            }
        };
        record_batch(&mut report, registered, walk.list_calls(), started);
        progress(&report);
    }
    let registered = if next_batch.is_empty() {
        Registered::default()
    } else {
        store.register(&next_batch).await?
    };
    record_batch(&mut report, registered, walk.list_calls(), started);
    if report.repositories_registered > 0 {
        store.refresh_statistics().await?;
    }
    report.done = true;
    Ok(report)
}

/// Pulls the next repository from `walk` into `batch` (an invalid path is counted and logged,
/// not registered); `false` once the walk is over. Cancel-safe: nothing is lost when the future
/// is dropped before it is ready.
async fn take_next(
    walk: &mut ParallelWalk<'_>,
    batch: &mut Vec<NewRepository>,
    report: &mut InventoryProgress,
    project_segments: usize,
) -> Result<bool, StorageError> {
    let Some(found) = walk.next().await else {
        return Ok(false);
    };
    let found = found?;
    report.repositories_found += 1;
    match found {
        Found::Repository(path) => batch.push(new_repository(&path, project_segments)),
        Found::Invalid(error) => {
            tracing::warn!(%error, "skipping a directory that is not a valid repository path");
        }
    }
    Ok(true)
}

/// Adds what a batch registered to `report`, with the listings made and the time spent so far.
fn record_batch(
    report: &mut InventoryProgress,
    registered: Registered,
    list_calls: u64,
    started: Instant,
) {
    report.repositories_registered += registered.repositories;
    report.projects_registered += registered.projects;
    report.list_calls = list_calls;
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
}

/// The project of a repository is its first `project_segments` path segments.
pub fn new_repository(path: &RepositoryPath, project_segments: usize) -> NewRepository {
    let project_path = path.project_path(project_segments).to_owned();
    let name = path.as_str()[project_path.len()..]
        .trim_start_matches('/')
        .to_owned();
    NewRepository {
        path: path.to_string(),
        project_path,
        name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_and_name_split_at_the_configured_depth() {
        let path = RepositoryPath::parse("a/b/c/d/image").unwrap();
        let repo = new_repository(&path, 2);
        assert_eq!(
            (repo.project_path.as_str(), repo.name.as_str()),
            ("a/b", "c/d/image")
        );
        let short = RepositoryPath::parse("solo").unwrap();
        let repo = new_repository(&short, 2);
        assert_eq!(
            (repo.project_path.as_str(), repo.name.as_str()),
            ("solo", "")
        );
    }
}
