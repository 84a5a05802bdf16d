//! `ferryctl repair` (the project repair scan and its part 2) and `ferryctl bbm` (batched
//! background migrations).

use std::time::Duration;

use clap::Subcommand;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    BackgroundMigrationSelector, GetRepairStatusRequest, RetryFailedRepairsRequest,
    StartRepairRestoreRequest, UpdateSettingsRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::progress::ProgressLine;
use super::view::{
    BackgroundMigrationListView, BackgroundMigrationView, RepairProgressView, RepairStatusView,
    emit,
};

/// How often `--wait` polls.
const POLL: Duration = Duration::from_secs(2);

/// `ferryctl repair` commands.
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Show the scan's progress: counts, rate, ETA, what it found, its full passes.
    Status {
        /// Follow the scan until no project is left, showing progress.
        #[arg(long)]
        wait: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Turn the scan on (its feature flag), optionally setting its workers.
    Enable {
        /// Workers at once.
        #[arg(long)]
        concurrency: Option<u32>,
    },
    /// Turn the scan off: workers flush what they found and stop.
    Disable,
    /// Return the projects whose analysis failed to the scan.
    RetryFailed,
    /// Part 2: create the background migration that registers the missing repositories the
    /// scan found (as already on the new platform).
    Restore {
        /// Projects per job (default 1000).
        #[arg(long, default_value_t = 0)]
        batch_size: u32,
        /// Start even though the scan has projects left.
        #[arg(long)]
        force: bool,
        /// Wait until the migration ends, showing progress.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferryctl bbm` commands.
#[derive(Debug, Subcommand)]
pub enum BbmCommand {
    /// List background migrations with their job figures.
    List {
        /// One migration's name.
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pause the active and running migrations (or the one named): the job in hand finishes.
    Pause {
        /// One migration's name.
        name: Option<String>,
    },
    /// Resume the paused migrations (or the one named).
    Resume {
        /// One migration's name.
        name: Option<String>,
    },
}

/// Runs a `ferryctl repair` command.
pub async fn run_repair(
    client: &mut SchedulerClient<Connection>,
    command: RepairCommand,
) -> Result<(), CtlError> {
    match command {
        RepairCommand::Status { wait, json } => {
            let mut status = repair_status(client).await?;
            if wait {
                let mut progress_line = ProgressLine::new(None);
                while status.pending + status.ongoing > 0 {
                    if !status.enabled || status.max_concurrency == 0 {
                        return Err(CtlError::Incomplete(
                            "the repair scan is off, so it would never finish: \
                             `ferryctl repair enable`"
                                .into(),
                        ));
                    }
                    progress_line.show(&RepairProgressView::from(&status));
                    tokio::time::sleep(POLL).await;
                    status = repair_status(client).await?;
                }
                progress_line.clear();
            }
            emit(&status, json)
        }
        RepairCommand::Enable { concurrency } => {
            let settings = client
                .update_settings(UpdateSettingsRequest {
                    repair_enabled: Some(true),
                    repair_max_concurrency: concurrency,
                    ..UpdateSettingsRequest::default()
                })
                .await?
                .into_inner();
            eprintln!(
                "repair scan on ({} workers); it starts within FERRY_REPAIR_INTERVAL_SECS on the lease holder",
                settings.repair_max_concurrency
            );
            Ok(())
        }
        RepairCommand::Disable => {
            client
                .update_settings(UpdateSettingsRequest {
                    repair_enabled: Some(false),
                    ..UpdateSettingsRequest::default()
                })
                .await?;
            eprintln!("repair scan off: workers record what they found and stop");
            Ok(())
        }
        RepairCommand::RetryFailed => {
            let response = client
                .retry_failed_repairs(RetryFailedRepairsRequest {})
                .await?
                .into_inner();
            eprintln!("{} projects returned to the scan", response.projects);
            Ok(())
        }
        RepairCommand::Restore {
            batch_size,
            force,
            wait,
        } => {
            let mut migration = BackgroundMigrationView::from(
                client
                    .start_repair_restore(StartRepairRestoreRequest { batch_size, force })
                    .await?
                    .into_inner(),
            );
            eprintln!(
                "background migration {} created: projects {}..{}, {} per job",
                migration.name, migration.min_value, migration.max_value, migration.batch_size
            );
            if wait {
                while !migration.ended() {
                    eprintln!("{migration}");
                    tokio::time::sleep(POLL).await;
                    migration = one_migration(client, &migration.name).await?;
                }
            }
            eprintln!("{migration}");
            if migration.status == "failed" {
                return Err(CtlError::Incomplete(format!(
                    "{} failed: {}",
                    migration.name,
                    migration.failure_error_code.as_deref().unwrap_or_default()
                )));
            }
            Ok(())
        }
    }
}

/// Runs a `ferryctl bbm` command.
pub async fn run_bbm(
    client: &mut SchedulerClient<Connection>,
    command: BbmCommand,
) -> Result<(), CtlError> {
    match command {
        BbmCommand::List { name, json } => {
            let list = client
                .list_background_migrations(BackgroundMigrationSelector {
                    name: name.unwrap_or_default(),
                })
                .await?
                .into_inner();
            emit(&BackgroundMigrationListView::from(list), json)
        }
        BbmCommand::Pause { name } => {
            let selector = BackgroundMigrationSelector {
                name: name.unwrap_or_default(),
            };
            let names = client
                .pause_background_migrations(selector)
                .await?
                .into_inner()
                .names;
            eprintln!("paused: {}", listed(&names));
            Ok(())
        }
        BbmCommand::Resume { name } => {
            let selector = BackgroundMigrationSelector {
                name: name.unwrap_or_default(),
            };
            let names = client
                .resume_background_migrations(selector)
                .await?
                .into_inner()
                .names;
            eprintln!("resumed: {}", listed(&names));
            Ok(())
        }
    }
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

async fn repair_status(
    client: &mut SchedulerClient<Connection>,
) -> Result<RepairStatusView, CtlError> {
    Ok(client
        .get_repair_status(GetRepairStatusRequest {})
        .await?
        .into_inner()
        .into())
}

async fn one_migration(
    client: &mut SchedulerClient<Connection>,
    name: &str,
) -> Result<BackgroundMigrationView, CtlError> {
    client
        .list_background_migrations(BackgroundMigrationSelector {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .migrations
        .into_iter()
        .next()
        .map(Into::into)
        .ok_or_else(|| CtlError::Incomplete(format!("background migration {name} vanished")))
}
