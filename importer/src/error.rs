//! The importer's errors: API refusals (mapped to gRPC in one place) and the reasons a step fails.

use std::time::Duration;

use thiserror::Error;

use ferry_shared::error::ErrorCode;
use ferry_shared::ids::{Digest, IdError};
use ferry_shared::step::{MaybeStep, Step, StepNumberError};
use ferry_shared::storage::StorageError;

use crate::manifest::ManifestError;

/// Why `StartImport` or `GetImportStatus` refused a request. Codes mirror the registry's import
/// API (documented per variant as the HTTP status it answered with).
#[derive(Debug, Error)]
pub enum ApiError {
    /// 400: bad path or import type.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// 404: the repository is not in old storage (start) or unknown (status).
    #[error("repository {0} not found")]
    NotFound(String),
    /// 425: a pre-import of this repository is running.
    #[error("pre-import of {0} is already in progress")]
    PreImportInProgress(String),
    /// 409: a final import of this repository is running.
    #[error("final import of {0} is already in progress")]
    ImportInProgress(String),
    /// 424: a final import needs a completed pre-import first.
    #[error("final import of {path} refused: {reason}")]
    PreImportRequired {
        /// The repository.
        path: String,
        /// What the last pre-import did instead of completing.
        reason: &'static str,
    },
    /// 429: this importer runs its maximum number of imports.
    #[error("importer is running its maximum of {0} concurrent imports")]
    TooManyImports(usize),
    /// This importer runs its maximum of verifications (as many as its import slots).
    #[error("importer is running its maximum of {0} concurrent verifications")]
    TooManyVerifications(usize),
    /// A garbage collection runs on this importer already.
    #[error("a garbage collection runs on this importer already")]
    CollectionRunning,
    /// A start naming a step no newer than the repository's last one: a late or repeated start
    /// of a step the scheduler has given up, or one canceled before it arrived.
    #[error("step {step} of {path} is stale: the repository is at step {current}")]
    StaleStep {
        /// The repository.
        path: String,
        /// The step the start named.
        step: Step,
        /// The repository's last step.
        current: Step,
    },
    /// A start from a scheduler whose lease was taken over: the repository was already started
    /// with a higher fencing token.
    #[error("stale fencing token {token} for {path}: a step was started with token {seen}")]
    StaleFence {
        /// The repository.
        path: String,
        /// The token the start carried.
        token: u64,
        /// The highest token seen for the repository.
        seen: u64,
    },
    /// 400: nothing to cancel (no step in progress, a native repository, a completed final
    /// import, or a newer step than the one named).
    #[error("import of {path} cannot be canceled: its status is {status} (step {})", .step.wire())]
    CannotCancel {
        /// The repository.
        path: String,
        /// Its current status.
        status: &'static str,
        /// The step that status belongs to (`None`: no numbered step; 0 in the message).
        step: Option<Step>,
    },
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] sqlx::Error),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The importer is shutting down and starts nothing new.
    #[error("importer is shutting down")]
    ShuttingDown,
}

impl From<StepNumberError> for ApiError {
    /// A request's step out of range.
    fn from(error: StepNumberError) -> Self {
        ApiError::InvalidArgument(format!("step: {error}"))
    }
}

impl ApiError {
    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::PreImportInProgress(_) | ApiError::ImportInProgress(_) => {
                ErrorCode::AlreadyExists
            }
            ApiError::PreImportRequired { .. }
            | ApiError::CannotCancel { .. }
            | ApiError::StaleFence { .. }
            | ApiError::StaleStep { .. } => ErrorCode::FailedPrecondition,
            ApiError::TooManyImports(_)
            | ApiError::TooManyVerifications(_)
            | ApiError::CollectionRunning => ErrorCode::ResourceExhausted,
            ApiError::Database(_) | ApiError::Storage(_) | ApiError::ShuttingDown => {
                ErrorCode::Unavailable
            }
        }
    }
}

/// How long a busy importer asks its callers to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let retry_after = match &error {
            ApiError::TooManyImports(_)
            | ApiError::TooManyVerifications(_)
            | ApiError::ShuttingDown => Some(BUSY_RETRY_AFTER),
            _ => None,
        };
        match retry_after {
            Some(delay) => error
                .code()
                .into_status_retry_after(error.to_string(), delay),
            None => error.code().into_status(error.to_string()),
        }
    }
}

/// Why an import step failed; recorded as the repository's `migration_error` and reported to
/// the scheduler.
#[derive(Debug, Error)]
pub enum StepError {
    /// A tag directory has a name the registry could never have written.
    #[error("invalid tag name {0:?}")]
    InvalidTag(String),
    /// A tag's `current/link` does not hold a digest.
    #[error("tag {tag}: broken current link: {source}")]
    BrokenTagLink {
        /// The tag.
        tag: String,
        /// What is wrong with the link.
        source: IdError,
    },
    /// A manifest's blob data is missing from old storage.
    #[error("manifest {digest} ({referrer}) is missing from storage")]
    ManifestMissing {
        /// The manifest digest.
        digest: Digest,
        /// Who points at it ("tag v1", "index sha256:...").
        referrer: String,
    },
    /// A manifest's stored bytes do not hash to its digest.
    #[error("manifest {digest}: stored content hashes to {actual}")]
    ManifestDigestMismatch {
        /// The digest the manifest is stored under.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// A manifest is larger than the importer reads into memory.
    #[error("manifest {digest} is larger than the {limit}-byte limit")]
    ManifestTooLarge {
        /// The manifest digest.
        digest: Digest,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest cannot be parsed or is of an unsupported kind.
    #[error("manifest {digest}: {source}")]
    BadManifest {
        /// The manifest digest.
        digest: Digest,
        /// The parse failure.
        source: ManifestError,
    },
    /// An index references another index.
    #[error("manifest {digest}: nested index {child} is not supported")]
    NestedIndex {
        /// The outer index.
        digest: Digest,
        /// The nested index.
        child: Digest,
    },
    /// A config or layer blob is missing from old storage.
    #[error("blob {digest} referenced by manifest {manifest} is missing from storage")]
    BlobMissing {
        /// The blob.
        digest: Digest,
        /// A manifest that references it.
        manifest: Digest,
    },
    /// A config or layer blob does not hash to its digest, or a config is larger than it can be.
    #[error("blob {digest} referenced by manifest {manifest} is corrupt: {detail}")]
    BlobCorrupt {
        /// The blob.
        digest: Digest,
        /// A manifest that references it.
        manifest: Digest,
        /// What differs.
        detail: String,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] sqlx::Error),
    /// The verification pass found the database or the copied blobs differ from the source.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The step ran past its time limit.
    #[error("step timed out after {0:?}")]
    Timeout(Duration),
    /// The step was canceled (the repository's status changed under it).
    #[error("import was canceled")]
    Canceled,
    /// The importer shut down while the step ran.
    #[error("shutdown")]
    Shutdown,
}

impl StepError {
    /// The reason as stored in `repositories.migration_error` (at most 1024 characters).
    pub fn reason(&self) -> String {
        let mut reason = self.to_string();
        if reason.len() > 1024 {
            let mut cut = 1021;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push_str("...");
        }
        reason
    }
}
