//! Deleting one generation of an object (`objects.delete` with `ifGenerationMatch`), requested by
//! hand like the rewrite, so the precondition is surely sent.

use super::request::error_message;
use super::{Connection, GcsStore};
use crate::storage::{DeleteOutcome, StorageError};

impl GcsStore {
    /// Deletes generation `version` of the object `name`: [`DeleteOutcome::Changed`] when the
    /// live generation is another one (HTTP 412), [`DeleteOutcome::Absent`] when there is none
    /// (404). A version that is not a generation number is refused as an invalid key.
    pub(super) async fn delete_generation(
        &self,
        connection: &Connection,
        key: &str,
        name: &str,
        version: &str,
    ) -> Result<DeleteOutcome, StorageError> {
        let generation: i64 = version
            .parse()
            .map_err(|_| StorageError::InvalidKey(format!("{key} (version {version:?})")))?;
        let mut url = connection.api_url(["b", &self.bucket, "o", name])?;
        url.query_pairs_mut()
            .append_pair("ifGenerationMatch", &generation.to_string());
        let request = connection
            .authorize(key, connection.http.delete(url))
            .await?;
        let response = (request.send().await).map_err(|error| self.http_error(key, error))?;
        let status = response.status().as_u16();
        let body = (response.bytes().await).map_err(|error| self.http_error(key, error))?;
        match status {
            200..=299 => Ok(DeleteOutcome::Deleted),
            404 => Ok(DeleteOutcome::Absent),
            412 => Ok(DeleteOutcome::Changed),
            _ => Err(self.status_error(key, status, error_message(&body))),
        }
    }
}
