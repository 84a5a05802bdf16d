//! `ferryctl repair` (the project repair scan and its part 2) and `ferryctl bbm` (batched
//! background migrations).

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    BackgroundMigration, BackgroundMigrationSelector, GetRepairStatusRequest, RepairStatus,
    RetryFailedRepairsRequest, StartRepairRestoreRequest, UpdateSettingsRequest,
};
use ferry_shared::grpc::client::Connection;

use super::CtlError;

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
                let tty = std::io::stderr().is_terminal();
                while status.pending + status.ongoing > 0 {
                    if !status.enabled || status.max_concurrency == 0 {
                        return Err(CtlError::Incomplete(
                            "the repair scan is off, so it would never finish: \
                             `ferryctl repair enable`"
                                .into(),
                        ));
                    }
                    let line = progress_line(&status);
                    if tty {
                        eprint!("\r\x1b[2K{line}");
                    } else {
                        eprintln!("{line}");
                    }
                    tokio::time::sleep(POLL).await;
                    status = repair_status(client).await?;
                }
                if tty {
                    eprint!("\r\x1b[2K");
                }
            }
            if json {
                println!("{}", repair_json(&status));
            } else {
                print_repair(&status);
            }
            Ok(())
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
            let mut migration = client
                .start_repair_restore(StartRepairRestoreRequest { batch_size, force })
                .await?
                .into_inner();
            eprintln!(
                "background migration {} created: projects {}..{}, {} per job",
                migration.name, migration.min_value, migration.max_value, migration.batch_size
            );
            if wait {
                while !matches!(migration.status.as_str(), "finished" | "failed") {
                    eprintln!("{}", migration_line(&migration));
                    tokio::time::sleep(POLL).await;
                    migration = one_migration(client, &migration.name).await?;
                }
            }
            eprintln!("{}", migration_line(&migration));
            if migration.status == "failed" {
                return Err(CtlError::Incomplete(format!(
                    "{} failed: {}",
                    migration.name, migration.failure_error_code
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
            if json {
                let all: Vec<_> = list.migrations.iter().map(migration_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else if list.migrations.is_empty() {
                println!("no background migrations");
            } else {
                for migration in &list.migrations {
                    println!("{}", migration_line(migration));
                }
            }
            Ok(())
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

async fn repair_status(client: &mut SchedulerClient<Connection>) -> Result<RepairStatus, CtlError> {
    Ok(client
        .get_repair_status(GetRepairStatusRequest {})
        .await?
        .into_inner())
}

async fn one_migration(
    client: &mut SchedulerClient<Connection>,
    name: &str,
) -> Result<BackgroundMigration, CtlError> {
    client
        .list_background_migrations(BackgroundMigrationSelector {
            name: name.to_owned(),
        })
        .await?
        .into_inner()
        .migrations
        .into_iter()
        .next()
        .ok_or_else(|| CtlError::Incomplete(format!("background migration {name} vanished")))
}

fn eta(seconds: u64) -> String {
    match seconds {
        0 => "-".to_owned(),
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn progress_line(s: &RepairStatus) -> String {
    format!(
        "repair scan: {}/{} projects analyzed · {} left · {:.0} projects/s · ETA {} · {} missing repositories so far",
        s.completed,
        s.projects,
        s.pending + s.ongoing,
        s.projects_per_second,
        eta(s.eta_seconds),
        s.missing_repositories
    )
}

fn repair_json(s: &RepairStatus) -> serde_json::Value {
    json!({
        "enabled": s.enabled, "max_concurrency": s.max_concurrency, "projects": s.projects,
        "completed": s.completed, "ongoing": s.ongoing, "failed": s.failed, "pending": s.pending,
        "missing_repositories": s.missing_repositories,
        "projects_with_missing": s.projects_with_missing,
        "projects_per_second": s.projects_per_second, "eta_seconds": s.eta_seconds,
        "scanner": s.scanner, "scanner_reported_at": s.scanner_reported_at,
        "pass_started_at": s.pass_started_at,
        "passes": s.passes.iter().map(|p| json!({
            "started_at": p.started_at, "finished_at": p.finished_at,
            "projects": p.projects, "missing": p.missing,
        })).collect::<Vec<_>>(),
    })
}

fn print_repair(s: &RepairStatus) {
    println!("Project repair scan");
    println!(
        "  scan                 {} ({} workers)",
        if s.enabled { "on" } else { "off" },
        s.max_concurrency
    );
    println!("  projects             {}", s.projects);
    println!("  analyzed             {}", s.completed);
    println!("  in analysis          {}", s.ongoing);
    println!("  failed               {}", s.failed);
    println!("  left                 {}", s.pending);
    println!(
        "  missing repositories {} under {} projects",
        s.missing_repositories, s.projects_with_missing
    );
    println!(
        "  rate                 {:.0} projects/s · ETA {}",
        s.projects_per_second,
        eta(s.eta_seconds)
    );
    if !s.scanner.is_empty() {
        println!(
            "  scanner              {} (reported {})",
            s.scanner, s.scanner_reported_at
        );
    }
    if !s.pass_started_at.is_empty() {
        println!("  pass started         {}", s.pass_started_at);
    }
    match s.passes.first() {
        None => println!("  full passes          none yet"),
        Some(_) => {
            println!("  full passes (newest first)");
            for p in &s.passes {
                println!(
                    "    {} → {}: {} projects, {} missing",
                    p.started_at, p.finished_at, p.projects, p.missing
                );
            }
        }
    }
}

fn migration_line(m: &BackgroundMigration) -> String {
    let failure = if m.failure_error_code.is_empty() {
        String::new()
    } else {
        format!(" ({})", m.failure_error_code)
    };
    let error = if m.last_error.is_empty() {
        String::new()
    } else {
        format!(" · last error: {}", m.last_error)
    };
    format!(
        "{} [{}{failure}] {}:{}.{} {}..{} · {:.0} % · {}/{} jobs finished, {} failed · {} attempts · {:.1} s of work{error}",
        m.name,
        m.status,
        m.job_signature_name,
        m.table_name,
        m.column_name,
        m.min_value,
        m.max_value,
        m.progress * 100.0,
        m.jobs_finished,
        m.jobs,
        m.jobs_failed,
        m.attempts,
        m.work_ms as f64 / 1000.0
    )
}

fn migration_json(m: &BackgroundMigration) -> serde_json::Value {
    json!({
        "name": m.name, "job_signature_name": m.job_signature_name,
        "table_name": m.table_name, "column_name": m.column_name,
        "min_value": m.min_value, "max_value": m.max_value, "batch_size": m.batch_size,
        "status": m.status,
        "failure_error_code": (!m.failure_error_code.is_empty()).then_some(&m.failure_error_code),
        "created_at": m.created_at, "started_at": m.started_at, "finished_at": m.finished_at,
        "jobs": m.jobs, "jobs_finished": m.jobs_finished, "jobs_failed": m.jobs_failed,
        "attempts": m.attempts, "work_ms": m.work_ms, "progress": m.progress,
        "last_error": m.last_error,
    })
}
