//! The scheduler's API errors, mapped to gRPC in one place.

use thiserror::Error;

use ferry_shared::error::ErrorCode;

use crate::inventory::InventoryError;

/// Why a scheduler API call failed.
#[derive(Debug, Error)]
pub enum SchedulerError {
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The repository's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A peer (an importer) is unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// No such repository.
    #[error("repository {0} is not registered")]
    NotFound(String),
    /// No background migration has this name.
    #[error("background migration {0} does not exist")]
    UnknownBackgroundMigration(String),
    /// The thing to create exists and is still in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// The scheduler database failed.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The inventory failed.
    #[error("inventory: {0}")]
    Inventory(#[from] InventoryError),
    /// A state rebuild failed.
    #[error("rebuild: {0}")]
    Rebuild(#[from] crate::rebuild::RebuildError),
}

impl From<crate::enqueue::EnqueueError> for SchedulerError {
    fn from(error: crate::enqueue::EnqueueError) -> Self {
        match error {
            crate::enqueue::EnqueueError::Database(error) => SchedulerError::Database(error),
            stopped @ crate::enqueue::EnqueueError::Stopped => {
                SchedulerError::Unavailable(stopped.to_string())
            }
        }
    }
}

impl SchedulerError {
    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            SchedulerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            SchedulerError::NotFound(_) | SchedulerError::UnknownBackgroundMigration(_) => {
                ErrorCode::NotFound
            }
            SchedulerError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            SchedulerError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            SchedulerError::Unavailable(_) => ErrorCode::Unavailable,
            SchedulerError::Database(_)
            | SchedulerError::Redis(_)
            | SchedulerError::Inventory(_) => ErrorCode::Unavailable,
            // An importer that refuses the batch (a version without it, a bad answer) is not
            // going to change its mind: retrying does not help.
            SchedulerError::Rebuild(crate::rebuild::RebuildError::Importers(
                crate::importers::ImporterError::Refused { .. },
            )) => ErrorCode::FailedPrecondition,
            SchedulerError::Rebuild(_) => ErrorCode::Unavailable,
        }
    }
}

impl From<SchedulerError> for tonic::Status {
    fn from(error: SchedulerError) -> Self {
        error.code().into_status(error.to_string())
    }
}
