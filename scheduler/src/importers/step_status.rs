//! What the importers say of one step, for the guard.

use ferry_proto::common::v1::MigrationStatus;
use ferry_proto::importer::v1::{GetImportStatusRequest, GetImportStatusResponse};
use ferry_shared::step::{MaybeStep, Step};

use super::{ImporterError, ImporterPool, quick};

/// A step's status as the importers report it, for the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepStatus {
    /// The repository's status in the metadata database.
    pub status: MigrationStatus,
    /// The step that status belongs to (`None`: no numbered step).
    pub step: Option<Step>,
    /// Whether a live importer runs the step asked about.
    pub running: bool,
    /// The status's detail (the failure reason, if any).
    pub detail: String,
}

impl ImporterPool {
    /// Step `step` of the repository as the importers see it, for the guard. With the importer
    /// that accepted the step known (`recorded`), its answer decides whether the step runs; an
    /// error when it cannot be reached. Otherwise every importer is asked at once, and the step
    /// runs if any of them runs it; when none does but one could not be asked, the answer is
    /// `UNAVAILABLE`: nobody can tell whether the unreachable one runs it. An answer naming a
    /// step out of range is a refusal (`OUT_OF_RANGE`).
    pub async fn step_status(
        &self,
        recorded: Option<&str>,
        path: &str,
        step: Option<Step>,
    ) -> Result<StepStatus, ImporterError> {
        let runs = |answer: &GetImportStatusResponse| {
            Step::from_wire(answer.running_step).is_ok_and(|running| running == step)
        };
        let from = |answer: GetImportStatusResponse, running: bool| {
            let step = Step::from_wire(answer.step).map_err(|e| ImporterError::Refused {
                code: tonic::Code::OutOfRange,
                message: format!("the importer's status names {e}"),
            })?;
            Ok(StepStatus {
                status: MigrationStatus::try_from(answer.status).unwrap_or_default(),
                step,
                running,
                detail: answer.detail,
            })
        };
        if recorded.is_some_and(|url| self.client(url).is_some()) {
            let answer = self.status(recorded, path).await?;
            let running = runs(&answer);
            return from(answer, running);
        }
        let members = self.members();
        let answers = futures::future::join_all(members.iter().map(|m| {
            let mut client = m.client.clone();
            let request = quick(GetImportStatusRequest {
                path: path.to_owned(),
            });
            async move { client.get_import_status(request).await }
        }))
        .await;
        let mut seen = None;
        let mut unreachable = None;
        for answer in answers {
            match answer.map(tonic::Response::into_inner) {
                Ok(answer) if runs(&answer) => return from(answer, true),
                Ok(answer) => seen = Some(answer),
                Err(status) => match ImporterError::from(status) {
                    ImporterError::Unreachable(message) => unreachable = Some(message),
                    refused => return Err(refused),
                },
            }
        }
        match (unreachable, seen) {
            (Some(message), _) => Err(ImporterError::Unreachable(format!(
                "no importer recorded for step {}, and one could not be asked: {message}",
                step.wire()
            ))),
            (None, Some(answer)) => from(answer, false),
            (None, None) => Err(ImporterError::none_configured()),
        }
    }
}
