//! Discovering every repository in the bucket without holding the listing in memory.
//!
//! The walk is depth-first over delimited listings of `docker/registry/v2/repositories/`: a
//! directory holding `_manifests/` is a repository; other `_`-prefixed directories (`_layers`,
//! `_uploads`) are its data; anything else is descended into, since repositories nest. Memory is
//! bounded by depth × one listing page.

use std::sync::Arc;
use std::time::Instant;

use ferry_proto::scheduler::v1::InventoryProgress;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::layout::REPOSITORIES_PREFIX;
use ferry_shared::storage::{BlobStore, ListOptions, StorageError};

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

struct Frame {
    prefix: String,
    page_token: Option<String>,
    pending: std::vec::IntoIter<String>,
    exhausted: bool,
}

impl Frame {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            page_token: None,
            pending: Vec::new().into_iter(),
            exhausted: false,
        }
    }
}

/// Walks the bucket and registers what it finds, calling `progress` after every batch; the
/// returned report is the final one (`done` set).
pub async fn run(
    storage: Arc<dyn BlobStore>,
    store: &SchedulerStore,
    project_segments: usize,
    mut progress: impl FnMut(&InventoryProgress),
) -> Result<InventoryProgress, InventoryError> {
    let started = Instant::now();
    let mut report = InventoryProgress::default();
    let mut batch: Vec<NewRepository> = Vec::with_capacity(BATCH);
    let mut stack = vec![Frame::new(REPOSITORIES_PREFIX.to_owned())];
    while let Some(frame) = stack.last_mut() {
        if let Some(child) = frame.pending.next() {
            let name = child[frame.prefix.len()..].trim_end_matches('/');
            if name == "_manifests" {
                let path = frame.prefix[REPOSITORIES_PREFIX.len()..].trim_end_matches('/');
                report.repositories_found += 1;
                match RepositoryPath::parse(path) {
                    Ok(path) => batch.push(new_repository(&path, project_segments)),
                    Err(error) => {
                        tracing::warn!(%error, "skipping a directory that is not a valid repository path")
                    }
                }
                if batch.len() >= BATCH {
                    flush(store, &mut batch, &mut report, started).await?;
                    progress(&report);
                }
            } else if !name.starts_with('_') {
                stack.push(Frame::new(child));
            }
            continue;
        }
        if frame.exhausted {
            stack.pop();
            continue;
        }
        let options = ListOptions {
            delimited: true,
            page_token: frame.page_token.take(),
            max_results: 1000,
        };
        let page = storage.list(&frame.prefix, &options).await?;
        report.list_calls += 1;
        frame.exhausted = page.next_page_token.is_none();
        frame.page_token = page.next_page_token;
        frame.pending = page.prefixes.into_iter();
    }
    flush(store, &mut batch, &mut report, started).await?;
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
