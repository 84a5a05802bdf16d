//! Verification of migrated repositories (`ferryctl verify`): the scheduler picks the
//! repositories, spreads their comparisons over the importers (which hold the storage budget and
//! the metadata database), records each outcome on the repository and reports progress.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::mpsc;

use ferry_proto::common::v1::DifferenceKind;
use ferry_proto::scheduler::v1::{
    RepositoryVerification, VerifyOutcome, VerifyProgress, VerifyRepositoriesRequest,
};
use ferry_shared::ids::RepositoryPath;

use crate::error::SchedulerError;
use crate::importers::{ImporterError, ImporterPool, ImporterVerification};
use crate::metrics::MigrationMetrics;
use crate::state::VerifyResult;
use crate::store::{SchedulerStore, VerificationRecord, VerifyTarget};

/// Repositories verified at once when the request does not say.
pub const DEFAULT_CONCURRENCY: u32 = 4;
/// Most repositories verified at once.
pub const MAX_CONCURRENCY: u32 = 64;
/// Most paths one request names.
pub const MAX_PATHS: usize = 1000;
/// Repositories read from the database at a time with `all`.
const PAGE: i64 = 500;
/// How long a verification waits for a free slot while every importer is full.
const BUSY_PATIENCE: Duration = Duration::from_secs(120);
/// Attempts on other importers when the one asked is lost.
const UNREACHABLE_ATTEMPTS: u32 = 3;

/// Which repositories to verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These.
    Paths(Vec<String>),
    /// Every `import_done` one.
    All,
}

/// A checked verification request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyRequest {
    /// Which repositories.
    pub targets: Targets,
    /// Hash every copied blob.
    pub deep: bool,
    /// Repositories verified at once.
    pub concurrency: usize,
}

impl TryFrom<VerifyRepositoriesRequest> for VerifyRequest {
    type Error = SchedulerError;

    /// Checks every field; the error names the one out of range.
    fn try_from(request: VerifyRepositoriesRequest) -> Result<Self, SchedulerError> {
        let invalid = |message: String| Err(SchedulerError::InvalidArgument(message));
        let targets = match (request.all, request.paths.len()) {
            (true, 0) => Targets::All,
            (true, _) => return invalid("paths: give paths or all, not both".into()),
            (false, 0) => return invalid("paths: give at least one path, or all".into()),
            (false, n) if n > MAX_PATHS => {
                return invalid(format!("paths: at most {MAX_PATHS}, got {n}"));
            }
            (false, _) => {
                for path in &request.paths {
                    if let Err(error) = RepositoryPath::parse(path) {
                        return invalid(format!("paths: {error}"));
                    }
                }
                Targets::Paths(request.paths)
            }
        };
        let concurrency = match request.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n if n <= MAX_CONCURRENCY => n,
            n => return invalid(format!("concurrency: {n} is not in 1..={MAX_CONCURRENCY}")),
        };
        Ok(Self {
            targets,
            deep: request.deep,
            concurrency: concurrency as usize,
        })
    }
}

/// The API's outcome of a recorded result.
pub fn outcome_of(result: VerifyResult) -> VerifyOutcome {
    match result {
        VerifyResult::Match => VerifyOutcome::Match,
        VerifyResult::Differs => VerifyOutcome::Differs,
        VerifyResult::Failed => VerifyOutcome::Failed,
    }
}

/// What a verification run needs.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Where targets come from and outcomes go.
    pub store: SchedulerStore,
    /// Where comparisons run.
    pub importers: Arc<ImporterPool>,
    /// Counts outcomes.
    pub metrics: MigrationMetrics,
}

type Progress = mpsc::Sender<Result<VerifyProgress, SchedulerError>>;

impl Verifier {
    /// Verifies what `request` names, sending one message per repository and a last one with
    /// `finished`. Stops early when the receiver goes away.
    pub async fn run(self, request: VerifyRequest, progress: Progress) {
        let started = Instant::now();
        let result = match &request.targets {
            Targets::Paths(paths) => match self.store.verify_targets(paths).await {
                Ok(targets) => {
                    let total = targets.len() as u64;
                    self.verify_all(targets, &request, total, 0, started, &progress)
                        .await
                        .map(|_| total)
                }
                Err(error) => Err(error.into()),
            },
            Targets::All => self.verify_every_done(&request, started, &progress).await,
        };
        let last = result.map(|done| VerifyProgress {
            repository: None,
            done,
            total: done,
            elapsed_ms: elapsed_ms(started),
            finished: true,
        });
        let _ = progress.send(last).await;
    }

    /// Every `import_done` repository, a page at a time. Repositories done while it runs are
    /// included when their path comes after the page being verified.
    async fn verify_every_done(
        &self,
        request: &VerifyRequest,
        started: Instant,
        progress: &Progress,
    ) -> Result<u64, SchedulerError> {
        let mut total = self.store.count_done().await?;
        let (mut done, mut after) = (0, String::new());
        loop {
            let page = self.store.done_page(&after, PAGE).await?;
            let Some(last) = page.last() else {
                return Ok(done);
            };
            after = last.path.clone();
            total = total.max(done + page.len() as u64);
            done = self
                .verify_all(page, request, total, done, started, progress)
                .await?;
        }
    }

    /// Verifies `targets`, `request.concurrency` at a time; returns `done` plus their number.
    async fn verify_all(
        &self,
        targets: Vec<VerifyTarget>,
        request: &VerifyRequest,
        total: u64,
        mut done: u64,
        started: Instant,
        progress: &Progress,
    ) -> Result<u64, SchedulerError> {
        let mut results = futures::stream::iter(targets)
            .map(|target| self.verify_one(target, request.deep))
            .buffer_unordered(request.concurrency);
        while let Some(repository) = results.next().await {
            done += 1;
            let message = VerifyProgress {
                repository: Some(repository),
                done,
                total: total.max(done),
                elapsed_ms: elapsed_ms(started),
                finished: false,
            };
            if progress.send(Ok(message)).await.is_err() {
                return Err(SchedulerError::Unavailable(
                    "the caller went away; verification stopped".into(),
                ));
            }
        }
        Ok(done)
    }

    /// Verifies one repository on the importers and records the outcome.
    async fn verify_one(&self, target: VerifyTarget, deep: bool) -> RepositoryVerification {
        let started = Instant::now();
        let mut answer = RepositoryVerification {
            path: target.path.clone(),
            ..RepositoryVerification::default()
        };
        if target.state != Some(crate::state::MigrationState::ImportDone) {
            answer.outcome = VerifyOutcome::NotMigrated.into();
            answer.error = match target.state {
                Some(state) => format!("not verified: the repository is {state}, not import_done"),
                None => "not verified: the scheduler does not know the repository".to_owned(),
            };
            return answer;
        }
        let (result, detail) = match self.ask_importers(&target.path, deep).await {
            Ok(verification) => {
                let (result, detail) = judge(&verification);
                answer.difference_count = verification.summary.differences;
                answer.counts = verification.summary.counts;
                answer.differences = verification.differences;
                answer.error = verification.summary.error;
                (result, detail)
            }
            Err(error) => {
                answer.error = format!("no importer could verify it: {error}");
                (VerifyResult::Failed, answer.error.clone())
            }
        };
        answer.outcome = outcome_of(result).into();
        answer.duration_ms = elapsed_ms(started);
        self.metrics.verified(result);
        let record = VerificationRecord {
            path: &target.path,
            step: target.step,
            result,
            differences: answer.difference_count,
            detail: &detail,
        };
        match self.store.record_verification(record).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                repository = target.path,
                "verification not recorded: the repository moved on meanwhile"
            ),
            Err(error) => {
                tracing::warn!(repository = target.path, %error, "recording a verification failed");
            }
        }
        tracing::info!(
            repository = target.path,
            outcome = result.as_str(),
            differences = answer.difference_count,
            "repository verified"
        );
        answer
    }

    /// Runs the comparison on an importer: waits while every importer is full (up to
    /// [`BUSY_PATIENCE`]), tries others when one is lost (up to [`UNREACHABLE_ATTEMPTS`]).
    async fn ask_importers(
        &self,
        path: &str,
        deep: bool,
    ) -> Result<ImporterVerification, ImporterError> {
        let patience = tokio::time::Instant::now() + BUSY_PATIENCE;
        let mut lost = 0;
        loop {
            match self.importers.verify(path, deep).await {
                Ok(verification) => return Ok(verification),
                Err(error @ ImporterError::Unreachable(_)) => {
                    lost += 1;
                    if lost >= UNREACHABLE_ATTEMPTS {
                        return Err(error);
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(
                    error @ ImporterError::Refused {
                        code: tonic::Code::ResourceExhausted,
                        ..
                    },
                ) => {
                    if tokio::time::Instant::now() >= patience {
                        return Err(error);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(refused) => return Err(refused),
            }
        }
    }
}

/// The outcome of an importer's verification, and its first difference (or its failure) in
/// words.
fn judge(verification: &ImporterVerification) -> (VerifyResult, String) {
    let summary = &verification.summary;
    let first = verification.differences.first().map(|difference| {
        let kind = DifferenceKind::try_from(difference.kind).unwrap_or_default();
        format!(
            "{} {}: {}",
            kind.label(),
            difference.subject,
            difference.detail
        )
    });
    if !summary.error.is_empty() {
        return (VerifyResult::Failed, summary.error.clone());
    }
    match (summary.differences, first) {
        (0, _) => (VerifyResult::Match, String::new()),
        (_, Some(first)) => (VerifyResult::Differs, first),
        (n, None) => (VerifyResult::Differs, format!("{n} differences")),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(paths: &[&str], all: bool, concurrency: u32) -> VerifyRepositoriesRequest {
        VerifyRepositoriesRequest {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            all,
            deep: false,
            concurrency,
        }
    }

    fn refusal(request: VerifyRepositoriesRequest) -> String {
        match VerifyRequest::try_from(request) {
            Err(SchedulerError::InvalidArgument(message)) => message,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert!(refusal(request(&[], false, 0)).starts_with("paths:"));
        assert!(refusal(request(&["a/b"], true, 0)).starts_with("paths:"));
        assert!(refusal(request(&["Bad Path"], false, 0)).starts_with("paths:"));
        assert!(refusal(request(&["a/b"], false, 65)).starts_with("concurrency:"));
        let many: Vec<String> = (0..=MAX_PATHS).map(|n| format!("group/r{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(refusal(request(&many, false, 0)).starts_with("paths: at most"));
        let all = VerifyRequest::try_from(request(&[], true, 0)).unwrap();
        assert_eq!(all.targets, Targets::All);
        assert_eq!(all.concurrency, DEFAULT_CONCURRENCY as usize);
        let one = VerifyRequest::try_from(request(&["group/app"], false, 64)).unwrap();
        assert_eq!(one.targets, Targets::Paths(vec!["group/app".into()]));
        assert_eq!(one.concurrency, 64);
    }

    #[test]
    fn a_failure_outweighs_differences_and_a_match_has_none() {
        let mut verification = ImporterVerification::default();
        assert_eq!(judge(&verification), (VerifyResult::Match, String::new()));
        verification.summary.differences = 1;
        verification
            .differences
            .push(ferry_proto::common::v1::Difference {
                kind: DifferenceKind::TagMoved.into(),
                subject: "latest".into(),
                detail: "points elsewhere".into(),
            });
        assert_eq!(
            judge(&verification),
            (
                VerifyResult::Differs,
                "tag_moved latest: points elsewhere".into()
            )
        );
        verification.summary.error = "storage: unavailable".into();
        assert_eq!(
            judge(&verification),
            (VerifyResult::Failed, "storage: unavailable".into())
        );
    }
}
