//! `ferry-importer`: see the crate documentation of `ferry_importer`.

use std::process::ExitCode;

use clap::Parser;

use ferry_importer::config::{ImportCommand, ImporterArgs, ImporterCommand};
use ferry_shared::startup::{migrate_main, serve_main};

const BINARY: &str = "ferry-importer";

#[tokio::main]
async fn main() -> ExitCode {
    let args = ImporterArgs::parse();
    match args.command.clone() {
        Some(ImporterCommand::Import(command)) => import(&args, &command).await,
        Some(ImporterCommand::Migrate) => migrate(&args).await,
        Some(ImporterCommand::Serve) | None => serve(&args).await,
    }
}

async fn serve(args: &ImporterArgs) -> ExitCode {
    serve_main(
        BINARY,
        args.validate(),
        |config| config.listen_addr,
        |config, listener| {
            ferry_importer::run(config, listener, ferry_shared::grpc::shutdown_signal())
        },
    )
    .await
}

async fn migrate(args: &ImporterArgs) -> ExitCode {
    migrate_main(
        BINARY,
        "metadata database",
        args.validate_migrate(),
        |url| async move { ferry_importer::migrate_database(&url).await },
    )
    .await
}

async fn import(args: &ImporterArgs, command: &ImportCommand) -> ExitCode {
    let config = match args.validate_import(command) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{BINARY}: {message}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = ferry_shared::telemetry::init(BINARY);
    let dry_run = config.dry_run;
    match ferry_importer::run_import(config).await {
        Ok(summary) => {
            summary.print(dry_run);
            if summary.failed_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("{BINARY}: {err}");
            ExitCode::from(1)
        }
    }
}
