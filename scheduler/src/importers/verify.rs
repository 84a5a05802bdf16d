//! Verifications on the importers: each repository's comparison runs on one importer, the
//! importers taking turns, an importer whose verification slots are full passed over.

use ferry_proto::common::v1::Difference;
use ferry_proto::importer::v1::verify_repository_event::Event;
use ferry_proto::importer::v1::{VerifyRepositoryRequest, VerifyRepositorySummary};

use super::{ImporterError, ImporterPool};

/// One repository's verification, as an importer reported it.
#[derive(Debug, Clone, Default)]
pub struct ImporterVerification {
    /// The differences it listed.
    pub differences: Vec<Difference>,
    /// Its summary (counts, the number of differences, a failure).
    pub summary: VerifyRepositorySummary,
    /// The importer that made it.
    pub importer: String,
}

impl ImporterPool {
    /// Verifies the repository on the next importer in turn. An importer that is full
    /// (`RESOURCE_EXHAUSTED`) or cannot be reached is passed over for the next; when every one
    /// was, the last reason is returned and the caller decides when to try again. An importer
    /// lost in the middle of a verification counts as unreachable.
    pub async fn verify(
        &self,
        path: &str,
        deep: bool,
    ) -> Result<ImporterVerification, ImporterError> {
        let mut last = ImporterError::none_configured();
        for member in self.members_in_turn() {
            let request = VerifyRepositoryRequest {
                path: path.to_owned(),
                deep,
            };
            let mut client = member.client.clone();
            let result = async {
                let mut events = client.verify_repository(request).await?.into_inner();
                let mut verification = ImporterVerification {
                    importer: member.url.clone(),
                    ..ImporterVerification::default()
                };
                while let Some(event) = events.message().await? {
                    match event.event {
                        Some(Event::Difference(difference)) => {
                            verification.differences.push(difference);
                        }
                        Some(Event::Done(summary)) => {
                            verification.summary = summary;
                            return Ok(verification);
                        }
                        None => {}
                    }
                }
                Err(tonic::Status::unavailable(
                    "the importer ended the verification without a summary",
                ))
            }
            .await;
            match result.map_err(ImporterError::from) {
                Ok(verification) => return Ok(verification),
                Err(error) => match &error {
                    ImporterError::Unreachable(_) => last = error,
                    ImporterError::Refused {
                        code: tonic::Code::ResourceExhausted,
                        ..
                    } => last = error,
                    ImporterError::Refused { .. } => return Err(error),
                },
            }
        }
        Err(last)
    }
}
