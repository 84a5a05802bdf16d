//! Verifications on this importer: one of `max_concurrent_imports` verification slots each,
//! run in the background and streamed back.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::Instrument as _;

use ferry_proto::importer::v1::{
    VerifyRepositoryEvent, VerifyRepositorySummary, verify_repository_event::Event,
};
use ferry_shared::ids::RepositoryPath;

use super::Importer;
use crate::error::ApiError;
use crate::verify;

impl Importer {
    /// Takes a verification slot and compares the repository with its source in the
    /// background; its differences, then a summary, arrive on the returned channel. A caller
    /// that goes away stops it at once (the comparison writes nothing, so stopping anywhere is
    /// safe).
    pub(super) fn start_verification(
        &self,
        path: &str,
        deep: bool,
    ) -> Result<mpsc::Receiver<VerifyRepositoryEvent>, ApiError> {
        let path =
            RepositoryPath::parse(path).map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        if self.inner.tasks.is_stopping() {
            return Err(ApiError::ShuttingDown);
        }
        let slots = self.inner.limits.max_concurrent_imports;
        let permit = Arc::clone(&self.inner.verifications)
            .try_acquire_owned()
            .map_err(|_| ApiError::TooManyVerifications(slots))?;
        let (tx, rx) = mpsc::channel(64);
        let importer = self.clone();
        let span = tracing::info_span!("verify", repository = %path, deep);
        let concurrency = self
            .inner
            .limits
            .tag_concurrency
            .max(self.inner.limits.copy_concurrency);
        self.inner.tasks.spawn_until_stopped(
            "verify",
            async move {
                let _permit = permit;
                let inner = &importer.inner;
                let verification =
                    verify::verify_repository(&*inner.storage, &inner.db, &path, deep, concurrency);
                let report = tokio::select! {
                    report = verification => report,
                    () = tx.closed() => {
                        tracing::info!("verification stopped: its caller went away");
                        return;
                    }
                };
                tracing::info!(
                    differences = report.difference_count,
                    error = report.error.as_deref().unwrap_or(""),
                    duration_ms = report.duration_ms,
                    "repository verified"
                );
                for difference in report.differences {
                    let event = Event::Difference(difference);
                    if tx
                        .send(VerifyRepositoryEvent { event: Some(event) })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let summary = VerifyRepositorySummary {
                    differences: report.difference_count,
                    counts: Some(report.counts),
                    error: report.error.unwrap_or_default(),
                    duration_ms: report.duration_ms,
                };
                let event = Event::Done(summary);
                let _ = tx.send(VerifyRepositoryEvent { event: Some(event) }).await;
            }
            .instrument(span),
        );
        Ok(rx)
    }
}
