//! `ferryctl verify`: compares migrated repositories with their source, on the importers, and
//! names each difference.

use std::time::{Duration, Instant};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{VerifyOutcome, VerifyRepositoriesRequest};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::progress::ProgressLine;
use super::view::{RepositoryVerificationView, VerifyProgressView, VerifySummaryView, emit};

/// What `ferryctl verify` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Repository paths (at most 1000); or --all.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub paths: Vec<String>,
    /// Every import_done repository.
    #[arg(long)]
    pub all: bool,
    /// Re-read and hash every copied blob, also where the bucket keeps a CRC32C.
    #[arg(long)]
    pub deep: bool,
    /// Repositories verified at once across the importers (1..=64; default 4).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ferryctl verify`: progress with an ETA on stderr, each repository that does not match
/// on stdout as it comes (text), then the summary. Fails (exit 1) unless every repository
/// matched.
pub async fn run(
    client: &mut SchedulerClient<Connection>,
    args: VerifyArgs,
) -> Result<(), CtlError> {
    let started = Instant::now();
    let mut stream = client
        .verify_repositories(VerifyRepositoriesRequest {
            paths: args.paths,
            all: args.all,
            deep: args.deep,
            concurrency: args.concurrency.unwrap_or(0),
        })
        .await?
        .into_inner();
    let mut progress_line = ProgressLine::new(Some(Duration::from_secs(2)));
    let mut summary = VerifySummaryView::default();
    while let Some(progress) = stream.message().await? {
        if progress.finished {
            break;
        }
        if let Some(repository) = progress.repository {
            let counts = repository.counts;
            let view = RepositoryVerificationView::from(repository);
            if view.outcome != VerifyOutcome::Match && !args.json {
                progress_line.clear();
                emit(&view, false)?;
            }
            summary.add(view, counts);
        }
        let line = VerifyProgressView {
            done: progress.done,
            total: progress.total,
            problems: summary.repositories - summary.matched,
            elapsed_ms: progress.elapsed_ms,
        };
        progress_line.show(&line);
    }
    progress_line.clear();
    summary.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if args.json {
        emit(&summary, true)?;
    } else {
        // The repositories that did not match were printed as they came.
        let problems = std::mem::take(&mut summary.problems);
        emit(&summary, false)?;
        summary.problems = problems;
    }
    if summary.all_match() {
        Ok(())
    } else {
        Err(CtlError::Differences(format!(
            "{} of {} repositories did not match their source",
            summary.repositories - summary.matched,
            summary.repositories
        )))
    }
}
