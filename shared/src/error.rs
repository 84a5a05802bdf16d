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
}
