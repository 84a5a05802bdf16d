//! `ferryctl inventory` and `ferryctl migrate [--wait]`, with their progress lines.

use std::io::Write;
use std::time::{Duration, Instant};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, RunInventoryRequest, SetMigrationEnabledRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::progress::ProgressLine;
use super::view::{InventoryProgressView, MigrateProgressView, RunFigures, SummaryView, emit};
use crate::state::MigrationState;

/// Runs `ferryctl inventory`, showing its progress on stderr.
pub async fn inventory(client: &mut SchedulerClient<Connection>) -> Result<(), CtlError> {
    let mut stream = client
        .run_inventory(RunInventoryRequest {})
        .await?
        .into_inner();
    let mut progress_line = ProgressLine::new(None);
    while let Some(progress) = stream.message().await? {
        let line = InventoryProgressView::from(progress);
        if line.done {
            progress_line.finish(&line);
        } else {
            progress_line.show(&line);
        }
    }
    Ok(())
}

/// Runs `ferryctl migrate`: turns the switch on and, with `wait`, follows the migration to its
/// end and prints the summary.
pub async fn migrate(
    client: &mut SchedulerClient<Connection>,
    wait: bool,
    capacity: Option<u32>,
    json: bool,
) -> Result<(), CtlError> {
    let started = Instant::now();
    let response = client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity,
        })
        .await?
        .into_inner();
    eprintln!("migration enabled (capacity {})", response.capacity);
    if wait {
        wait_for_migration(client, started, json).await
    } else {
        Ok(())
    }
}

async fn fetch_summary(client: &mut SchedulerClient<Connection>) -> Result<SummaryView, CtlError> {
    let summary = client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await?
        .into_inner();
    Ok(SummaryView::new(summary))
}

async fn wait_for_migration(
    client: &mut SchedulerClient<Connection>,
    started: Instant,
    json: bool,
) -> Result<(), CtlError> {
    let initial_pending = fetch_summary(client).await?.pending();
    let mut progress_line = ProgressLine::new(Some(Duration::from_secs(2)));
    let summary = loop {
        let summary = fetch_summary(client).await?;
        let line = MigrateProgressView::new(&summary, initial_pending, started.elapsed());
        if summary.pending() == 0 {
            progress_line.finish(&line);
            break summary;
        }
        progress_line.show(&line);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = std::io::stderr().flush();
    let run = RunFigures {
        elapsed: started.elapsed(),
        finished: initial_pending.saturating_sub(summary.pending()),
    };
    let summary = summary.with_run(run);
    emit(&summary, json)?;
    let done = summary.count(MigrationState::ImportDone);
    if done == summary.total {
        Ok(())
    } else {
        Err(CtlError::Incomplete(format!(
            "{} of {} repositories did not end import_done",
            summary.total.saturating_sub(done),
            summary.total
        )))
    }
}
