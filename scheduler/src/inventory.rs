//! The inventory: every repository in the bucket (found by [`ferry_shared::walk`]) registered
//! in the scheduler database, in batches.

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::scheduler::v1::InventoryProgress;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::storage::{BlobStore, StorageError};
use ferry_shared::walk::{Found, RepositoryWalk};

use crate::store::{NewRepository, SchedulerStore};

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
/// (`done` set).
pub async fn run(
    storage: Arc<dyn BlobStore>,
    store: &SchedulerStore,
    project_segments: usize,
    mut progress: impl FnMut(&InventoryProgress),
) -> Result<InventoryProgress, InventoryError> {
    let started = Instant::now();
    let mut report = InventoryProgress::default();
    let mut batch: Vec<NewRepository> = Vec::with_capacity(BATCH);
    let mut walk = RepositoryWalk::new(storage.as_ref());
    while let Some(found) = walk.next().await? {
        report.repositories_found += 1;
        match found {
            Found::Repository(path) => batch.push(new_repository(&path, project_segments)),
            Found::Invalid(error) => {
                tracing::warn!(%error, "skipping a directory that is not a valid repository path");
            }
        }
        if batch.len() >= BATCH {
            report.list_calls = walk.list_calls();
            flush(store, &mut batch, &mut report, started).await?;
            progress(&report);
        }
    }
    report.list_calls = walk.list_calls();
    flush(store, &mut batch, &mut report, started).await?;
    if report.repositories_registered > 0 {
        store.refresh_statistics().await?;
    }
    report.done = true;
    Ok(report)
}

async fn flush(
    store: &SchedulerStore,
    batch: &mut Vec<NewRepository>,
    report: &mut InventoryProgress,
    started: Instant,
) -> Result<(), sqlx::Error> {
    if !batch.is_empty() {
        let registered = store.register(batch).await?;
        report.repositories_registered += registered.repositories;
        report.projects_registered += registered.projects;
        batch.clear();
    }
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(())
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
