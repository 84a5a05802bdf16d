//! Error codes shared by every Ferry service, and their one mapping onto gRPC status codes.
//!
//! Each service keeps its own `thiserror` enum; each variant names an [`ErrorCode`], and
//! [`ErrorCode::into_status`] is the only place a code becomes a `tonic::Status`.

/// The kinds of failure a Ferry API reports: a deliberately small set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed (bad path, missing field).
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// The work is already under way (a step in progress).
    AlreadyExists,
    /// The request is valid but the current state does not allow it.
    FailedPrecondition,
    /// Out of capacity: retry later.
    ResourceExhausted,
    /// A dependency (database, storage, peer) is unavailable: retry later.
    Unavailable,
    /// A bug or an unexpected failure.
    Internal,
}

impl ErrorCode {
    /// The gRPC code for this kind.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// Builds the status a service answers with.
    pub fn into_status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc_code(), message)
    }

    /// Builds the status with a `google.rpc.RetryInfo` detail saying when to try again (for
    /// `RESOURCE_EXHAUSTED` and `UNAVAILABLE` answers).
    pub fn into_status_retry_after(
        self,
        message: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> tonic::Status {
        use tonic_types::{ErrorDetails, StatusExt};
        tonic::Status::with_error_details(
            self.grpc_code(),
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        )
    }

    /// The retry delay a status carries in its `google.rpc.RetryInfo` detail, if any.
    pub fn retry_after(status: &tonic::Status) -> Option<std::time::Duration> {
        use tonic_types::StatusExt;
        status
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
    }
}
