//! The server-side copy (`objects.rewrite`), requested by hand: `gcloud-storage` 1.3's
//! `RewriteObjectRequest` has no `ifGenerationMatch`, and without it a copy could replace an
//! object another importer published meanwhile.

use serde::Deserialize;

use super::request::error_message;
use super::{Connection, GcsStore, error_chain};
use crate::storage::StorageError;

/// The destination a finished rewrite made.
#[derive(Debug)]
pub(super) struct Copied {
    /// Its size in bytes.
    pub(super) size: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RewriteResponse {
    done: bool,
    #[serde(default)]
    rewrite_token: Option<String>,
    resource: Option<Resource>,
}

/// The field of the new object the copy needs (GCS sends 64-bit numbers as strings).
#[derive(Deserialize)]
struct Resource {
    size: String,
}

impl GcsStore {
    /// Rewrites the object `src_name` to `dst_name` unless `dst_name` exists: `Ok(None)` when
    /// it does (HTTP 412 on `ifGenerationMatch=0`).
    pub(super) async fn rewrite(
        &self,
        connection: &Connection,
        src: &str,
        src_name: &str,
        dst_name: &str,
    ) -> Result<Option<Copied>, StorageError> {
        let url = connection.api_url([
            "b",
            &self.bucket,
            "o",
            src_name,
            "rewriteTo",
            "b",
            &self.bucket,
            "o",
            dst_name,
        ])?;
        let mut rewrite_token: Option<String> = None;
        loop {
            let mut call = url.clone();
            call.query_pairs_mut().append_pair("ifGenerationMatch", "0");
            if let Some(token) = &rewrite_token {
                call.query_pairs_mut().append_pair("rewriteToken", token);
            }
            let request = (connection.http.post(call))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body("{}");
            let request = connection.authorize(src, request).await?;
            let response = (request.send().await).map_err(|error| self.http_error(src, error))?;
            let status = response.status();
            let body = (response.bytes().await).map_err(|error| self.http_error(src, error))?;
            if status.as_u16() == 412 {
                return Ok(None);
            }
            if !status.is_success() {
                return Err(self.status_error(src, status.as_u16(), error_message(&body)));
            }
            let answer: RewriteResponse =
                serde_json::from_slice(&body).map_err(|error| StorageError::Io {
                    key: src.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("unexpected rewrite answer: {}", error_chain(&error)),
                    ),
                })?;
            let bad_answer = |what: &str| StorageError::Io {
                key: src.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
            };
            if !answer.done {
                // fake-gcs-server sends `"rewriteToken": ""` when done; GCS omits it.
                match answer.rewrite_token.filter(|token| !token.is_empty()) {
                    Some(token) => rewrite_token = Some(token),
                    None => return Err(bad_answer("rewrite not done and no token to continue")),
                }
                continue;
            }
            let resource =
                (answer.resource).ok_or_else(|| bad_answer("rewrite done, no object"))?;
            let size = (resource.size.parse()).map_err(|_| bad_answer("rewrite done, bad size"))?;
            return Ok(Some(Copied { size }));
        }
    }
}
