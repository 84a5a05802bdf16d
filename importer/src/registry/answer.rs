//! Responses of the registry endpoint: the OCI error codes with their JSON bodies, and the
//! headers every answer carries.

use bytes::Bytes;
use futures::TryStreamExt;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;

use ferry_shared::storage::ByteStream;

/// The error type of a response body: a storage error in the middle of a blob aborts the
/// response.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: whole (JSON, manifests) or streamed from storage (blobs).
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// The header naming the code path that answered: `old` (the old storage layout) or `new` (the
/// metadata database and the `gitlab/` blobs).
pub const CODE_PATH_HEADER: &str = "ferry-code-path";

/// A request the registry refuses or cannot answer, with the OCI Distribution error code it
/// answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No such repository.
    #[error("repository name not known to registry: {0}")]
    NameUnknown(String),
    /// No such manifest in the repository.
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// The manifest is an OCI manifest or index and the client's `Accept` does not list its
    /// type: the distribution registry answers `MANIFEST_UNKNOWN` with this reason.
    #[error("{0}")]
    ManifestNotAccepted(&'static str),
    /// No such blob in the repository.
    #[error("blob unknown to registry: {0}")]
    BlobUnknown(String),
    /// The repository name breaks the grammar.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The digest is not `sha256:` and 64 lowercase hex digits.
    #[error("provided digest did not match uploaded content")]
    DigestInvalid,
    /// The tag breaks the grammar.
    #[error("invalid tag: {0}")]
    TagInvalid(String),
    /// `n` is not a number in 1..=1000.
    #[error("invalid number of results requested: n={0} (1 to 1000)")]
    PaginationNumberInvalid(String),
    /// A write, or an upload: this registry only serves pulls.
    #[error("the operation is unsupported: this registry is read-only")]
    Unsupported,
    /// Tokens are configured and the request carries none that is accepted.
    #[error("authentication required")]
    Unauthorized,
    /// No endpoint of the API has this path.
    #[error("no such endpoint")]
    NotFound,
    /// Storage or the database failed; the details are in the log.
    #[error("the registry could not read its storage; try again")]
    Unavailable,
}

impl RegistryError {
    /// The status and the OCI error code.
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            Self::ManifestUnknown(_) | Self::ManifestNotAccepted(_) => {
                (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
            }
            Self::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            Self::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            Self::DigestInvalid => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            Self::TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            Self::PaginationNumberInvalid(_) => {
                (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID")
            }
            Self::Unsupported => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        }
    }

    /// The response: the status, and `{"errors":[{"code","message","detail"}]}` as the
    /// specification words it (no body for a HEAD request).
    pub fn response(&self, head: bool) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({
            "errors": [{"code": code, "message": self.to_string(), "detail": null}]
        })
        .to_string();
        let mut response = bytes_response(status, "application/json", Bytes::from(body), head);
        if matches!(self, Self::Unauthorized) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ferry\""),
            );
        }
        response
    }
}

/// Logs a failure to read storage or the database and answers `UNAVAILABLE` without its
/// details.
pub fn unavailable(error: &dyn std::fmt::Display) -> RegistryError {
    tracing::warn!(%error, "registry: reading failed");
    RegistryError::Unavailable
}

/// A response with a whole body of `content_type` (its headers only, for a HEAD request).
pub fn bytes_response(
    status: StatusCode,
    content_type: &str,
    bytes: Bytes,
    head: bool,
) -> Response<Body> {
    let length = bytes.len();
    let body = if head {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    };
    with_length(status, content_type, length as u64, body)
}

/// A response streaming `stream`, whose length is known (no body for a HEAD request).
pub fn stream_response(
    content_type: &str,
    length: u64,
    stream: Option<ByteStream>,
) -> Response<Body> {
    let body = match stream {
        Some(stream) => StreamBody::new(
            stream
                .map_ok(Frame::data)
                .map_err(|error| Box::new(error) as BodyError),
        )
        .boxed_unsync(),
        None => Empty::new().map_err(|never| match never {}).boxed_unsync(),
    };
    with_length(StatusCode::OK, content_type, length, body)
}

fn with_length(status: StatusCode, content_type: &str, length: u64, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_carry_the_spec_s_body() {
        let response = RegistryError::ManifestUnknown("latest".into()).response(false);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert_eq!(json["errors"][0]["message"], "manifest unknown: latest");

        let head = RegistryError::Unauthorized.response(true);
        assert_eq!(head.status(), StatusCode::UNAUTHORIZED);
        assert!(head.headers().contains_key(header::WWW_AUTHENTICATE));
        let length: usize = head.headers()[header::CONTENT_LENGTH]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("number");
        assert!(length > 0, "a HEAD answer states the GET's length");
        let body = head.into_body().collect().await.expect("body").to_bytes();
        assert!(body.is_empty());
    }
}
