//! Requests made by hand on the driver's connection pool, for what `gcloud-storage` 1.3 cannot
//! do: a rewrite with a precondition (`rewrite`), a download that keeps its headers (`read`).

use serde::Deserialize;

use super::{Connection, GcsStore};
use crate::storage::StorageError;

/// The most bytes of an error answer's body kept for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: String,
}

impl Connection {
    /// `<base>/storage/v1/<segments>`, each segment percent-encoded as one (a `/` in an object
    /// name becomes `%2F`).
    pub(super) fn api_url<'a>(
        &self,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<url::Url, StorageError> {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: self.base.clone(),
            reason,
        };
        let mut url = url::Url::parse(&format!("{}/storage/v1", self.base))
            .map_err(|err| invalid(err.to_string()))?;
        url.path_segments_mut()
            .map_err(|()| invalid("not a base URL".to_owned()))?
            .extend(segments);
        Ok(url)
    }

    /// `request` with the access token, when the store has credentials (not on an emulator).
    pub(super) async fn authorize(
        &self,
        key: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder, StorageError> {
        let Some(token_source) = &self.token else {
            return Ok(request);
        };
        let token = token_source
            .token()
            .await
            .map_err(|error| StorageError::Backend {
                key: key.to_owned(),
                status: None,
                message: format!("getting a Google access token: {error}"),
            })?;
        Ok(request.header(reqwest::header::AUTHORIZATION, token))
    }
}

/// What an error answer says: GCS's JSON `error.message`, else the body as text.
pub(super) fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(body)
        .map(|body| body.error.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}

impl GcsStore {
    /// The error an unsuccessful answer means, its message from the first 64 KiB of its body
    /// (a body that fails to arrive leaves the status alone to speak).
    pub(super) async fn answer_error(
        &self,
        key: &str,
        mut response: reqwest::Response,
    ) -> StorageError {
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        self.status_error(key, status, error_message(&body))
    }
}
