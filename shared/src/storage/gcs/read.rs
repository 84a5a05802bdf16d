//! Streamed reads: one `GET .../o/<name>?alt=media`, made by hand. `gcloud-storage`'s
//! `download_streamed_object` streams the bytes too, but drops the answer's headers, so the size
//! would cost a second request (the object's metadata, and a generation to pin the download to);
//! the answer's `Content-Length` gives it in the same one.

use futures::StreamExt as _;

use super::{GcsStore, error_chain};
use crate::storage::{ObjectMeta, ObjectReader, StorageError};

impl GcsStore {
    /// Opens `key` with one request: its status says whether the object exists, its
    /// `Content-Length` the size, its body the bytes, passed on as hyper receives them (the
    /// connection's buffer is all that is held; an unread body holds the connection back).
    ///
    /// An object stored gzip-encoded (`Content-Encoding: gzip` metadata) is served decompressed
    /// without a `Content-Length` (GCS's decompressive transcoding): it is refused, since its
    /// size is unknown. Registry blobs are never stored so.
    pub(super) async fn open_stream(
        &self,
        key: &str,
    ) -> Result<Option<ObjectReader>, StorageError> {
        let name = self.object_name(key)?;
        let connection = self.connection().await?;
        let mut url = connection.api_url(["b", &self.bucket, "o", &name])?;
        url.query_pairs_mut().append_pair("alt", "media");
        let request = (connection.authorize(key, connection.http.get(url))).await?;
        let response = (request.send().await).map_err(|error| self.http_error(key, error))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.answer_error(key, response).await);
        }
        let size = response.content_length().ok_or_else(|| StorageError::Io {
            key: key.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the object came without a Content-Length (stored gzip-encoded and served \
                 decompressed?): its size is unknown",
            ),
        })?;
        let owned_key = key.to_owned();
        // The answer has come: a failure now is the connection's (cut, timed out), worth a new
        // attempt by the caller (`status: None`).
        let body = response.bytes_stream().map(move |chunk| {
            chunk.map_err(|error| StorageError::Backend {
                key: owned_key.clone(),
                status: None,
                message: error_chain(&error),
            })
        });
        let meta = ObjectMeta {
            key: key.to_owned(),
            size,
        };
        Ok(Some(ObjectReader::sized(meta, body)))
    }
}
