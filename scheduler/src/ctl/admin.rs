//! `ferryctl` commands for single repositories and the queue: register, start, cancel, list,
//! queue, writable.

use clap::Subcommand;
use serde_json::json;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    CancelMigrationRequest, CheckWritableRequest, DoubleCheckRequest, ListRepositoriesRequest,
    PreviewQueueRequest, RegisterRepositoryRequest, Repository, StartMigrationNowRequest,
};
use ferry_shared::grpc::client::Connection;

use super::{CtlError, print_repository, repository_json};

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

fn show(repository: &Repository, json: bool) {
    if json {
        println!("{}", repository_json(repository));
    } else {
        print_repository(repository);
    }
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
            show(
                &client.register_repository(request).await?.into_inner(),
                json,
            );
        }
        AdminCommand::Start { path, json } => {
            let request = StartMigrationNowRequest { path };
            show(
                &client.start_migration_now(request).await?.into_inner(),
                json,
            );
        }
        AdminCommand::Cancel { path, force, json } => {
            let request = CancelMigrationRequest { path, force };
            show(&client.cancel_migration(request).await?.into_inner(), json);
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
            if json {
                let repositories: Vec<_> = page.repositories.iter().map(repository_json).collect();
                println!(
                    "{}",
                    json!({ "repositories": repositories, "next_after": page.next_after })
                );
            } else {
                for repository in &page.repositories {
                    let reason = if repository.skipped_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", repository.skipped_reason)
                    };
                    println!(
                        "{:<16} {}{reason}",
                        repository.migration_state, repository.path
                    );
                }
                if !page.next_after.is_empty() {
                    println!("next: --after {}", page.next_after);
                }
            }
        }
        AdminCommand::Queue { which, json } => {
            let preview = client
                .preview_queue(PreviewQueueRequest {})
                .await?
                .into_inner();
            let one = match which {
                None => None,
                Some(QueueWhich::Next) => Some(("ready", preview.next_ready.as_ref())),
                Some(QueueWhich::NextAborted) => Some(("aborted", preview.next_aborted.as_ref())),
            };
            match one {
                Some((_, Some(repository))) => show(repository, json),
                Some((_, None)) if json => println!("null"),
                Some((queue, None)) => println!("no {queue} repository waits"),
                None if json => println!(
                    "{}",
                    json!({
                        "ready": preview.ready,
                        "next_ready": preview.next_ready.as_ref().map(repository_json),
                        "next_aborted": preview.next_aborted.as_ref().map(repository_json),
                    })
                ),
                None => {
                    let path = |r: &Option<Repository>| {
                        r.as_ref().map_or("-".to_owned(), |r| r.path.clone())
                    };
                    println!("ready repositories  {}", preview.ready);
                    println!(
                        "next aborted retry  {} (retried first)",
                        path(&preview.next_aborted)
                    );
                    println!("next ready          {}", path(&preview.next_ready));
                }
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
            if json {
                println!(
                    "{}",
                    json!({
                        "since": report.since, "checked": report.checked, "missing": report.missing,
                        "created": report.created, "missing_paths": report.missing_paths,
                        "last_full_repair_pass_at": (!report.last_full_repair_pass_at.is_empty()).then_some(&report.last_full_repair_pass_at),
                    })
                );
            } else {
                println!(
                    "double-check since {}{}",
                    report.since,
                    if dry_run { " (dry run)" } else { "" }
                );
                println!("  repositories created in the window   {}", report.checked);
                println!("  missing here                          {}", report.missing);
                println!("  created                               {}", report.created);
                for path in &report.missing_paths {
                    println!("    {path}");
                }
                let pass = if report.last_full_repair_pass_at.is_empty() {
                    "none yet: check back to the start of the migration".to_owned()
                } else {
                    format!(
                        "{} (checking back to then is enough)",
                        report.last_full_repair_pass_at
                    )
                };
                println!("  last full repair pass started        {pass}");
            }
        }
        AdminCommand::Writable { path, json } => {
            let answer = client
                .check_writable(CheckWritableRequest { path: path.clone() })
                .await?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({ "path": path, "writable": answer.writable, "migration_state": answer.migration_state, "reason": answer.reason })
                );
            } else if answer.writable {
                println!("{path} accepts writes ({})", answer.migration_state);
            } else {
                println!("{path} is read-only: {}", answer.reason);
            }
        }
    }
    Ok(())
}
