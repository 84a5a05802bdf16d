//! `ferryctl`: the operator's command line, a gRPC client of the scheduler.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

use ferry_proto::common::v1::ImportStats;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, GetRepositoryRequest, MigrationSummary, Repository,
    RunInventoryRequest, SetMigrationEnabledRequest,
};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};
use ferry_shared::security::tls::{ReloadingTls, TlsFiles};

mod admin;
mod plans;
mod repair;
mod runbook;
mod settings;

/// `ferryctl`: drive and inspect a Ferry migration.
#[derive(Debug, Parser)]
#[command(
    name = "ferryctl",
    version,
    about = "Drive and inspect a Ferry migration: a gRPC client of the scheduler."
)]
pub struct CtlArgs {
    /// The scheduler's gRPC URL.
    #[arg(
        long,
        env = "FERRY_SCHEDULER_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub scheduler_url: String,
    /// Bearer token to present (a `read` token suffices for status commands).
    #[arg(long, env = "FERRY_AUTH_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// PEM CA bundle verifying the scheduler's certificate; set it when the scheduler serves TLS.
    #[arg(long, env = "FERRY_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate to present (with --tls-key-file), when not using a token.
    #[arg(
        long,
        env = "FERRY_TLS_CERT_FILE",
        global = true,
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(
        long,
        env = "FERRY_TLS_KEY_FILE",
        global = true,
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `ferryctl` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Discover every repository in the bucket and register it.
    Inventory,
    /// Turn the migration on (the global switch) and optionally wait for it to finish.
    Migrate {
        /// Wait, showing progress, until no repository has work left; exit 1 unless all are done.
        #[arg(long)]
        wait: bool,
        /// Repositories in process at once.
        #[arg(long)]
        capacity: Option<u32>,
        /// Print the final summary as JSON on stdout (needs --wait).
        #[arg(long, requires = "wait")]
        json: bool,
    },
    /// Turn the migration off: steps in flight finish, no new ones start.
    Pause,
    /// Turn the migration back on (the global switch), without waiting.
    Resume,
    /// Operator commands on repositories and the queue.
    #[command(flatten)]
    Admin(admin::AdminCommand),
    /// The project repair scan and its part 2 (restoring missing repositories).
    #[command(subcommand)]
    Repair(repair::RepairCommand),
    /// Batched background migrations: list, pause, resume.
    #[command(subcommand, name = "bbm", alias = "background-migrations")]
    Bbm(repair::BbmCommand),
    /// Show the run-time settings, or change the ones given.
    Settings(settings::SettingsArgs),
    /// Root namespaces' plans, which `target_plans` selects by: list, set, load a file.
    Plans {
        /// What to do (default: list).
        #[command(subcommand)]
        action: Option<plans::PlansAction>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The enqueue lease: show who holds it, or clear one a killed replica left.
    Lease {
        /// What to do (default: show).
        #[command(subcommand)]
        action: Option<runbook::LeaseAction>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// The enqueue trigger's deduplication key: show it, or clear a stuck one.
    Dedup {
        /// What to do (default: show).
        #[command(subcommand)]
        action: Option<runbook::DedupAction>,
        /// Print JSON.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Show the migration's progress, or one repository's state.
    Status {
        /// A repository path.
        path: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A `ferryctl` failure.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The scheduler URL is unusable or unreachable.
    #[error("cannot reach the scheduler: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The TLS files are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] ferry_shared::security::tls::TlsError),
    /// The scheduler answered with an error.
    #[error("{}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// Not every repository ended `import_done`.
    #[error("{0}")]
    Incomplete(String),
    /// A file or argument the command reads is unusable.
    #[error("{0}")]
    Input(String),
}

/// Runs a `ferryctl` command.
pub async fn run(args: CtlArgs) -> Result<(), CtlError> {
    let tls = match &args.tls_ca_file {
        None => None,
        Some(ca) => Some(ReloadingTls::fixed(
            TlsFiles {
                cert: args.tls_cert_file.clone(),
                key: args.tls_key_file.clone(),
                ca: Some(ca.clone()),
            }
            .load()?,
        )),
    };
    let connection = Connector::new(tls, args.token.as_deref())
        .connect(
            &args.scheduler_url,
            ChannelOptions {
                connect_timeout: Duration::from_secs(5),
                ..ChannelOptions::default()
            },
        )
        .await?;
    let mut client = SchedulerClient::new(connection);
    match args.command {
        Command::Inventory => inventory(&mut client).await,
        Command::Migrate {
            wait,
            capacity,
            json,
        } => {
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
                wait_for_migration(&mut client, started, json).await
            } else {
                Ok(())
            }
        }
        Command::Pause => {
            client
                .set_migration_enabled(SetMigrationEnabledRequest {
                    enabled: false,
                    capacity: None,
                })
                .await?;
            eprintln!("migration paused: steps in flight finish, no new ones start");
            Ok(())
        }
        Command::Settings(args) => settings::run(&mut client, &args).await,
        Command::Plans { action, json } => plans::run(&mut client, action, json).await,
        Command::Repair(command) => repair::run_repair(&mut client, command).await,
        Command::Bbm(command) => repair::run_bbm(&mut client, command).await,
        Command::Admin(command) => admin::run(&mut client, command).await,
        Command::Lease { action, json } => runbook::lease(&mut client, action, json).await,
        Command::Dedup { action, json } => runbook::dedup(&mut client, action, json).await,
        Command::Resume => {
            let response = client
                .set_migration_enabled(SetMigrationEnabledRequest {
                    enabled: true,
                    capacity: None,
                })
                .await?
                .into_inner();
            eprintln!("migration resumed (capacity {})", response.capacity);
            Ok(())
        }
        Command::Status {
            path: Some(path),
            json,
        } => {
            let repository = client
                .get_repository(GetRepositoryRequest { path })
                .await?
                .into_inner();
            if json {
                println!("{}", repository_json(&repository));
            } else {
                print_repository(&repository);
            }
            Ok(())
        }
        Command::Status { path: None, json } => {
            let summary = client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await?
                .into_inner();
            if json {
                println!("{}", summary_json(&summary, None));
            } else {
                print_summary(&summary, None);
            }
            Ok(())
        }
    }
}

async fn inventory(client: &mut SchedulerClient<Connection>) -> Result<(), CtlError> {
    let mut stream = client
        .run_inventory(RunInventoryRequest {})
        .await?
        .into_inner();
    let tty = std::io::stderr().is_terminal();
    while let Some(progress) = stream.message().await? {
        let line = format!(
            "inventory: {} repositories found, {} new, {} new projects, {} list calls, {:.1} s",
            progress.repositories_found,
            progress.repositories_registered,
            progress.projects_registered,
            progress.list_calls,
            progress.elapsed_ms as f64 / 1000.0
        );
        if progress.done {
            if tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("{line}");
        } else if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    Ok(())
}

fn count(summary: &MigrationSummary, state: &str) -> u64 {
    summary
        .states
        .iter()
        .filter(|s| s.state == state)
        .map(|s| s.count)
        .sum()
}

fn pending(summary: &MigrationSummary) -> u64 {
    crate::state::MigrationState::PENDING
        .iter()
        .map(|s| count(summary, s.as_str()))
        .sum()
}

async fn wait_for_migration(
    client: &mut SchedulerClient<Connection>,
    started: Instant,
    json: bool,
) -> Result<(), CtlError> {
    let tty = std::io::stderr().is_terminal();
    let initial_pending = pending(
        &client
            .get_migration_summary(GetMigrationSummaryRequest {})
            .await?
            .into_inner(),
    );
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let summary = loop {
        let summary = client
            .get_migration_summary(GetMigrationSummaryRequest {})
            .await?
            .into_inner();
        let left = pending(&summary);
        let finished = summary.total - left;
        let finished_now = initial_pending.saturating_sub(left);
        let elapsed = started.elapsed().as_secs_f64();
        let rate = finished_now as f64 / elapsed.max(0.001);
        let eta = if rate > 0.0 {
            format!("{:.0} s", left as f64 / rate)
        } else {
            "-".to_owned()
        };
        let active: u64 = crate::state::MigrationState::IN_PROCESS
            .iter()
            .map(|state| count(&summary, state.as_str()))
            .sum();
        let line = format!(
            "{} {finished}/{} done · {rate:.1} repos/s · ETA {eta} · {active} in process",
            bar(finished, summary.total),
            summary.total
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else if left == 0 || last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{line}");
            last_line = Instant::now();
        }
        if left == 0 {
            if tty {
                eprintln!();
            }
            break summary;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = std::io::stderr().flush();
    let run = RunFigures {
        elapsed: started.elapsed(),
        finished: initial_pending.saturating_sub(pending(&summary)),
    };
    if json {
        println!("{}", summary_json(&summary, Some(run)));
    } else {
        print_summary(&summary, Some(run));
    }
    let done = count(&summary, "import_done");
    if done == summary.total {
        Ok(())
    } else {
        Err(CtlError::Incomplete(format!(
            "{} of {} repositories did not end import_done",
            summary.total - done,
            summary.total
        )))
    }
}

/// What one `migrate --wait` saw: its duration and how many repositories finished during it.
#[derive(Debug, Clone, Copy)]
struct RunFigures {
    elapsed: Duration,
    finished: u64,
}

impl RunFigures {
    fn rate(self) -> f64 {
        self.finished as f64 / self.elapsed.as_secs_f64().max(0.001)
    }
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn print_summary(summary: &MigrationSummary, run: Option<RunFigures>) {
    let totals = summary.totals.unwrap_or_default();
    let done = count(summary, "import_done");
    let skipped = count(summary, "import_skipped");
    let failed = count(summary, "import_aborted");
    println!("Ferry migration summary");
    println!(
        "  switch          {} (capacity {})",
        if summary.enabled { "on" } else { "off" },
        summary.capacity
    );
    println!(
        "  repositories    {} total: {done} done, {skipped} skipped, {failed} failed (aborted, to retry)",
        summary.total
    );
    for state in &summary.states {
        println!("    {:<14}{}", state.state, state.count);
    }
    let eta = if summary.eta_seconds > 0 {
        format!("{} s", summary.eta_seconds)
    } else {
        "-".to_owned()
    };
    println!(
        "  throughput      {} in flight, {:.1} done/min over 10 min, ETA {eta}",
        summary.in_flight, summary.done_per_minute
    );
    print_totals(&totals);
    if let Some(run) = run {
        println!(
            "  elapsed         {:.1} s: {} repositories finished in this run ({:.2} repositories/s)",
            run.elapsed.as_secs_f64(),
            run.finished,
            run.rate()
        );
    }
    if !summary.problems.is_empty() {
        println!("  needs attention");
        for repo in &summary.problems {
            let reason = if repo.skipped_reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", repo.skipped_reason)
            };
            let error = if repo.last_error.is_empty() {
                String::new()
            } else {
                format!(": {}", repo.last_error)
            };
            println!("    {} {}{reason}{error}", repo.path, repo.migration_state);
        }
    }
}

fn print_totals(totals: &ImportStats) {
    println!(
        "  manifests       {} registered, {} skipped (no revision link, schema 1 or unlinked config)",
        totals.manifests, totals.manifests_skipped
    );
    println!(
        "  tags            {} registered, {} skipped (no current link, or manifest skipped)",
        totals.tags, totals.tags_skipped
    );
    println!(
        "  blobs           {} registered, {} copied ({}), {} already under gitlab/",
        totals.blobs,
        totals.blobs_copied,
        human_bytes(totals.bytes_copied),
        totals.blobs_present
    );
    if totals.layers_skipped > 0 {
        println!(
            "  layers          {} skipped (not linked to their repository)",
            totals.layers_skipped
        );
    }
}

pub(crate) fn print_repository(repo: &Repository) {
    println!("{}", repo.path);
    println!("  project         {}", repo.project_path);
    println!("  state           {}", repo.migration_state);
    println!("  retries         {}", repo.retries_count);
    println!("  step            {}", repo.step);
    for (label, value) in [
        ("cancel pending", &repo.cancel_requested),
        ("skipped reason", &repo.skipped_reason),
        ("aborted in", &repo.aborted_in_state),
        ("last error", &repo.last_error),
        ("pre-import from", &repo.pre_import_started_at),
        ("pre-import done", &repo.pre_import_done_at),
        ("import from", &repo.import_started_at),
        ("import done", &repo.import_done_at),
        ("importer", &repo.importer),
        ("accepted at", &repo.step_accepted_at),
        ("aborted at", &repo.aborted_at),
        ("skipped at", &repo.skipped_at),
    ] {
        if !value.is_empty() {
            println!("  {label:<15} {value}");
        }
    }
    print_totals(&repo.stats.unwrap_or_default());
}

fn stats_json(stats: &ImportStats) -> serde_json::Value {
    json!({
        "manifests": stats.manifests, "tags": stats.tags, "tags_skipped": stats.tags_skipped,
        "blobs": stats.blobs, "blobs_copied": stats.blobs_copied, "bytes_copied": stats.bytes_copied,
        "blobs_present": stats.blobs_present, "duration_ms": stats.duration_ms,
        "manifests_skipped": stats.manifests_skipped, "layers_skipped": stats.layers_skipped,
    })
}

pub(crate) fn repository_json(repo: &Repository) -> serde_json::Value {
    json!({
        "id": repo.id, "path": repo.path, "project_path": repo.project_path,
        "migration_state": repo.migration_state, "retries_count": repo.retries_count,
        "skipped_reason": repo.skipped_reason, "aborted_in_state": repo.aborted_in_state,
        "last_error": repo.last_error, "pre_import_started_at": repo.pre_import_started_at,
        "pre_import_done_at": repo.pre_import_done_at, "import_started_at": repo.import_started_at,
        "import_done_at": repo.import_done_at, "aborted_at": repo.aborted_at, "skipped_at": repo.skipped_at,
        "importer": repo.importer, "step_accepted_at": repo.step_accepted_at,
        "step": repo.step, "cancel_requested": repo.cancel_requested,
        "stats": stats_json(&repo.stats.unwrap_or_default()),
    })
}

fn summary_json(summary: &MigrationSummary, run: Option<RunFigures>) -> serde_json::Value {
    let states: serde_json::Map<String, serde_json::Value> = summary
        .states
        .iter()
        .map(|s| (s.state.clone(), json!(s.count)))
        .collect();
    json!({
        "enabled": summary.enabled,
        "capacity": summary.capacity,
        "total": summary.total,
        "states": states,
        "totals": stats_json(&summary.totals.unwrap_or_default()),
        "elapsed_seconds": run.map(|r| r.elapsed.as_secs_f64()),
        "finished_in_run": run.map(|r| r.finished),
        "repositories_per_second": run.map(RunFigures::rate),
        "problems": summary.problems.iter().map(repository_json).collect::<Vec<_>>(),
        "in_flight": summary.in_flight,
        "done_per_minute": summary.done_per_minute,
        "eta_seconds": summary.eta_seconds,
    })
}
