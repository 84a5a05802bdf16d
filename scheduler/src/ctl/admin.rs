//! `ferryctl` commands for single repositories and the queue: register, start, cancel, list,
//! queue, writable.

use clap::Subcommand;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    CancelMigrationRequest, CheckWritableRequest, DoubleCheckRequest, ListRepositoriesRequest,
    PreviewQueueRequest, RegisterRepositoryRequest, StartMigrationNowRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;
use super::view::{
    DoubleCheckView, QueueHeadView, QueueView, RepositoryPageView, RepositoryView, WritableView,
    emit,
};

/// Operator commands on repositories.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Register a repository (a create event the scheduler missed).
    Register {
        /// The repository path.
        path: String,
        /// It was created on the new platform: mark it done (`native_import`).
        #[arg(long)]
        on_new_platform: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a repository's migration next (at the front of the queue).
    Start {
        /// The repository path.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a repository's migration, on the importer too, and unlock it.
    Cancel {
        /// The repository path.
        path: String,
        /// Cancel whatever the importer's status (the runbook's force cancel), except a final
        /// import that already completed: the completion wins, and the repository ends done.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List repositories, optionally in one state, by path.
    List {
        /// A migration state (default, pre_importing, ..., import_skipped).
        #[arg(long)]
        state: Option<String>,
        /// Repositories per page (1..1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this path (the `next` printed by the previous page).
        #[arg(long, default_value = "")]
        after: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show what the enqueue loop takes next (both queues, or one).
    Queue {
        /// Which queue (default: both).
        #[command(subcommand)]
        which: Option<QueueWhich>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Make sure every repository created in the last hours exists here (dropped create events).
    DoubleCheck {
        /// How far back to check, in hours (back to the last full repair pass is enough).
        #[arg(long)]
        since_hours: u32,
        /// Report only; create nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Whether a repository accepts writes (no while its final import runs).
    Writable {
        /// The repository path.
        path: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// One of the enqueue loop's queues.
#[derive(Debug, Subcommand)]
pub enum QueueWhich {
    /// The next ready repository (priority first, then by path).
    Next,
    /// The next aborted repository, retried before any ready one.
    NextAborted,
}

/// Runs an operator command.
pub async fn run(
    client: &mut SchedulerClient<Connection>,
    command: AdminCommand,
) -> Result<(), CtlError> {
    match command {
        AdminCommand::Register {
            path,
            on_new_platform,
            json,
        } => {
            let request = RegisterRepositoryRequest {
                path,
                on_new_platform,
            };
            let repository = client.register_repository(request).await?.into_inner();
            emit(&RepositoryView::from(repository), json)
        }
        AdminCommand::Start { path, json } => {
            let request = StartMigrationNowRequest { path };
            let repository = client.start_migration_now(request).await?.into_inner();
            emit(&RepositoryView::from(repository), json)
        }
        AdminCommand::Cancel { path, force, json } => {
            let request = CancelMigrationRequest { path, force };
            let repository = client.cancel_migration(request).await?.into_inner();
            emit(&RepositoryView::from(repository), json)
        }
        AdminCommand::List {
            state,
            limit,
            after,
            json,
        } => {
            let request = ListRepositoriesRequest {
                state: state.unwrap_or_default(),
                limit,
                after,
            };
            let page = client.list_repositories(request).await?.into_inner();
            emit(&RepositoryPageView::from(page), json)
        }
        AdminCommand::Queue { which, json } => {
            let preview = client
                .preview_queue(PreviewQueueRequest {})
                .await?
                .into_inner();
            match which {
                None => emit(&QueueView::from(preview), json),
                Some(QueueWhich::Next) => emit(
                    &QueueHeadView {
                        queue: "ready",
                        repository: preview.next_ready.map(Into::into),
                    },
                    json,
                ),
                Some(QueueWhich::NextAborted) => emit(
                    &QueueHeadView {
                        queue: "aborted",
                        repository: preview.next_aborted.map(Into::into),
                    },
                    json,
                ),
            }
        }
        AdminCommand::DoubleCheck {
            since_hours,
            dry_run,
            json,
        } => {
            let report = client
                .double_check(DoubleCheckRequest {
                    since_hours,
                    dry_run,
                })
                .await?
                .into_inner();
            emit(&DoubleCheckView::new(report, dry_run), json)
        }
        AdminCommand::Writable { path, json } => {
            let answer = client
                .check_writable(CheckWritableRequest { path: path.clone() })
                .await?
                .into_inner();
            emit(&WritableView::new(path, answer), json)
        }
    }
}
