//! Repair part 2: the background migration that registers the repositories the scan found
//! missing. Its jobs cover `container_registry_data_repair_details.project_id`; for each project
//! with `missing_count > 0` in a job's range they list what the registry has under the project
//! and create the rows the scheduler lacks as already on the new platform (`import_done`,
//! reason `native_import`). Creating is idempotent, so a retried job is harmless.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::bbm::{JobRange, Work, WorkError};
use crate::importers::ImporterPool;
use crate::store::NewRepository;
use crate::store::repair::{existing_paths_on, projects_with_missing, register_native_on};

/// The work function's name (`job_signature_name`), also the migration's name.
pub const RESTORE_MISSING_REPOSITORIES: &str = "restore_missing_repositories";
/// The table and column the restore migration pages over.
pub const RESTORE_TABLE: (&str, &str) = ("container_registry_data_repair_details", "project_id");
/// Projects per restore job when the request gives none.
pub const DEFAULT_RESTORE_BATCH: i32 = 1000;

/// Most projects per listing call.
const PROJECTS_PER_LISTING: usize = 1000;

/// Registers the missing repositories of the projects in a job's range.
#[derive(Debug, Clone)]
pub struct RestoreMissingRepositories {
    importers: Arc<ImporterPool>,
}

impl RestoreMissingRepositories {
    /// The work function, asking `importers` what each project holds.
    pub fn new(importers: Arc<ImporterPool>) -> Self {
        Self { importers }
    }
}

#[async_trait]
impl Work for RestoreMissingRepositories {
    fn name(&self) -> &'static str {
        RESTORE_MISSING_REPOSITORIES
    }

    async fn run(&self, tx: &mut PgConnection, range: &JobRange) -> Result<(), WorkError> {
        let projects = projects_with_missing(tx, range.start, range.end).await?;
        let mut created = 0;
        for chunk in projects.chunks(PROJECTS_PER_LISTING) {
            let listing = super::sub_repositories(&self.importers, chunk, 10_000)
                .await
                .map_err(|error| WorkError::Failed(format!("listing sub-repositories: {error}")))?;
            let all: Vec<String> = listing.found.iter().flatten().cloned().collect();
            let existing: HashSet<String> =
                existing_paths_on(tx, &all).await?.into_iter().collect();
            let missing: Vec<NewRepository> = chunk
                .iter()
                .zip(&listing.found)
                .flat_map(|(project, found)| {
                    found
                        .iter()
                        .filter(|path| !existing.contains(*path))
                        .map(|path| NewRepository {
                            name: path
                                .strip_prefix(&project.full_path)
                                .unwrap_or(path)
                                .trim_start_matches('/')
                                .to_owned(),
                            project_path: project.full_path.clone(),
                            path: path.clone(),
                        })
                })
                .collect();
            if !missing.is_empty() {
                created += register_native_on(tx, &missing).await?;
            }
        }
        tracing::info!(
            start = range.start,
            end = range.end,
            projects = projects.len(),
            created,
            "missing repositories restored"
        );
        Ok(())
    }
}
