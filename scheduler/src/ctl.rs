//! `ferryctl`: the operator's command line, a gRPC client of the scheduler.
//!
//! The commands are in this module's children, by topic. Everything they print is a type of
//! [`view`]: text by default, the same value as JSON with `--json`.

use std::time::Duration;

use clap::{Parser, Subcommand};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, GetRepositoryRequest, SetMigrationEnabledRequest,
};
use ferry_shared::grpc::client::{ChannelOptions, Connector};
use ferry_shared::security::tls::{ReloadingTls, TlsFiles};

use view::{RepositoryView, SummaryView, emit};

mod admin;
mod gc;
mod migrate;
mod plans;
mod progress;
mod rebuild;
mod repair;
mod runbook;
mod settings;
mod verify;
pub mod view;

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
    /// Rebuild the scheduler's state after its database was lost: an inventory, then every
    /// repository's record on the importers, then the repositories created on the new platform
    /// (see docs/operations.md, "Recovery"). Prints the repositories by state.
    RebuildState(rebuild::RebuildArgs),
    /// Compare migrated repositories with their source (tags, manifests byte for byte, index
    /// children, every config and layer under gitlab/ by size and checksum); exit 1 naming each
    /// difference.
    Verify(verify::VerifyArgs),
    /// Remove the copies under gitlab/ that no registered blob refers to (left by steps that
    /// failed, were canceled or killed) and that are older than a window longer than any step.
    Gc(gc::GcArgs),
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
    /// A verification found differences or could not verify every repository.
    #[error("{0}")]
    Differences(String),
    /// A file or argument the command reads is unusable.
    #[error("{0}")]
    Input(String),
    /// A view could not be encoded as JSON.
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Standard output is unusable (closed, for example).
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
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
        Command::Inventory => migrate::inventory(&mut client).await,
        Command::Verify(args) => verify::run(&mut client, args).await,
        Command::Gc(args) => gc::run(&mut client, args).await,
        Command::RebuildState(args) => rebuild::run(&mut client, args).await,
        Command::Migrate {
            wait,
            capacity,
            json,
        } => migrate::migrate(&mut client, wait, capacity, json).await,
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
            emit(&RepositoryView::from(repository), json)
        }
        Command::Status { path: None, json } => {
            let summary = client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await?
                .into_inner();
            emit(&SummaryView::new(summary), json)
        }
    }
}
