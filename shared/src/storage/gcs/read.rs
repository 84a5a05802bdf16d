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
        let crc32c = crc32c_of(response.headers());
        let version = (response.headers().get("x-goog-generation"))
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
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
            crc32c,
            version,
            // The download's headers do not say when the generation was created.
            created: None,
        };
        Ok(Some(ObjectReader::sized(meta, body)))
    }
}

/// The CRC32C an answer's `x-goog-hash` headers carry (`crc32c=<base64>`, beside `md5=`), in the
/// JSON API's encoding.
fn crc32c_of(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all("x-goog-hash")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|part| part.trim().strip_prefix("crc32c=").map(str::to_owned))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::crc32c_of;

    #[test]
    fn the_crc32c_is_read_from_either_form_of_x_goog_hash() {
        let mut one = HeaderMap::new();
        one.insert(
            "x-goog-hash",
            HeaderValue::from_static("crc32c=n03x6A==,md5=Ojk9c3dhfxgoKVVHYwFbHQ=="),
        );
        assert_eq!(crc32c_of(&one).as_deref(), Some("n03x6A=="));
        let mut two = HeaderMap::new();
        two.append(
            "x-goog-hash",
            HeaderValue::from_static("md5=Ojk9c3dhfxgoKVVHYwFbHQ=="),
        );
        two.append("x-goog-hash", HeaderValue::from_static("crc32c=n03x6A=="));
        assert_eq!(crc32c_of(&two).as_deref(), Some("n03x6A=="));
        assert_eq!(crc32c_of(&HeaderMap::new()), None);
    }
}
