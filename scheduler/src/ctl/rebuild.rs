//! `ferryctl rebuild-state`: rebuilds the scheduler's state after its database was lost, from
//! an inventory and the importers' records (see `docs/operations.md`, "Recovery").

use std::time::Duration;

use ferry_proto::scheduler::v1::RebuildStateRequest;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::progress::ProgressLine;
use super::view::{RebuildProgressView, RebuildSummaryView, emit};

/// What `ferryctl rebuild-state` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// Turn the migration off first if it is on (without it, a migration that is on is
    /// refused).
    #[arg(long)]
    pub yes: bool,
    /// Repositories asked of the importers per call (1..1000; default 500).
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ferryctl rebuild-state`: progress on stderr, then the summary by state on stdout.
pub async fn run(
    client: &mut SchedulerClient<Connection>,
    args: RebuildArgs,
) -> Result<(), CtlError> {
    let mut stream = client
        .rebuild_state(RebuildStateRequest {
            pause_migration: args.yes,
            batch_size: args.batch_size.unwrap_or(0),
        })
        .await?
        .into_inner();
    let mut progress_line = ProgressLine::new(Some(Duration::from_secs(2)));
    while let Some(progress) = stream.message().await? {
        if progress.done {
            progress_line.finish(&RebuildProgressView::from(&progress));
            return emit(&RebuildSummaryView::from(progress), args.json);
        }
        progress_line.show(&RebuildProgressView::from(&progress));
    }
    progress_line.clear();
    Err(CtlError::Incomplete(
        "the scheduler ended the rebuild without its summary: run it again (it goes on where it \
         stopped)"
            .into(),
    ))
}
