//! Garbage collections on the importers: one runs on the first importer in turn that accepts it.

use ferry_proto::importer::v1::{CollectGarbageEvent, CollectGarbageRequest};

use super::{ImporterError, ImporterPool};

/// A collection an importer accepted: its events as they come.
#[derive(Debug)]
pub struct OpenCollection {
    /// The importer's URL.
    pub importer: String,
    /// Its events (candidates, progress, then the summary).
    pub events: tonic::Streaming<CollectGarbageEvent>,
}

impl ImporterPool {
    /// Starts a collection on the next importer in turn. An importer that cannot be reached or
    /// runs a collection already (`RESOURCE_EXHAUSTED`) is passed over for the next; when every
    /// one was, the last reason is returned. Any other refusal (`INVALID_ARGUMENT`: a window not
    /// longer than its step time limits) is returned at once.
    pub async fn collect_garbage(
        &self,
        older_than_secs: u64,
        dry_run: bool,
    ) -> Result<OpenCollection, ImporterError> {
        let mut last = ImporterError::none_configured();
        for member in self.members_in_turn() {
            let request = CollectGarbageRequest {
                older_than_secs,
                dry_run,
            };
            let mut client = member.client.clone();
            match client.collect_garbage(request).await {
                Ok(response) => {
                    return Ok(OpenCollection {
                        importer: member.url.clone(),
                        events: response.into_inner(),
                    });
                }
                Err(status) => match ImporterError::from(status) {
                    error @ (ImporterError::Unreachable(_)
                    | ImporterError::Refused {
                        code: tonic::Code::ResourceExhausted,
                        ..
                    }) => last = error,
                    error => return Err(error),
                },
            }
        }
        Err(last)
    }
}
